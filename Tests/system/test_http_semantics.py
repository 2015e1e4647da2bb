"""HTTP semantics of the real gateway binary: stored files as a static origin (HEAD, the
manifest's ETag, 304s, ranges), checked with curl as a user would, and CORS preflights."""
import email.utils
import hashlib
import os
import re
import signal
import subprocess
import time
import uuid

import pytest
import requests

from conftest import photo

CACHE_CONTROL = "public, max-age=600"
ORIGIN = "https://app.example.com"


def curl(*args):
    """Runs curl; returns (status, headers as a lowercase dict, body bytes)."""
    result = subprocess.run(["curl", "-sS", "-D", "-", "-o", "/dev/stderr", *args],
                            capture_output=True, timeout=30, check=True)
    lines = result.stdout.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    # With -I curl writes the headers to the output file too: a HEAD has no body to return.
    return status, headers, b"" if "-I" in args else result.stderr


@pytest.fixture
def origin(services):
    processor = services.processor()
    gateway = services.gateway([processor], "--cache-control", CACHE_CONTROL)
    gateway.wait_processors(1)
    response = gateway.upload(photo("Garden.jpg"))
    assert response.status_code == 201, response.text
    return gateway, response.json()


def files_requests(gateway, status):
    """Requests to /files/** counted in the gateway's metrics with this status."""
    total = 0.0
    for line in gateway.metrics().splitlines():
        if line.startswith("prism_gateway_requests_total{") and "/files" in line and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_head_answers_the_headers_of_a_get_with_the_manifests_etag(origin):
    gateway, manifest = origin
    for variant in manifest["variants"]:
        status, headers, body = curl("-I", variant["url"])
        assert status == 200, headers
        assert headers["etag"] == variant["etag"]
        assert headers["etag"].startswith('"') and not headers["etag"].startswith("W/")
        assert int(headers["content-length"]) == variant["bytes"]
        assert headers["accept-ranges"] == "bytes"
        assert headers["cache-control"] == CACHE_CONTROL
        assert headers["content-type"] == {"jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif",
                                           "png": "image/png"}[variant["format"]]
        assert email.utils.parsedate_to_datetime(headers["last-modified"]) is not None
        # The ETag is the content's MD5, as S3 would give it.
        status, get_headers, data = curl(variant["url"])
        assert status == 200 and len(data) == variant["bytes"]
        assert get_headers["etag"] == headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_the_original_and_the_manifest_are_served_with_their_own_types(origin):
    gateway, manifest = origin
    source = photo("Garden.jpg").read_bytes()
    status, headers, _ = curl("-I", manifest["original"]["url"])
    assert status == 200 and headers["etag"] == f'"{hashlib.md5(source).hexdigest()}"'
    assert headers["content-type"] == "image/jpeg" and headers["cache-control"] == CACHE_CONTROL
    manifest_url = manifest["original"]["url"].rsplit("/", 1)[0] + "/manifest.json"
    status, headers, data = curl(manifest_url)
    assert status == 200
    assert headers["content-type"] == "application/json" and headers["cache-control"] == "no-cache"
    assert headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'


def test_digests_come_with_the_bytes_and_originals_are_hashed_when_first_served(services):
    # --local-fsync false: the write path without flushes stores the same files (the rest of
    # the suite runs the default, durable one).
    processor = services.processor()
    gateway = services.gateway([processor], "--local-fsync", "false")
    gateway.wait_processors(1)
    source = photo("Storm.jpg").read_bytes()
    response = gateway.upload(photo("Storm.jpg"))
    assert response.status_code == 201, response.text
    manifest = response.json()
    # The processor hashed the source (the gateway did not read it to hash it).
    assert manifest["original"]["sha256"] == hashlib.sha256(source).hexdigest()
    for variant in manifest["variants"]:
        stored = gateway.data_dir / variant["key"]
        # The processor's MD5 of what it encoded is the stored file's ETag.
        assert variant["etag"] == f'"{hashlib.md5(stored.read_bytes()).hexdigest()}"'
        assert os.getxattr(stored, "user.prism.etag").decode() == variant["etag"]
    original = gateway.data_dir / manifest["original"]["key"]
    assert original.read_bytes() == source
    assert "user.prism.etag" not in os.listxattr(original), "not hashed at upload: its ETag is in no manifest"
    status, headers, _ = curl("-I", manifest["original"]["url"])
    assert status == 200 and headers["etag"] == f'"{hashlib.md5(source).hexdigest()}"'
    assert os.getxattr(original, "user.prism.etag").decode() == headers["etag"], "kept once computed"
    assert not [p for p in original.parent.iterdir() if p.name.startswith(".")], "no temporary left"


