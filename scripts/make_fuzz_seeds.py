#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (Tests/Fuzz/corpus/) from real protocol frames and specs.

Frames are encoded by hand from Protos/prism/v1/prism.proto's field numbers, exactly as they go
on the wire (4-byte big-endian length, then the Frame). Run again after the proto changes.
"""
import json
import struct
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "Tests" / "Fuzz" / "corpus"


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(number, value):
    if isinstance(value, int):
        return varint(number << 3) + varint(value)
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value


def frame(call_id, kind, body):
    payload = (field(1, call_id) if call_id else b"") + field(kind, body)
    return struct.pack(">I", len(payload)) + payload


RESIZE, CROP, EXTRACT, BLUR, SHARPEN, ROTATE, FLIP, FLOP, GRAY, FLATTEN = range(1, 11)


def op(kind, body=b""):
    return field(kind, body)


def spec(name, ops, fmt=1, quality=0):
    output = field(1, fmt) + (field(2, quality) if quality else b"")
    return field(1, name) + b"".join(field(2, o) for o in ops) + field(3, output)


SPECS = [
    spec("thumb", [op(RESIZE, field(1, 200) + field(2, 200))], 1, 80),
    spec("small", [op(RESIZE, field(1, 640) + field(3, 3) + field(4, 1))], 3, 80),
    spec("large", [op(RESIZE, field(1, 2048) + field(2, 2048) + field(3, 3) + field(4, 1))], 1, 85),
    spec("blur", [op(RESIZE, field(1, 640) + field(2, 640) + field(3, 3)), op(BLUR, struct.pack("<B", 0x0D) + struct.pack("<f", 8.0))], 1, 70),
    spec("crop", [op(CROP, field(1, 300) + field(2, 300) + field(3, 9))], 4),
    spec("extract", [op(EXTRACT, field(1, 10) + field(2, 10) + field(3, 100) + field(4, 50)), op(ROTATE, field(1, 90)), op(FLIP), op(FLOP), op(GRAY)], 2),
    spec("outside", [op(RESIZE, field(1, 16384) + field(2, 1) + field(3, 4))], 5),
]


# The connection fuzzer's records: a control byte below 0x80 is followed by one frame (bit 0: the
# worker pool is full for it); 0x80 | event is followed by one argument byte (see
# Tests/Fuzz/FuzzConnection/main.swift).
FRAME, POOL_FULL = b"\x00", b"\x01"
HANDSHAKE_TIMER, DRAIN, DRAIN_DEADLINE, FINISH_OPEN, FINISH_ID, PEER_GONE, FINISH_STOPPED = 0x80, 0x81, 0x82, 0x83, 0x86, 0x87, 0x88


def event(kind, argument=0):
    return bytes([kind, argument])


def connection_seeds():
    """Conversations with the processor, each a fault or a path from PROTOCOL.md sections 2-5."""
    def hello(version=1, max_frame=65536, token="token"):
        return FRAME + frame(0, 2, field(1, version) + field(2, max_frame) + field(3, token) + field(4, "seed/1"))

    small = field(1, b"\xff\xd8\xff\xe0" + b"\x00" * 12) + field(2, SPECS[0]) + field(3, 30000)

    def req(call_id, pool=FRAME):
        return pool + frame(call_id, 3, small)

    def cancel(call_id):
        return FRAME + frame(call_id, 7, b"")

    ping = FRAME + frame(0, 8, field(1, 7))
    token, open_ = b"\x01", b"\x00"  # settings: the processor requires a token, or not
    return {
        "calls-finish": token + hello() + req(1) + req(2) + ping + event(FINISH_OPEN) + event(FINISH_OPEN),
        "queue-full": open_ + hello() + req(1) + req(2, POOL_FULL) + req(2) + event(FINISH_OPEN, 1),
        "drain-with-calls": token + hello() + req(1) + req(2) + event(DRAIN) + req(3) + ping + event(FINISH_OPEN) + event(FINISH_OPEN),
        "drain-idle": open_ + hello() + req(1) + event(FINISH_OPEN) + event(DRAIN) + req(2),
        "drain-deadline": token + hello() + req(1) + req(2) + cancel(2) + event(DRAIN) + event(DRAIN_DEADLINE) + event(FINISH_STOPPED) + event(FINISH_STOPPED),
        "deadline-without-drain": open_ + hello() + req(1) + event(DRAIN_DEADLINE) + event(FINISH_STOPPED),
        "drain-before-hello": open_ + event(DRAIN) + hello() + req(1),
        "cancel": open_ + hello() + req(1) + req(2) + cancel(1) + cancel(1) + event(FINISH_STOPPED) + cancel(1) + cancel(9) + cancel(0),
        "duplicate-id": open_ + hello() + req(1) + req(1),
        "zero-id": open_ + hello() + req(0),
        "reused-id": open_ + hello() + req(1) + event(FINISH_OPEN) + req(1) + event(DRAIN),
        "out-of-order": open_ + hello() + req(5) + req(3) + event(FINISH_ID, 5) + event(DRAIN) + req(4),
        "second-hello": open_ + hello() + req(1) + hello(),
        "wrong-version": open_ + hello(version=2) + req(1),
        "bad-token": token + hello(token="nope") + req(1),
        "small-frames": open_ + hello(max_frame=100),
        "smallest-frames": open_ + hello(max_frame=4096) + req(1),
        "request-first": open_ + req(1) + hello(),
        "ping-first": open_ + ping + hello(),
        "empty-first": open_ + FRAME + struct.pack(">I", 0) + hello(),
        "client-error": open_ + hello() + req(1) + FRAME + frame(0, 6, field(1, 13) + field(2, "client gave up")),
        "peer-gone": open_ + hello() + req(1) + req(2) + event(PEER_GONE) + event(FINISH_OPEN),
        "handshake-timeout": open_ + event(HANDSHAKE_TIMER) + hello(),
        "garbage": open_ + FRAME + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        "too-large-before-hello": open_ + FRAME + struct.pack(">I", 70000),
        "ignored-kinds": open_ + hello() + req(1) + FRAME + frame(0, 9, field(1, 7)) + FRAME + frame(1, 4, field(1, 0))
        + FRAME + frame(0, 10, field(1, 1)) + FRAME + frame(1, 6, field(1, 3)) + FRAME + frame(0, 15, b"") + FRAME + struct.pack(">I", 0),
    }


def main():
    for directory in (OUT / "frames", OUT / "specs", OUT / "connection"):
        directory.mkdir(parents=True, exist_ok=True)
    jpeg = (REPO / ".test-images" / "edge" / "grey.jpg")
    source = jpeg.read_bytes() if jpeg.exists() else b"\xff\xd8\xff\xe0" + b"\x00" * 60
    hello = field(1, 1) + field(2, 65536) + field(3, "token") + field(4, "seed/1")
    request = field(1, source[:2048]) + b"".join(field(2, s) for s in SPECS[:3]) + field(3, 30000) + field(4, "req-1")
    frames = {
        "hello": frame(0, 2, hello),
        "hello-request-ping": frame(0, 2, hello) + frame(1, 3, request) + frame(0, 8, field(1, 7)),
        "request": frame(3, 3, request),
        "cancel": frame(3, 7, b""),
        "ping": frame(0, 8, field(1, 42)),
        "goaway": frame(0, 10, field(1, 9) + field(2, "draining")),
        "error": frame(5, 6, field(1, 3) + field(2, "bad spec") + field(3, 5) + field(4, "thumb")),
        "response": frame(5, 4, field(1, 0) + field(2, b"\xff\xd8" * 10) + field(3, 200) + field(4, 100) + field(5, 1) + field(6, 1234)),
        "empty": struct.pack(">I", 0),
        "http": b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    }
    for name, data in frames.items():
        (OUT / "frames" / name).write_bytes(data)
    for i, s in enumerate(SPECS):
        (OUT / "specs" / f"spec-{i}").write_bytes(struct.pack(">II", 4000, 3000) + s)
        (OUT / "specs" / f"spec-{i}-tall").write_bytes(struct.pack(">II", 7, 90000) + s)
    conversations = connection_seeds()
    for name, data in conversations.items():
        (OUT / "connection" / name).write_bytes(data)
    print(f"wrote {len(frames)} frames, {2 * len(SPECS)} specs and {len(conversations)} conversations under {OUT}")


if __name__ == "__main__":
    main()
