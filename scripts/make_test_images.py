#!/usr/bin/env python3
"""Builds the image corpus the tests and benchmarks use, in DEST (default .test-images/).

Real photos come from Debian's mate-backgrounds package (scripts/fetch-photos.sh); every edge
case is made from them with libvips (pyvips) and exiftool, so nothing binary is committed.
Idempotent: existing files are kept.
"""
import os
import random
import struct
import subprocess
import sys
import zlib

import pyvips

HERE = os.path.dirname(os.path.abspath(__file__))


def png_bomb(path, width, height):
    """A valid PNG of width x height black pixels (1 bit grey) that compresses to ~100 KB."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    parts.append(comp.flush())
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def main():
    dest = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", ".test-images")
    photos = os.path.join(dest, "photos")
    os.makedirs(photos, exist_ok=True)
    subprocess.run([os.path.join(HERE, "fetch-photos.sh"), photos], check=True, stdout=subprocess.DEVNULL)
    edge = os.path.join(dest, "edge")
    os.makedirs(edge, exist_ok=True)

    def make(name, build):
        path = os.path.join(edge, name)
        if not os.path.exists(path) or os.path.getsize(path) == 0:
            tmp = path + ".tmp" + os.path.splitext(name)[1]
            build(tmp)
            os.replace(tmp, path)
        return path

    garden = os.path.join(photos, "Garden.jpg")
    wood = os.path.join(photos, "Wood.jpg")

    # EXIF orientation 6 ("rotate 90 clockwise to display") with GPS position and camera tags.
    def oriented(path):
        pyvips.Image.new_from_file(garden).jpegsave(path, Q=90)
        subprocess.run(["exiftool", "-q", "-overwrite_original", "-n", "-Orientation=6",
                        "-GPSLatitude=48.8583", "-GPSLatitudeRef=N", "-GPSLongitude=2.2945",
                        "-GPSLongitudeRef=E", "-Make=PrismTestCam", "-Model=Orientation6", path],
                       check=True)
    make("orient6-gps.jpg", oriented)

    # Large photos (5120x3840, 19.7 MP; 5248x3280, 17.2 MP) and a large progressive one (4608x2880, 13.3 MP).
    make("large-19mp.jpg", lambda p: pyvips.Image.new_from_file(wood).resize(2.0).jpegsave(p, Q=88))
    make("large-17mp.jpg", lambda p: pyvips.Image.new_from_file(os.path.join(photos, "TwoWings.jpg")).resize(2.05).jpegsave(p, Q=88))
    make("progressive-13mp.jpg",
         lambda p: pyvips.Image.new_from_file(garden).resize(1.8).jpegsave(p, Q=88, interlace=True))
    # A large PNG photo (3840x2400) and a PNG with a soft alpha channel.
    make("large-photo.png", lambda p: pyvips.Image.new_from_file(garden).resize(1.5).pngsave(p, compression=6))

    def alpha(path):
        img = pyvips.Image.new_from_file(garden).resize(0.5)
        mask = pyvips.Image.gaussnoise(img.width, img.height, mean=160, sigma=60).cast("uchar")
        img.bandjoin(mask).pngsave(path)
    make("alpha.png", alpha)

    # A 16-bit PNG, a CMYK JPEG, a greyscale JPEG, a WebP and a three-frame animated GIF.
    make("rgb16.png", lambda p: pyvips.Image.new_from_file(garden).resize(0.25).cast("ushort").__mul__(256).cast("ushort").copy(interpretation="rgb16").pngsave(p))
    make("cmyk.jpg", lambda p: pyvips.Image.new_from_file(garden).resize(0.25).icc_export(output_profile="cmyk").jpegsave(p))
    make("grey.jpg", lambda p: pyvips.Image.new_from_file(garden).resize(0.25).colourspace("b-w").jpegsave(p))
    make("photo.webp", lambda p: pyvips.Image.new_from_file(garden).webpsave(p, Q=85))

    def animated(path):
        base = pyvips.Image.new_from_file(garden).resize(0.1)
        frames = [base, base.flip("horizontal"), base.flip("vertical")]
        strip = pyvips.Image.arrayjoin(frames, across=1).copy()
        strip.set_type(pyvips.GValue.gint_type, "page-height", base.height)
        strip.set_type(pyvips.GValue.array_int_type, "delay", [100, 100, 100])
        strip.gifsave(path)
    make("animated.gif", animated)

    # Hostile and broken input.
    make("bomb-30000.png", lambda p: png_bomb(p, 30000, 30000))

    def truncated(path):
        data = open(garden, "rb").read()
        open(path, "wb").write(data[: len(data) * 2 // 5])
    make("truncated.jpg", truncated)

    def corrupt(path):
        data = bytearray(open(garden, "rb").read())
        rng = random.Random(7)
        # Keep the headers so it is recognised as a JPEG; scramble the entropy-coded data.
        for i in range(2000, len(data) - 2):
            data[i] = rng.randrange(256)
        data[-2:] = b"\xff\xd9"
        open(path, "wb").write(bytes(data))
    make("corrupt.jpg", corrupt)

    make("not-an-image.txt", lambda p: open(p, "w").write("hello, this is plain text and not an image\n" * 20))
    make("drawing.svg", lambda p: open(p, "w").write(
        '<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300">'
        '<rect width="400" height="300" fill="red"/></svg>\n'))

    def pdf(path):
        objs = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >>"]
        out = bytearray(b"%PDF-1.4\n")
        offsets = []
        for n, body in enumerate(objs, 1):
            offsets.append(len(out))
            out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
        xref = len(out)
        out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
        for off in offsets:
            out += b"%010d 00000 n \n" % off
        out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objs) + 1, xref)
        open(path, "wb").write(bytes(out))
    make("document.pdf", pdf)
    print(f"test images in {os.path.abspath(dest)}")


if __name__ == "__main__":
    main()