def test_conditional_requests_answer_304(origin):
    gateway, manifest = origin
    variant = manifest["variants"][0]
    url = variant["url"]
    for etag in (variant["etag"], "W/" + variant["etag"], f'"nope", {variant["etag"]}', "*"):
        status, headers, body = curl("-H", f"If-None-Match: {etag}", url)
        assert status == 304, etag
        assert body == b"" and headers["etag"] == variant["etag"]
    status, _, body = curl("-H", 'If-None-Match: "something-else"', url)
    assert status == 200 and len(body) == variant["bytes"]

    _, headers, _ = curl("-I", url)
    last_modified = headers["last-modified"]
    status, headers, body = curl("-H", f"If-Modified-Since: {last_modified}", url)
    assert status == 304 and body == b"" and headers["last-modified"] == last_modified
    earlier = email.utils.formatdate(time.time() - 86_400, usegmt=True)
    status, _, body = curl("-H", f"If-Modified-Since: {earlier}", url)
    assert status == 200 and len(body) == variant["bytes"]
    # If-None-Match wins over If-Modified-Since (RFC 9110, 13.2.2).
    status, _, _ = curl("-H", 'If-None-Match: "other"', "-H", f"If-Modified-Since: {last_modified}", url)
    assert status == 200
    assert files_requests(gateway, 304) >= 5


def test_ranges_answer_206_and_past_the_end_416(origin):
    gateway, manifest = origin
    variant = max(manifest["variants"], key=lambda v: v["bytes"])
    url, size = variant["url"], variant["bytes"]
    _, _, whole = curl(url)
    assert len(whole) == size

    cases = {"0-99": (0, 99), f"{size - 10}-": (size - 10, size - 1), "-100": (size - 100, size - 1),
             f"5-{size + 1000}": (5, size - 1)}
    for spec, (first, last) in cases.items():
        status, headers, body = curl("-H", f"Range: bytes={spec}", url)
        assert status == 206, spec
        assert headers["content-range"] == f"bytes {first}-{last}/{size}"
        assert headers["accept-ranges"] == "bytes"
        assert int(headers["content-length"]) == last - first + 1
        assert body == whole[first:last + 1], spec
        assert headers["etag"] == variant["etag"]
    # curl's own --range option, as a download manager resumes.
    status, _, body = curl("-r", "100-199", url)
    assert status == 206 and body == whole[100:200]

    for spec in (f"{size}-", f"{size + 5}-{size + 10}", "-0"):
        status, headers, body = curl("-H", f"Range: bytes={spec}", url)
        assert status == 416, spec
        assert headers["content-range"] == f"bytes */{size}"
        assert headers["content-type"] == "application/problem+json"

    # Several ranges, or a malformed one: the whole file (documented).
    for header in ("bytes=0-9,20-29", "bytes=9-1", "lines=1-2"):
        status, headers, body = curl("-H", f"Range: {header}", url)
        assert status == 200 and body == whole, header
    # If-Range with the current ETag keeps the range; with another, the whole file.
    status, _, body = curl("-H", "Range: bytes=0-9", "-H", f"If-Range: {variant['etag']}", url)
    assert status == 206 and body == whole[:10]
    status, _, body = curl("-H", "Range: bytes=0-9", "-H", 'If-Range: "old"', url)
    assert status == 200 and body == whole
    assert files_requests(gateway, 206) >= 5 and files_requests(gateway, 416) == 3


def test_head_and_get_never_serve_temporaries_or_other_prefixes(origin):
    gateway, manifest = origin
    directory = gateway.data_dir / "images" / manifest["id"]
    temporary = directory / f".thumb.jpg.{uuid.uuid4()}.tmp"
    temporary.write_bytes(b"partial")
    record = gateway.data_dir / "idempotency" / "x.json"
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text("{}")
    for path in (f"images/{manifest['id']}/{temporary.name}", "idempotency/x.json"):
        for flag in ("-I", "-X GET"):
            status, _, body = curl(*flag.split(), f"{gateway.url}/files/{path}")
            assert status == 404, (path, flag)
            assert b"partial" not in body and b"{}" != body


def test_with_api_keys_head_of_originals_needs_a_key_and_variants_stay_public(services):
    processor = services.processor()
    gateway = services.gateway([processor], "--api-keys", "k1")
    gateway.wait_processors(1)
    manifest = gateway.upload(photo("Garden.jpg"), headers={"Authorization": "Bearer k1"}).json()
    original = manifest["original"]["url"]
    manifest_url = original.rsplit("/", 1)[0] + "/manifest.json"
    for url in (original, manifest_url):
        assert curl("-I", url)[0] == 401
        assert curl("-I", "-H", "Authorization: Bearer k1", url)[0] == 200
        assert curl("-H", "Range: bytes=0-9", url)[0] == 401
    for variant in manifest["variants"]:
        assert curl("-I", variant["url"])[0] == 200


