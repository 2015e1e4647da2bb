#!/usr/bin/env python3
"""What a user would run instead of Prism, for Benchmarks/run.py. Runs inside the harness's
virtualenv (.bench-venv/, made by run.py) so pyvips, Pillow and matplotlib are the PyPI ones.

  peers.py serve ENGINE      read one JSON request per line on stdin ({"path": ...}, optionally
                             "save": DIR), make the default recipe's five variants, answer one
                             JSON line ({"bytes": {variant: n}, "sizes": {...}}). ENGINE is
                             pyvips-once, pyvips-flat, pyvips-each or pillow.
  peers.py compare A B       per-variant PSNR and mean absolute difference of the images in
                             directory A against those of the same name in B (decoded with pyvips)
  peers.py plot JSON OUTDIR  latency and throughput against uploads in flight, as SVG and PNG

The default recipe, as Sources/PrismGateway/Recipes.swift defines it (docs/configuration.md):
thumb 200x200 cover JPEG q80; small 640 wide WebP q80 (effort 4); medium inside 1280 JPEG q82;
large inside 2048 JPEG q85; blur inside 640 + gaussian sigma 8 JPEG q70; no enlargement,
metadata stripped, baseline JPEG with optimised Huffman tables (what Prism's encoder does).
"""
import io
import json
import math
import os
import sys

# (name, box width, box height, crop, format, quality); height None means "any height".
RECIPE = [
    ("large", 2048, 2048, False, "jpeg", 85),
    ("medium", 1280, 1280, False, "jpeg", 82),
    ("small", 640, None, False, "webp", 80),
    ("blur", 640, 640, False, "jpeg", 70),
    ("thumb", 200, 200, True, "jpeg", 80),
]
BLUR_SIGMA = 8
WEBP_EFFORT = 4
UNBOUNDED = 10_000_000


# MARK: pyvips


def vips_engine(kind):
    import pyvips

    # What Prism does for a server that never sees an image twice; libvips threads stay at
    # their default (one per core), as a pyvips user gets them.
    pyvips.cache_set_max(0)

    basic = {"width", "height", "bands", "format", "coding", "interpretation", "xoffset", "yoffset", "xres", "yres", "filename"}

    def strip(image):
        # libvips 8.14's webpsave ignores strip=True and writes an EXIF block (with the JPEG
        # thumbnail) built from the image's fields; Prism strips them, so the reference does too.
        image = image.copy()
        for field in image.get_fields():
            if field not in basic:
                image.remove(field)
        return image

    def save(image, fmt, quality):
        if fmt == "webp":
            return image.webpsave_buffer(Q=quality, effort=WEBP_EFFORT, strip=True)
        return image.jpegsave_buffer(Q=quality, optimize_coding=True, interlace=False, strip=True)

    def variant(source, name, width, height, crop, thumbnail):
        options = {"height": height or UNBOUNDED, "size": "both" if crop else "down"}
        if crop:
            options["crop"] = "centre"
        image = thumbnail(source, width, **options)
        if name == "blur":
            image = image.gaussblur(BLUR_SIGMA).cast("uchar")
        return image

    def derive(source, name):
        _, width, height, crop, _, _ = next(r for r in RECIPE if r[0] == name)
        return variant(source, name, width, height, crop, lambda s, w, **o: s.thumbnail_image(w, **o))

    def flat(data):
        # One decode: thumbnail_buffer to the largest size, kept in memory, every other variant
        # resized from that 2048 px image.
        large = strip(pyvips.Image.thumbnail_buffer(data, 2048, height=2048, size="down")).copy_memory()
        out = {}
        for name, width, height, crop, fmt, quality in RECIPE:
            image = large if name == "large" else derive(large, name)
            out[name] = (save(image, fmt, quality), image.width, image.height)
        return out

    def once(data):
        # One decode, then each variant from the smallest image already made that is large
        # enough (2048 -> 1280 -> 640 -> 200), as a libvips user who cares about speed would
        # write it, and as Prism's pipeline does.
        large = strip(pyvips.Image.thumbnail_buffer(data, 2048, height=2048, size="down")).copy_memory()
        medium = derive(large, "medium").copy_memory()
        small = derive(medium, "small").copy_memory()
        # Blur is inside 640x640: the 640-wide image when it is no taller, else from medium.
        blur = derive(small if small.height <= 640 and small.width >= min(640, medium.width) else medium, "blur")
        thumb = derive(small if min(small.width, small.height) >= 200 else large, "thumb")
        images = {"large": large, "medium": medium, "small": small, "blur": blur, "thumb": thumb}
        out = {}
        for name, _, _, _, fmt, quality in RECIPE:
            image = images[name]
            out[name] = (save(image, fmt, quality), image.width, image.height)
        return out

    def per_variant(data):
        # One thumbnail_buffer per variant: each pays its own (shrink-on-load) decode.
        out = {}
        for name, width, height, crop, fmt, quality in RECIPE:
            image = strip(variant(data, name, width, height, crop, lambda s, w, **o: pyvips.Image.thumbnail_buffer(s, w, **o)))
            out[name] = (save(image, fmt, quality), image.width, image.height)
        return out

    return {"once": once, "flat": flat, "each": per_variant}[kind]


# MARK: Pillow