# CORS


def preflight(url, origin, method="POST", headers="authorization,content-type,idempotency-key"):
    return curl("-X", "OPTIONS", "-H", f"Origin: {origin}", "-H", f"Access-Control-Request-Method: {method}",
                "-H", f"Access-Control-Request-Headers: {headers}", url)


def test_cors_preflight_from_an_allowed_origin_and_not_from_others(services):
    processor = services.processor()
    gateway = services.gateway([processor], "--cors-origins", f"{ORIGIN}, https://admin.example.com")
    gateway.wait_processors(1)
    status, headers, body = preflight(gateway.url + "/v1/images", ORIGIN)
    assert status == 204 and body == b""
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "x-request-id"} <= allowed
    assert int(headers["access-control-max-age"]) > 0
    assert "origin" in headers["vary"].lower()
    assert "access-control-allow-credentials" not in headers

    # Another origin: no allow header, on the preflight or on the actual request.
    status, headers, _ = preflight(gateway.url + "/v1/images", "https://evil.example.net")
    assert "access-control-allow-origin" not in headers and status != 204
    r = requests.get(gateway.url + "/v1/recipes", headers={"Origin": "https://evil.example.net"}, timeout=60)
    assert r.status_code == 200 and "Access-Control-Allow-Origin" not in r.headers

    # Actual requests from the allowed origin: a success, an error, a stored file.
    with open(photo("Garden.jpg"), "rb") as f:
        r = requests.post(gateway.url + "/v1/images", files={"file": ("Garden.jpg", f)},
                          headers={"Origin": ORIGIN}, timeout=60)
    assert r.status_code == 201
    assert r.headers["Access-Control-Allow-Origin"] == ORIGIN
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"location", "x-request-id", "retry-after", "idempotent-replayed"} <= exposed
    assert "origin" in r.headers["Vary"].lower()
    missing = requests.get(gateway.url + "/v1/images/" + str(uuid.uuid4()), headers={"Origin": ORIGIN}, timeout=60)
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert missing.headers["Content-Type"] == "application/problem+json"
    status, headers, _ = curl("-I", "-H", f"Origin: {ORIGIN}", r.json()["variants"][0]["url"])
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    assert "etag" in headers["access-control-expose-headers"].lower()
    # The preflights and the 404 are in the metrics with their real status.
    text = gateway.metrics()
    assert 'method="OPTIONS",status="204"' in text and 'status="404"' in text


def test_cors_any_origin_and_off_by_default(services):
    processor = services.processor()
    anyone = services.gateway([processor], "--cors-origins", "*")
    status, headers, _ = preflight(anyone.url + "/v1/images", "https://whoever.example")
    assert status == 204 and headers["access-control-allow-origin"] == "*"
    r = requests.get(anyone.url + "/v1/recipes", headers={"Origin": "https://whoever.example"}, timeout=60)
    assert r.headers["Access-Control-Allow-Origin"] == "*"

    closed = services.gateway([processor])
    status, headers, _ = preflight(closed.url + "/v1/images", ORIGIN)
    assert not any(name.startswith("access-control-") for name in headers)
    r = requests.get(closed.url + "/v1/recipes", headers={"Origin": ORIGIN}, timeout=60)
    assert not any(name.lower().startswith("access-control-") for name in r.headers)


def test_cors_origins_are_checked_at_start():
    from conftest import BIN
    result = subprocess.run([str(BIN / "prism-gateway"), "--check-config", "--processors", "127.0.0.1:1",
                             "--cors-origins", "app.example.com/path"], capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "--cors-origins" in result.stderr and "scheme://host" in result.stderr
    result = subprocess.run([str(BIN / "prism-gateway"), "--check-config", "--processors", "127.0.0.1:1",
                             "--cors-origins", f"{ORIGIN},*"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr


def raw_exchange(port, request):
    """Sends raw bytes, reads until the server closes (a socket timeout fails the test: the
    server kept open a connection the request asked to close)."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode("latin-1").lower().split("\r\n")
    return head[0], head[1:]


@pytest.mark.parametrize("request_head", [
    b"GET /v1/recipes HTTP/1.1\r\nHost: prism\r\nConnection: close\r\n\r\n",
    b"GET /v1/recipes HTTP/1.1\r\nHost: prism\r\nConnection: Keep-Alive, CLOSE\r\n\r\n",
    b"GET /v1/recipes HTTP/1.0\r\nHost: prism\r\n\r\n",
], ids=["close", "close-among-tokens", "http-1.0"])
def test_a_request_that_ends_its_connection_gets_connection_close_and_a_close(origin, request_head):
    """RFC 9112 9.6: the answer to a request with `Connection: close` (or an HTTP/1.0 request
    without keep-alive) says `Connection: close`, and the server then closes: a client reusing
    the connection would otherwise have its next request refused, and an HTTP/1.0 client waited
    forever for the close."""
    gateway, _ = origin
    status, headers = raw_exchange(gateway.port, request_head)
    assert status.startswith("http/1.1 200"), status
    assert "connection: close" in headers, headers


def test_a_keep_alive_request_keeps_its_connection(origin):
    import socket
    gateway, _ = origin
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        for _ in range(2):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: prism\r\n\r\n")
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += sock.recv(65536)
            head, _, rest = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200") and b"connection: close" not in head.lower()
            length = int(next(l.split(b":")[1] for l in head.lower().split(b"\r\n") if l.startswith(b"content-length")))
            while len(rest) < length:
                rest += sock.recv(65536)


def _trace(path):
    """strace -f -ttt lines as (time, pid, call, args, result), unfinished calls joined."""
    calls, pending = [], {}
    for line in path.read_text().splitlines():
        m = re.match(r"(\d+) +([\d.]+) (.*)$", line)
        if not m:
            continue
        pid, when, rest = int(m.group(1)), float(m.group(2)), m.group(3)
        if rest.endswith("<unfinished ...>"):
            pending[pid] = (when, rest[: -len("<unfinished ...>")].rstrip())
            continue
        resumed = re.match(r"<\.\.\. (\w+) resumed>(.*)$", rest)
        if resumed and pid in pending:
            when, head = pending.pop(pid)
            rest = head + resumed.group(2)
        call = re.match(r"(\w+)\((.*)\)\s+= (-?\d+)", rest)
        if call:
            calls.append((when, pid, call.group(1), call.group(2), int(call.group(3))))
    return sorted(calls)


def test_a_stored_upload_survives_a_power_loss_whole(services, tmp_path):
    # What the default (--local-fsync true) must do, watched with strace: each file's data
    # reaches the device before the file gets its name, the names of the upload's files reach
    # it before the manifest exists, and the manifest with its directory after.
    processor = services.processor()
    gateway = services.gateway([processor])
    gateway.wait_processors(1)
    assert gateway.upload(photo("Dune.jpg")).status_code == 201  # warm: the images/ directory exists
    trace = tmp_path / "trace"
    tracer = subprocess.Popen(["strace", "-f", "-ttt", "-qq", "-e", "trace=openat,fdatasync,fsync,rename,close",
                               "-o", str(trace), "-p", str(gateway.proc.pid)], stderr=subprocess.PIPE)
    time.sleep(1.5)  # attached to every thread
    response = gateway.upload(photo("Storm.jpg"))
    assert response.status_code == 201, response.text
    time.sleep(0.5)
    tracer.send_signal(signal.SIGINT)
    tracer.wait(30)
    manifest = response.json()
    upload_dir = str(gateway.data_dir / "images" / manifest["id"])
    calls = _trace(trace)
    assert calls, "strace saw nothing: " + tracer.stderr.read().decode()

    opened = {}  # (pid, fd) -> path, while open
    flushed = {}  # path -> time of its fdatasync/fsync
    renamed = {}  # final path -> (time, the temporary's flush time)
    dir_flushes = []  # (time, directory)
    for when, pid, name, args, result in calls:
        if name == "openat" and result >= 0:
            path = re.search(r'"([^"]*)"', args).group(1)
            opened[result] = path
        elif name in ("fdatasync", "fsync") and result == 0:
            path = opened.get(int(args))
            if path is None:
                continue
            if path in (upload_dir, str(gateway.data_dir / "images")):
                dir_flushes.append((when, path))
            else:
                flushed[path] = when
        elif name == "rename" and result == 0:
            source, target = re.findall(r'"([^"]*)"', args)
            renamed[target] = (when, flushed.get(source))
    objects = [manifest["original"]["key"]] + [v["key"] for v in manifest["variants"]]
    manifest_path = f"{upload_dir}/manifest.json"
    for key in objects + [f"images/{manifest['id']}/manifest.json"]:
        final = str(gateway.data_dir / key)
        assert final in renamed, f"{key} was not written through a rename"
        when, flush = renamed[final]
        assert flush is not None and flush < when, f"{key} got its name before its data was flushed"
    manifest_named = renamed[manifest_path][0]
    last_object = max(renamed[str(gateway.data_dir / k)][0] for k in objects)
    flushes_of_dir = [t for t, d in dir_flushes if d == upload_dir]
    assert any(last_object < t < manifest_named for t in flushes_of_dir), "the files' names were not flushed before the manifest"
    assert any(t > manifest_named for t in flushes_of_dir), "the manifest's name was not flushed"
    assert any(t > manifest_named for t, d in dir_flushes if d == str(gateway.data_dir / "images")), \
        "the upload's directory entry was not flushed"