def pillow_engine():
    from PIL import Image, ImageFilter, ImageOps

    def fit_inside(image, width, height):
        image = image.copy()
        image.thumbnail((width, height or UNBOUNDED), Image.LANCZOS)  # never enlarges
        return image

    def run(data):
        image = Image.open(io.BytesIO(data))
        if image.format == "JPEG":
            image.draft("RGB", (2048, 2048))  # DCT scaling: decode at 1/2, 1/4 or 1/8 when that still covers 2048
        image = ImageOps.exif_transpose(image)
        if image.mode != "RGB":
            image = image.convert("RGB")
        large = fit_inside(image, 2048, 2048)
        out = {}
        for name, width, height, crop, fmt, quality in RECIPE:
            if name == "large":
                variant = large
            elif crop:
                variant = ImageOps.fit(large, (width, height), Image.LANCZOS)
            else:
                variant = fit_inside(large, width, height)
            if name == "blur":
                variant = variant.filter(ImageFilter.GaussianBlur(BLUR_SIGMA))
            buffer = io.BytesIO()
            if fmt == "webp":
                variant.save(buffer, "WEBP", quality=quality, method=WEBP_EFFORT)
            else:
                variant.save(buffer, "JPEG", quality=quality, optimize=True)
            out[name] = (buffer.getvalue(), variant.width, variant.height)
        return out

    return run


def serve(engine):
    work = {"pyvips-once": lambda: vips_engine("once"), "pyvips-flat": lambda: vips_engine("flat"),
            "pyvips-each": lambda: vips_engine("each"), "pillow": pillow_engine}[engine]()
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        try:
            with open(request["path"], "rb") as f:
                data = f.read()
            out = work(data)
            if request.get("save"):
                for name, (body, _, _) in out.items():
                    ext = "webp" if name == "small" else "jpg"
                    with open(os.path.join(request["save"], f"{name}.{ext}"), "wb") as f:
                        f.write(body)
            answer = {"bytes": {n: len(v[0]) for n, v in out.items()}, "sizes": {n: [v[1], v[2]] for n, v in out.items()}}
        except Exception as error:  # the harness counts it as a failed upload
            answer = {"error": f"{type(error).__name__}: {error}"}
        print(json.dumps(answer), flush=True)


# MARK: Comparing outputs


def compare(prism_dir, reference_dir):
    """PSNR (dB, 8-bit, over all bands) and mean absolute difference of each image in prism_dir
    against the same name in reference_dir. When libvips rounded a side differently, the
    reference is resized to the Prism variant's size first (and "resized" says so)."""
    import pyvips

    out = {}
    for name in sorted(os.listdir(prism_dir)):
        ref_path = os.path.join(reference_dir, name)
        if not os.path.exists(ref_path):
            continue
        a = pyvips.Image.new_from_file(os.path.join(prism_dir, name), access="sequential").copy_memory()
        b = pyvips.Image.new_from_file(ref_path).copy_memory()
        resized = (a.width, a.height) != (b.width, b.height)
        if resized:
            b = b.resize(a.width / b.width, vscale=a.height / b.height)
            b = b.crop(0, 0, min(a.width, b.width), min(a.height, b.height))
            a = a.crop(0, 0, b.width, b.height)
        if a.bands != b.bands:
            a, b = a[:3] if a.bands > 3 else a, b[:3] if b.bands > 3 else b
        diff = (a.cast("float") - b.cast("float"))
        mse = (diff * diff).avg()
        out[name] = {
            "psnr_db": round(99.0 if mse == 0 else 10 * math.log10(255 * 255 / mse), 2),
            "mean_abs_diff": round(diff.abs().avg(), 3),
            "size": [a.width, a.height],
            "resized": resized,
        }
    print(json.dumps(out))


# MARK: The picture


def plot(results_path, outdir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.load(open(results_path))
    rows = results["runs"] + results.get("peers", [])
    modes = [("e2e-local", "Prism (gateway + 2 processors, local store)"), ("pyvips-once", "pyvips, decode once, cascade (reference)"),
             ("pyvips-flat", "pyvips, decode once, all from 2048"), ("pyvips-each", "pyvips, thumbnail_buffer per variant"), ("pillow", "Pillow (draft mode)"),
             ("thumbor", "thumbor (PIL engine)")]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for mode, label in modes:
        points = sorted((r["in_flight"], r["median_ms"], r["p95_ms"], r["uploads_per_s"]) for r in rows if r["mode"] == mode)
        if not points:
            continue
        levels = [p[0] for p in points]
        style = {"linewidth": 2.5} if mode == "e2e-local" else {"linewidth": 1.4}
        left.plot(levels, [p[1] for p in points], marker="o", label=label, **style)
        right.plot(levels, [p[3] for p in points], marker="o", label=label, **style)
    for axis, title, unit in ((left, "Latency per upload (median)", "ms"), (right, "Throughput", "uploads/s")):
        axis.set_xscale("log", base=2)
        axis.set_xticks([1, 2, 4, 8])
        axis.set_xticklabels(["1", "2", "4", "8"])
        axis.set_xlabel("uploads in flight")
        axis.set_ylabel(unit)
        axis.set_title(title, fontsize=10)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    handles, labels = left.get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    m = results["machine"]
    figure.suptitle(f"Default recipe (5 variants), {len(results['corpus'])} images; {m['cores']} cores, {m['libvips']}, {m['date']}", fontsize=9)
    figure.tight_layout(rect=(0, 0.1, 1, 1))
    os.makedirs(outdir, exist_ok=True)
    for ext in ("svg", "png"):
        figure.savefig(os.path.join(outdir, f"performance-latency.{ext}"), dpi=110)


if __name__ == "__main__":
    command = sys.argv[1]
    if command == "serve":
        serve(sys.argv[2])
    elif command == "compare":
        compare(sys.argv[2], sys.argv[3])
    elif command == "plot":
        plot(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
