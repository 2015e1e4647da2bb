#!/usr/bin/env python3
"""Prism's benchmark harness: how close an upload comes to libvips' own speed, and where the
time goes. `make bench` runs it (release build first). Method: Benchmarks/README.md.

Modes, each at 1, 2, 4 and 8 uploads in flight, every process started fresh per level so peak
RSS belongs to that level:
  pipeline    the default recipe made in-process by Prism's pipeline (prism-bench pipeline)
  processor   the same as one call per upload to one local processor (prism-bench processor)
  e2e-local   POST /v1/images to a gateway with two processors, local-disk store
  e2e-s3      the same with the S3 store (SeaweedFS)
plus the split trade-off (auto / never / always at 1 and 4 in flight) and the processor's peak
RSS with 17-20 MP photos at 4 in flight.

Peers, what a user would run instead, on the same corpus at the same levels (Benchmarks/peers.py,
in the harness's own virtualenv .bench-venv/):
  pyvips-once   pyvips in-process, one decode: thumbnail_buffer to 2048, then each variant from the
                smallest one already made (2048 -> 1280 -> 640 -> 200): the reference
  pyvips-flat   the same with every variant resized from the 2048 px image
  pyvips-each   pyvips, one thumbnail_buffer per variant
  pillow        Pillow, draft mode for JPEG, one decode
  thumbor       a thumbor server (N processes, file loader), five variant requests per upload
plus the output check (bytes and PSNR of each Prism variant against pyvips-once's) and a picture
(docs/performance-latency.svg). `--soak MINUTES` instead runs e2e-local at 4 in flight for that
long and reports the RSS slope of every process and every failed upload.
"""
import argparse
import concurrent.futures
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "Tests" / "system"))
from conftest import free_port, metric_value, Seaweed  # noqa: E402

IMAGES = REPO / ".test-images"
LEVELS = [1, 2, 4, 8]
VENV = REPO / ".bench-venv"
PEER_PACKAGES = ["pyvips", "Pillow", "thumbor", "matplotlib"]
PEERS = ["pyvips-once", "pyvips-flat", "pyvips-each", "pillow", "thumbor"]
PRISM_MODES = ["pipeline", "processor", "e2e-local", "e2e-s3", "split", "memory"]
# 5120x2880 (14.7 MP) wallpapers from Debian's plasma-workspace-wallpapers (scripts/install-deps.sh
# --bench): a progressive JPEG, a baseline one (used as a progressive copy) and an RGB PNG with an
# ICC profile.
WALLPAPERS = Path("/usr/share/wallpapers")
WALLPAPER_CASES = [("Flow", "jpg"), ("SafeLanding", "jpg"), ("Altai", "png")]


def wallpapers():
    """The wallpaper cases, copied under .test-images/wallpapers/ (baseline JPEGs made progressive
    with `vips copy x.jpg y.jpg[interlace]`, as scripts/make_test_images.py does); [] with a note
    when the package is not installed."""
    out = []
    target = IMAGES / "wallpapers"
    for name, ext in WALLPAPER_CASES:
        source = WALLPAPERS / name / "contents" / "images" / f"5120x2880.{ext}"
        if not source.exists():
            print(f"note: {source} is missing (scripts/install-deps.sh --bench installs plasma-workspace-wallpapers): "
                  f"skipping the 5120x2880 wallpaper cases", flush=True)
            return []
        if ext == "png":
            path = target / f"wallpaper-{name.lower()}-5120.png"
            if not path.exists():
                target.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, path)
        else:
            path = target / f"wallpaper-{name.lower()}-5120-progressive.jpg"
            if not path.exists():
                target.mkdir(parents=True, exist_ok=True)
                header = subprocess.run(["vipsheader", "-f", "interlaced", source], capture_output=True, text=True)
                if header.stdout.strip() == "1":
                    shutil.copyfile(source, path)
                else:
                    subprocess.run(["vips", "copy", source, f"{path}[interlace,Q=90,optimize_coding]"], check=True)
        out.append(path)
    return out


def corpus():
    photos = sorted((IMAGES / "photos").glob("*.jpg"))
    extra = [IMAGES / "edge" / n for n in ("progressive-13mp.jpg", "large-photo.png", "large-19mp.jpg", "large-17mp.jpg")]
    return photos + extra + wallpapers()


def large_corpus():
    return [IMAGES / "edge" / n for n in ("large-19mp.jpg", "large-17mp.jpg", "progressive-13mp.jpg")]


def bin_dir(given=None):
    if given:
        return Path(given).resolve()
    out = subprocess.run(["swift", "build", "-c", "release", "--show-bin-path"], cwd=REPO, capture_output=True, text=True, check=True)
    return Path(out.stdout.strip())


def proc_cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime


def proc_peak_rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


class Proc:
    def __init__(self, args, env=None, log=None, ready=None, arena_max="2"):
        """arena_max: MALLOC_ARENA_MAX for the process; None leaves it unset (prism-processor
        sets one arena itself, and the variable would override it)."""
        self.log = open(log or os.devnull, "wb")
        environment = {**os.environ, **(env or {})}
        if arena_max is None:
            environment.pop("MALLOC_ARENA_MAX", None)
        else:
            environment.setdefault("MALLOC_ARENA_MAX", arena_max)
        self.p = subprocess.Popen([str(a) for a in args], stdout=self.log, stderr=subprocess.STDOUT, env=environment)
        if ready:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    if requests.get(ready, timeout=1).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                if self.p.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited")
                time.sleep(0.05)

    def cpu(self):
        return proc_cpu_seconds(self.p.pid)

    def rss(self):
        return proc_peak_rss(self.p.pid)

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(30)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self.log.close()


def summarize(latencies_s, wall_s, uploads):
    ms = sorted(x * 1000 for x in latencies_s)
    return {
        "uploads": uploads,
        "median_ms": round(statistics.median(ms), 1),
        "mean_ms": round(statistics.mean(ms), 1),
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 1),
        "uploads_per_s": round(uploads / wall_s, 2),
        "wall_s": round(wall_s, 2),
        # Other work on a shared machine shows here: compare rows measured under similar load.
        "load_avg_1min_at_end": round(os.getloadavg()[0], 2),
    }


def per_image_ms(images, samples):
    """Median latency per image name over (upload index, seconds) samples: the corpus is bimodal,
    so where a change helps (small photos, large or progressive images, PNGs) shows only here."""
    by = {}
    for index, took in samples:
        by.setdefault(images[index % len(images)].name, []).append(took * 1000)
    return {name: round(statistics.median(ms), 1) for name, ms in by.items()}


def run_bench(binary, mode, images, in_flight, rounds, extra=()):
    out = subprocess.run([binary, mode, "--images", ",".join(map(str, images)), "--in-flight", str(in_flight),
                          "--rounds", str(rounds), *extra], capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    return json.loads(out.stdout)


def start_processor(bins, logs, name, *flags):
    port, status = free_port(), free_port()
    proc = Proc([bins / "prism-processor", "--port", port, "--status-port", status, *flags],
                log=logs / f"{name}.log", ready=f"http://127.0.0.1:{status}/readyz", arena_max=None)
    proc.port, proc.status = port, status
    return proc


def metrics_of(url):
    return requests.get(url, timeout=5).text


def stage_means(before, after, names):
    """Mean of histogram observations between two scrapes: {label: ms}."""
    means = {}
    for label, metric, labels in names:
        count = metric_value(after, metric + "_count", labels) - metric_value(before, metric + "_count", labels)
        total = metric_value(after, metric + "_sum", labels) - metric_value(before, metric + "_sum", labels)
        if count > 0:
            means[label] = round(1000 * total / count, 1)
    return means


def http_load(url, images, in_flight, rounds, recipe=None):
    """Raw image bodies (Content-Type image/*), one keep-alive session per client thread."""
    bodies = [(p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg") for p in images]
    total = len(bodies) * rounds
    lock = threading.Lock()
    state = {"next": 0, "latencies": [], "errors": [], "samples": []}

    def client():
        session = requests.Session()
        while True:
            with lock:
                index = state["next"]
                if index >= total:
                    return
                state["next"] += 1
            body, ctype = bodies[index % len(bodies)]
            began = time.monotonic()
            r = session.post(url + "/v1/images" + (f"?recipe={recipe}" if recipe else ""), data=body,
                             headers={"Content-Type": ctype}, timeout=120)
            took = time.monotonic() - began
            with lock:
                if r.status_code == 201:
                    state["latencies"].append(took)
                    state["samples"].append((index, took))
                else:
                    state["errors"].append(r.status_code)

    # Warm-up: connections, first-use paths.
    requests.post(url + "/v1/images", data=bodies[0][0], headers={"Content-Type": bodies[0][1]}, timeout=120)
    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    if state["errors"]:
        raise RuntimeError(f"uploads failed: {state['errors'][:10]}")
    return state["latencies"], wall, per_image_ms(images, state["samples"])


@contextlib.contextmanager
def prism_stack(bins, logs, name, in_flight, store="local", seaweed=None, split="auto", gateway_flags=()):
    """A gateway and two processors, started fresh; yields (url, data dir, gateway, processors)."""
    # Two processors on one machine share its cores: one worker per core in all.
    workers = str(max(1, (os.cpu_count() or 2) // 2))
    processors = [start_processor(bins, logs, f"p{i}-{name}-{store}-{in_flight}-{split}", "--workers", workers) for i in range(2)]
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    flags = ["--port", port, "--processors", ",".join(f"127.0.0.1:{p.port}" for p in processors), "--data-dir", data,
             "--split", split, "--max-concurrent-uploads", "64", *gateway_flags]
    env = {}
    if store == "s3":
        flags += ["--storage", "s3", "--s3-endpoint", seaweed.endpoint, "--s3-bucket", f"bench-{in_flight}-{split}", "--s3-create-bucket"]
        env = seaweed.gateway_env()
    gateway = None
    try:
        gateway = Proc([bins / "prism-gateway", *flags], env=env, log=logs / f"gateway-{name}-{store}-{in_flight}-{split}.log",
                       ready=f"http://127.0.0.1:{port}/healthz")
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while "ready: 2 " not in requests.get(url + "/readyz", timeout=2).text:
            if time.monotonic() > deadline:
                raise RuntimeError("processors not ready")
            time.sleep(0.05)
        yield url, data, gateway, processors
    finally:
        if gateway:
            gateway.stop()
        for p in processors:
            p.stop()
        shutil.rmtree(data, ignore_errors=True)


def e2e_level(bins, logs, images, in_flight, rounds, store, seaweed=None, split="auto"):
    with prism_stack(bins, logs, "e2e", in_flight, store, seaweed, split) as (url, _data, gateway, processors):
        procs = [gateway] + processors
        cpu0 = [p.cpu() for p in procs]
        gw0 = metrics_of(url + "/metrics")
        pm0 = [metrics_of(f"http://127.0.0.1:{p.status}/metrics") for p in processors]
        latencies, wall, by_image = http_load(url, images, in_flight, rounds)
        cpu = [p.cpu() - c for p, c in zip(procs, cpu0)]
        gw1 = metrics_of(url + "/metrics")
        pm1 = [metrics_of(f"http://127.0.0.1:{p.status}/metrics") for p in processors]
        uploads = len(latencies)
        calls = sum(metric_value(b, "prism_processor_calls_started_total") - metric_value(a, "prism_processor_calls_started_total")
                    for a, b in zip(pm0, pm1))
        result = summarize(latencies, wall, uploads)
        result.update({
            "cpu_ms_per_upload": round(1000 * sum(cpu) / uploads, 1),
            "cpu_ms_per_upload_by_process": {"gateway": round(1000 * cpu[0] / uploads, 1),
                                              "processors": round(1000 * sum(cpu[1:]) / uploads, 1)},
            "peak_rss_mb": {"gateway": round(gateway.rss() / 2**20, 1),
                            "processors": [round(p.rss() / 2**20, 1) for p in processors]},
            "calls_per_upload": round(calls / (uploads + 1), 2),  # +1: the warm-up upload
            "per_image_median_ms": by_image,
        })
        gateway_stages = stage_means(gw0, gw1, [
            ("receive body", "prism_gateway_upload_stage_seconds", 'stage="receive"'),
            ("dispatch (choose processor)", "prism_gateway_dispatch_seconds", None),
            ("processing, all calls", "prism_gateway_upload_stage_seconds", 'stage="process"'),
            ("store one object", "prism_gateway_store_seconds", None),
            ("write manifest", "prism_gateway_upload_stage_seconds", 'stage="manifest"'),
            ("upload total (after body)", "prism_gateway_upload_stage_seconds", 'stage="total"'),
        ])
        processor_stages = {}
        for label, metric in [("queue wait", "prism_processor_queue_wait_seconds"), ("decode", "prism_processor_decode_seconds"),
                              ("one variant (ops + encode)", "prism_processor_variant_seconds"),
                              ("encode part of a variant", "prism_processor_encode_seconds"),
                              ("call, request to last frame", "prism_processor_call_duration_seconds")]:
            count = sum(metric_value(b, metric + "_count") - metric_value(a, metric + "_count") for a, b in zip(pm0, pm1))
            total = sum(metric_value(b, metric + "_sum") - metric_value(a, metric + "_sum") for a, b in zip(pm0, pm1))
            if count:
                processor_stages[label] = round(1000 * total / count, 1)
        result["stages_ms"] = {"gateway": gateway_stages, "processor": processor_stages}
        return result


# MARK: Peers (what a user would run instead)


def venv_python():
    """The harness's own virtualenv with the peers from PyPI, made on first use."""
    python = VENV / "bin" / "python"
    if not python.exists():
        print(f"making {VENV} (python3 -m venv) for the peers: {' '.join(PEER_PACKAGES)}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    check = subprocess.run([python, "-c", "import pyvips, PIL, thumbor, matplotlib"], capture_output=True)
    if check.returncode != 0:
        subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *PEER_PACKAGES], check=True)
    return python


def peer_versions(python):
    script = ("import importlib.metadata as m, pyvips; "
              "print({p: m.version(p) for p in ('pyvips', 'Pillow', 'thumbor', 'matplotlib')} | "
              "{'libvips (pyvips)': f'{pyvips.version(0)}.{pyvips.version(1)}.{pyvips.version(2)}'})")
    out = subprocess.run([python, "-c", script], capture_output=True, text=True, check=True).stdout
    return eval(out)  # a dict literal printed by our own one-liner


def proc_children(pid):
    """Every descendant of pid (thumbor's forked workers)."""
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                out.append(int(child))
                out += proc_children(int(child))
    except OSError:
        pass
    return out


def peer_row(mode, n, latencies, wall, cpu_s, rss_bytes, failures):
    row = summarize(latencies, wall, len(latencies))
    row.update(mode=mode, in_flight=n, cpu_ms_per_upload=round(1000 * cpu_s / max(1, len(latencies)), 1),
               peak_rss_mb={"total": round(sum(rss_bytes) / 2**20, 1), "largest": round(max(rss_bytes) / 2**20, 1),
                            "processes": len(rss_bytes)},
               failed_uploads=failures)
    return row


class PeerWorker:
    """One `peers.py serve ENGINE` process: one upload at a time, request and answer as JSON lines."""

    def __init__(self, python, engine, log):
        self.log = open(log, "wb")
        self.p = subprocess.Popen([str(python), str(REPO / "Benchmarks" / "peers.py"), "serve", engine], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=self.log, text=True, bufsize=1,
                                  env={**os.environ, "MALLOC_ARENA_MAX": "2"})
        if "ready" not in json.loads(self.p.stdout.readline() or "{}"):
            raise RuntimeError(f"peer {engine} did not start: see {log}")

    def call(self, path, save=None):
        self.p.stdin.write(json.dumps({"path": str(path), "save": save and str(save)}) + "\n")
        self.p.stdin.flush()
        return json.loads(self.p.stdout.readline())

    def stop(self):
        self.p.stdin.close()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
        self.log.close()


def drive(uploads, in_flight, one_upload):
    """in_flight client threads, each starting the next upload when its last one is answered.
    one_upload(worker index, upload index) returns None or an error text."""
    lock = threading.Lock()
    state = {"next": 0, "latencies": [], "failures": [], "samples": []}

    def client(worker):
        while True:
            with lock:
                index = state["next"]
                if index >= uploads:
                    return
                state["next"] += 1
            began = time.monotonic()
            try:
                error = one_upload(worker, index)
            except Exception as e:  # a failed upload, counted and reported
                error = f"{type(e).__name__}: {e}"
            took = time.monotonic() - began
            with lock:
                if error:
                    state["failures"].append(error)
                else:
                    state["latencies"].append(took)
                    state["samples"].append((index, took))

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return state["latencies"], time.monotonic() - start, state["failures"], state["samples"]


def worker_peer_level(python, engine, logs, images, in_flight, rounds):
    """pyvips or Pillow: in_flight worker processes, one upload at a time each (a Python app
    server with in_flight worker processes), started fresh so peak RSS belongs to this level."""
    workers = [PeerWorker(python, engine, logs / f"{engine}-{in_flight}-{i}.log") for i in range(in_flight)]
    try:
        for w in workers:  # warm-up: imports, first-use paths
            w.call(images[0])
        cpu0 = [proc_cpu_seconds(w.p.pid) for w in workers]

        def one(worker, index):
            return workers[worker].call(images[index % len(images)]).get("error")

        latencies, wall, failures, samples = drive(len(images) * rounds, in_flight, one)
        cpu = sum(proc_cpu_seconds(w.p.pid) - c for w, c in zip(workers, cpu0))
        row = peer_row(engine, in_flight, latencies, wall, cpu, [proc_peak_rss(w.p.pid) for w in workers], failures)
        row["per_image_median_ms"] = per_image_ms(images, samples)
        return row
    finally:
        for w in workers:
            w.stop()


# The default recipe as thumbor URLs: fill-crop (thumbor's default) for thumb, fit-in without
# upscaling for the rest, baseline JPEG (PROGRESSIVE_JPEG = False below), blur with sigma 8
# over a radius of 3 sigma.
THUMBOR_VARIANTS = [
    "200x200/filters:quality(80):format(jpeg)",
    "fit-in/640x0/filters:no_upscale():quality(80):format(webp)",
    "fit-in/1280x1280/filters:no_upscale():quality(82):format(jpeg)",
    "fit-in/2048x2048/filters:no_upscale():quality(85):format(jpeg)",
    "fit-in/640x640/filters:no_upscale():blur(24,8):quality(70):format(jpeg)",
]


def thumbor_level(python, logs, images, in_flight, rounds, processes):
    """A thumbor server with `processes` processes (one per core), its file loader reading the
    corpus from disk as if just uploaded; an upload is its five variant URLs requested at once
    (as a page or an app that warms its variants does) and ends when the last one is answered."""
    root = Path(tempfile.mkdtemp(prefix="prism-bench-thumbor-"))
    for p in images:
        (root / p.name).symlink_to(p.resolve())
    conf = root / "thumbor.conf"
    conf.write_text("\n".join([
        "LOADER = 'thumbor.loaders.file_loader'", f"FILE_LOADER_ROOT_PATH = '{root}'",
        "STORAGE = 'thumbor.storages.no_storage'", "RESULT_STORAGE = None", "PROGRESSIVE_JPEG = False",
        "RESPECT_ORIENTATION = True", "ALLOW_UNSAFE_URL = True", "MAX_PIXELS = 100e6", ""]))
    port = free_port()
    server = Proc([VENV / "bin" / "thumbor", "-p", port, "-i", "127.0.0.1", "-c", conf, "--processes", processes, "-l", "warning"],
                  log=logs / f"thumbor-{in_flight}.log", ready=f"http://127.0.0.1:{port}/healthcheck")
    url = f"http://127.0.0.1:{port}/unsafe/"
    pools = [concurrent.futures.ThreadPoolExecutor(len(THUMBOR_VARIANTS)) for _ in range(in_flight)]
    sessions = [[requests.Session() for _ in THUMBOR_VARIANTS] for _ in range(in_flight)]
    try:
        def one(worker, index):
            name = images[index % len(images)].name
            answers = pools[worker].map(lambda v: sessions[worker][v[0]].get(url + v[1] + "/" + name, timeout=120),
                                        enumerate(THUMBOR_VARIANTS))
            bad = [r.status_code for r in answers if r.status_code != 200 or not r.content]
            return f"HTTP {bad}" if bad else None

        for i in range(max(in_flight, int(processes))):  # warm-up: each process, each connection
            one(i % in_flight, 0)
        pids = [server.p.pid] + proc_children(server.p.pid)
        cpu0 = [proc_cpu_seconds(pid) for pid in pids]
        latencies, wall, failures, _samples = drive(len(images) * rounds, in_flight, one)
        cpu = sum(proc_cpu_seconds(pid) - c for pid, c in zip(pids, cpu0))
        # The master only forks and waits: workers' RSS is what thumbor costs.
        return peer_row("thumbor", in_flight, latencies, wall, cpu, [proc_peak_rss(pid) for pid in pids[1:]] or [0], failures)
    finally:
        for pool in pools:
            pool.shutdown()
        # thumbor's workers outlive a SIGTERM to the master: stop them first, by pid.
        for pid in proc_children(server.p.pid):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def output_check(python, bins, logs, images):
    """Bytes and pixels of each Prism variant against pyvips-once's of the same spec: one upload
    per image through e2e-local (split auto), read back from the local store."""
    work = Path(tempfile.mkdtemp(prefix="prism-bench-check-"))
    reference = PeerWorker(python, "pyvips-once", logs / "check-pyvips.log")
    per_image = {}
    try:
        with prism_stack(bins, logs, "check", 1) as (url, data, _gateway, _processors):
            for image in images:
                manifest = requests.post(url + "/v1/images", data=image.read_bytes(),
                                         headers={"Content-Type": "image/png" if image.suffix == ".png" else "image/jpeg"},
                                         timeout=120).json()
                mine, theirs = work / image.stem / "prism", work / image.stem / "pyvips"
                mine.mkdir(parents=True)
                theirs.mkdir(parents=True)
                prism_bytes = {}
                for v in manifest["variants"]:
                    shutil.copyfile(data / v["key"], mine / f"{v['name']}.{'webp' if v['name'] == 'small' else 'jpg'}")
                    prism_bytes[v["name"]] = v["bytes"]
                ref = reference.call(image, save=theirs)
                pixels = json.loads(subprocess.run([python, REPO / "Benchmarks" / "peers.py", "compare", mine, theirs],
                                                   capture_output=True, text=True, check=True).stdout)
                per_image[image.name] = {
                    name: {"prism_bytes": prism_bytes[name], "pyvips_bytes": ref["bytes"][name],
                           "bytes_x": round(prism_bytes[name] / ref["bytes"][name], 3),
                           **pixels[f"{name}.{'webp' if name == 'small' else 'jpg'}"]}
                    for name in prism_bytes}
    finally:
        reference.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for name in ("thumb", "small", "medium", "large", "blur"):
        cells = [v[name] for v in per_image.values()]
        summary[name] = {
            "bytes_x_total": round(sum(c["prism_bytes"] for c in cells) / sum(c["pyvips_bytes"] for c in cells), 3),
            "bytes_x_range": [min(c["bytes_x"] for c in cells), max(c["bytes_x"] for c in cells)],
            "images_within_3pct": sum(abs(c["bytes_x"] - 1) <= 0.03 for c in cells),
            "images": len(cells),
            "psnr_db_min": min(c["psnr_db"] for c in cells),
            "psnr_db_median": round(statistics.median(c["psnr_db"] for c in cells), 2),
            "mean_abs_diff_max": max(c["mean_abs_diff"] for c in cells),
            "sizes_differ": sum(c["resized"] for c in cells),
        }
    return {"per_variant": summary, "per_image": per_image}


# MARK: Soak


def proc_rss(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def slope_mb_per_min(points):
    """Least-squares slope of (seconds, bytes) points, in MB per minute."""
    n = len(points)
    if n < 2:
        return None
    mt = sum(t for t, _ in points) / n
    mr = sum(r for _, r in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    return round(60 * sum((t - mt) * (r - mr) for t, r in points) / var / 2**20, 3) if var else None


def peak_slopes(samples, keys, minutes, window_s=60):
    """Slope (MB/min) of each process's highest RSS per window over the second half: RSS at any
    instant depends on which images are in flight, the envelope is what grows with a leak."""
    out = {}
    for key in keys:
        windows = {}
        for s in samples:
            if s["t_s"] >= 30 * minutes:
                w = int(s["t_s"] // window_s)
                windows[w] = max(windows.get(w, 0), s[key])
        out[key] = slope_mb_per_min([((w + 0.5) * window_s, mb * 2**20) for w, mb in sorted(windows.items())])
    return out


def soak(bins, logs, images, minutes, in_flight=4, every_s=5.0):
    """e2e-local at in_flight uploads for `minutes`; RSS of every process sampled every every_s
    seconds; each image deleted once its upload is answered so the disk does not fill."""
    bodies = [(p.name, p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg") for p in images]
    with prism_stack(bins, logs, "soak", in_flight) as (url, _data, gateway, processors):
        procs = {"gateway": gateway, "processor-1": processors[0], "processor-2": processors[1]}
        lock = threading.Lock()
        stop = threading.Event()
        start = time.monotonic()
        state = {"next": 0, "latencies": [], "failures": [], "delete_failures": 0}

        def client():
            session = requests.Session()
            while not stop.is_set():
                with lock:
                    name, body, ctype = bodies[state["next"] % len(bodies)]
                    state["next"] += 1
                began = time.monotonic()
                try:
                    r = session.post(url + "/v1/images", data=body, headers={"Content-Type": ctype}, timeout=120)
                    error = None if r.status_code == 201 else f"HTTP {r.status_code}: {r.text[:200]}"
                except requests.RequestException as e:
                    r, error = None, f"{type(e).__name__}: {e}"
                took = time.monotonic() - began
                with lock:
                    if error:
                        state["failures"].append({"at_s": round(began - start, 1), "image": name, "error": error})
                    else:
                        state["latencies"].append(took)
                if r is not None and r.status_code == 201:
                    try:
                        d = session.delete(url + "/v1/images/" + r.json()["id"], timeout=30)
                        ok = d.status_code == 204
                    except requests.RequestException:
                        ok = False
                    if not ok:
                        with lock:
                            state["delete_failures"] += 1

        threads = [threading.Thread(target=client) for _ in range(in_flight)]
        for t in threads:
            t.start()
        samples = []
        deadline = start + 60 * minutes
        try:
            while time.monotonic() < deadline:
                now = round(time.monotonic() - start, 1)
                samples.append({"t_s": now, **{k: round(proc_rss(p.p.pid) / 2**20, 1) for k, p in procs.items()}})
                with lock:
                    done = len(state["latencies"])
                if len(samples) % 12 == 1:
                    print(f"  soak {now / 60:.1f} min: {done} uploads, {len(state['failures'])} failed, RSS "
                          + ", ".join(f"{k} {samples[-1][k]:.0f} MB" for k in procs), flush=True)
                time.sleep(max(0.0, min(every_s, deadline - time.monotonic())))
        finally:
            stop.set()
            for t in threads:
                t.join()
        wall = time.monotonic() - start
        peak = {k: round(p.rss() / 2**20, 1) for k, p in procs.items()}
    second_half = [s for s in samples if s["t_s"] >= 30 * minutes]
    result = summarize(state["latencies"], wall, len(state["latencies"])) if state["latencies"] else {"uploads": 0}
    result.update({
        "mode": "soak e2e-local", "in_flight": in_flight, "minutes": minutes, "sample_every_s": every_s,
        "rss_slope_mb_per_min_second_half": {k: slope_mb_per_min([(s["t_s"], s[k] * 2**20) for s in second_half]) for k in procs},
        "rss_peak_per_minute_slope_mb_per_min_second_half": peak_slopes(samples, list(procs), minutes),
        "rss_mb_first_last_second_half": {k: [second_half[0][k], second_half[-1][k]] if second_half else None for k in procs},
        "peak_rss_mb": peak,
        "failed_uploads": len(state["failures"]), "failures": state["failures"],
        "failed_deletes": state["delete_failures"], "samples": samples,
    })
    return result


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name")), "?")
    mem = next((l.split()[1] for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")), "0")
    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).stdout.strip().splitlines()[0]
        except Exception:
            return "?"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(int(mem) / 2**20, 1), "kernel": platform.release(),
        "swift": out("swift", "--version"), "libvips": out("vips", "--version"), "python": platform.python_version(),
        "commit": out("git", "rev-parse", "--short", "HEAD"), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def rss_text(rss):
    if isinstance(rss, (int, float)):
        return f"{rss:.0f}"
    if isinstance(rss, dict) and "gateway" in rss:
        return f"gw {rss['gateway']:.0f}, p {'/'.join(f'{x:.0f}' for x in rss['processors'])}"
    if isinstance(rss, dict):
        return f"{rss['processes']}x, max {rss['largest']:.0f}, sum {rss['total']:.0f}"
    return "-"


def table(rows, title):
    print(f"\n{title}")
    print(f"{'mode':<12} {'in flight':>9} {'median ms':>10} {'p95 ms':>8} {'uploads/s':>10} {'CPU ms/up':>10} {'peak RSS MB':>24} {'calls/up':>9}")
    for r in rows:
        print(f"{r['mode']:<12} {r['in_flight']:>9} {r['median_ms']:>10} {r['p95_ms']:>8} {r['uploads_per_s']:>10} "
              f"{r['cpu_ms_per_upload']:>10} {rss_text(r.get('peak_rss_mb')):>24} {r.get('calls_per_upload', '-'):>9}")


def ratios_to(rows, reference, modes, levels):
    """Each mode's median latency, throughput and CPU per upload over the reference's, per level."""
    def row(mode, n):
        return next((r for r in rows if r["mode"] == mode and r["in_flight"] == n), None)

    out = {}
    for n in levels:
        base = row(reference, n)
        for mode in modes:
            r = row(mode, n)
            if base and r and mode != reference:
                out[f"{mode}@{n}"] = {"median_latency_x": round(r["median_ms"] / base["median_ms"], 2),
                                      "throughput_x": round(r["uploads_per_s"] / base["uploads_per_s"], 2),
                                      "cpu_per_upload_x": round(r["cpu_ms_per_upload"] / base["cpu_ms_per_upload"], 2)}
    return out


def print_goals(results, levels):
    """The issue's goals against pyvips-once, side by side; reported, never asserted."""
    rows = results["runs"] + results.get("peers", [])

    def row(mode, n):
        return next((r for r in rows if r["mode"] == mode and r["in_flight"] == n), None)

    goals = []
    e, p = row("e2e-local", 1), row("pyvips-once", 1)
    if e and p:
        goals.append(("e2e median latency at 1 in flight / pyvips-once", e["median_ms"] / p["median_ms"], "<= 0.85"))
    for n in (2, 4, 8):
        e, p = row("e2e-local", n), row("pyvips-once", n)
        if e and p:
            goals.append((f"e2e throughput at {n} in flight / pyvips-once", e["uploads_per_s"] / p["uploads_per_s"], ">= 0.95"))
    pairs = [(row("e2e-local", n), row("pyvips-once", n)) for n in levels]
    pairs = [(e, p) for e, p in pairs if e and p]
    if pairs:
        goals.append(("Prism services' CPU per upload / pyvips-once (mean over levels)",
                      statistics.mean(e["cpu_ms_per_upload"] for e, _ in pairs) / statistics.mean(p["cpu_ms_per_upload"] for _, p in pairs), "<= 1.05"))
        goals.append(("gateway CPU ms per upload (mean over levels)",
                      statistics.mean(e["cpu_ms_per_upload_by_process"]["gateway"] for e, _ in pairs), "< 10"))
    results["goals"] = [{"what": w, "measured": round(v, 2), "goal": g} for w, v, g in goals]
    if goals:
        print("\nThe issue's goals (measured in this run; not asserted)")
        for w, v, g in goals:
            print(f"  {w:<66} {v:>7.2f}   goal {g}")


def markdown_table(results):
    """Prism and the peers, for docs/performance.md."""
    names = {"e2e-local": "Prism e2e, local store", "pipeline": "Prism pipeline in-process", "pyvips-once": "pyvips decode-once (cascade)",
             "pyvips-flat": "pyvips decode-once, all from 2048", "pyvips-each": "pyvips per variant", "pillow": "Pillow", "thumbor": "thumbor"}
    lines = ["| | in flight | median ms | p95 ms | uploads/s | CPU ms per upload | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---|"]
    rows = results["runs"] + results.get("peers", [])
    for mode, label in names.items():
        for r in sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["in_flight"]):
            cpu = f"{r['cpu_ms_per_upload']:.0f}"
            if "cpu_ms_per_upload_by_process" in r:
                by = r["cpu_ms_per_upload_by_process"]
                cpu += f" (gw {by['gateway']:.0f}, p {by['processors']:.0f})"
            lines.append(f"| {label} | {r['in_flight']} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} | {r['uploads_per_s']:.2f} | {cpu} | {rss_text(r.get('peak_rss_mb'))} |")
    return "\n".join(lines)


def print_output_check(check):
    print("\nOutput check: each Prism variant against pyvips-once's of the same spec (bytes: Prism / pyvips)")
    print(f"  {'variant':<8} {'bytes x (all)':>13} {'range':>13} {'within 3%':>10} {'PSNR min dB':>12} {'PSNR median':>12} {'MAD max':>8}")
    for name, v in check["per_variant"].items():
        print(f"  {name:<8} {v['bytes_x_total']:>13} {v['bytes_x_range'][0]:>6}-{v['bytes_x_range'][1]:<6} "
              f"{v['images_within_3pct']:>4}/{v['images']:<5} {v['psnr_db_min']:>12} {v['psnr_db_median']:>12} {v['mean_abs_diff_max']:>8}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the corpus per measurement")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--modes", default=",".join(PRISM_MODES + PEERS + ["check"]),
                        help=f"what to run, of {','.join(PRISM_MODES + PEERS)},check (the output check)")
    parser.add_argument("--bin-dir", help="where prism-gateway, prism-processor and prism-bench are (default: the release build)")
    parser.add_argument("--thumbor-processes", type=int, default=os.cpu_count() or 2, help="thumbor's --processes (default: one per core)")
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="only the soak: e2e-local at 4 in flight for MINUTES")
    parser.add_argument("--plot-dir", default=str(REPO / "docs"), help="where performance-latency.svg/.png go ('' for none)")
    parser.add_argument("--out", help="the JSON (default: Benchmarks/results/DATE-bench.json or DATE-soak.json, and latest.json)")
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    modes = set(args.modes.split(","))
    if args.skip_s3:
        modes.discard("e2e-s3")
    bins = bin_dir(args.bin_dir)
    images = corpus()
    missing = [p for p in images if not p.exists()]
    if missing:
        sys.exit(f"missing images {missing}: run python3 scripts/make_test_images.py")
    logs = Path(tempfile.mkdtemp(prefix="prism-bench-logs-"))
    info = machine()
    info["bin_dir"] = str(bins)
    # HEAD says which harness ran; the binaries may be older or built from a dirty tree.
    info["binaries_built"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime((bins / "prism-gateway").stat().st_mtime))
    stamp = time.strftime("%Y-%m-%d-%H%M", time.gmtime())
    results_dir = REPO / "Benchmarks" / "results"
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; {info['swift']}; {info['libvips']}; commit {info['commit']}; binaries {bins}")
    print(f"corpus: {len(images)} images, {', '.join(p.name for p in images)}; raw image bodies over HTTP/1.1 keep-alive")

    if args.soak:
        print(f"soak: e2e-local, 4 in flight, {args.soak:g} minutes", flush=True)
        result = soak(bins, logs, images, args.soak)
        result = {"machine": info, "corpus": [p.name for p in images], **result}
        print(f"\nSoak: {result['uploads']} uploads in {result.get('wall_s')} s, median {result.get('median_ms')} ms, "
              f"{result['failed_uploads']} failed uploads, {result['failed_deletes']} failed deletes")
        for f in result["failures"][:20]:
            print(f"  failed at {f['at_s']} s, {f['image']}: {f['error']}")
        print("RSS slope over the second half (least squares, MB/min); RSS at its start and end; peak:")
        for k, v in result["rss_slope_mb_per_min_second_half"].items():
            print(f"  {k:<12} {v} MB/min (of each minute's peak: {result['rss_peak_per_minute_slope_mb_per_min_second_half'][k]})   "
                  f"{result['rss_mb_first_last_second_half'][k]} MB   peak {result['peak_rss_mb'][k]} MB")
        out = Path(args.out or results_dir / f"{stamp}-soak.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON: {out}; logs: {logs}")
        return

    peers_wanted = [p for p in PEERS if p in modes]
    python = venv_python() if peers_wanted or "check" in modes or args.plot_dir else None
    if python:
        info["peers"] = peer_versions(python)
        print(f"peers: {info['peers']}")
    print(f"{args.rounds} passes over the corpus per measurement; levels {levels}", flush=True)
    results = {"machine": info, "corpus": [p.name for p in images], "rounds": args.rounds, "runs": [], "peers": []}
    runs = results["runs"]

    # Level by level, every mode at a level back to back: on a shared machine the load drifts
    # over minutes, so what is compared should be measured close together.
    stores = [s for s in ("local", "s3") if f"e2e-{s}" in modes]
    seaweed = Seaweed(logs) if "s3" in stores else None
    try:
        for n in levels:
            if "pipeline" in modes:
                r = run_bench(bins / "prism-bench", "pipeline", images, n, args.rounds)
                row = summarize([x / 1000 for x in r["latencies_ms"]], r["wall_s"], r["uploads"])
                row.update(mode="pipeline", in_flight=n, cpu_ms_per_upload=round(1000 * r["cpu_s"] / r["uploads"], 1),
                           peak_rss_mb=round(r["peak_rss_bytes"] / 2**20, 1))
                runs.append(row)
                print(f"  pipeline {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s", flush=True)
            if "processor" in modes:
                p = start_processor(bins, logs, f"solo-{n}")
                try:
                    cpu0 = p.cpu()
                    r = run_bench(bins / "prism-bench", "processor", images, n, args.rounds, ["--port", str(p.port)])
                    cpu = p.cpu() - cpu0
                    row = summarize([x / 1000 for x in r["latencies_ms"]], r["wall_s"], r["uploads"])
                    row.update(mode="processor", in_flight=n, cpu_ms_per_upload=round(1000 * cpu / r["uploads"], 1),
                               client_cpu_ms_per_upload=round(1000 * r["client_cpu_s"] / r["uploads"], 1),
                               peak_rss_mb=round(p.rss() / 2**20, 1))
                    runs.append(row)
                    print(f"  processor {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s", flush=True)
                finally:
                    p.stop()
            for store in stores:
                row = e2e_level(bins, logs, images, n, args.rounds, store, seaweed)
                row.update(mode=f"e2e-{store}", in_flight=n)
                runs.append(row)
                print(f"  e2e-{store} {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s, {row['calls_per_upload']} calls/upload", flush=True)
            for peer in peers_wanted:
                if peer == "thumbor":
                    row = thumbor_level(python, logs, images, n, args.rounds, args.thumbor_processes)
                    row["processes"] = args.thumbor_processes
                else:
                    row = worker_peer_level(python, peer, logs, images, n, args.rounds)
                results["peers"].append(row)
                print(f"  {peer} {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s, {row['cpu_ms_per_upload']} CPU ms/upload"
                      + (f", {len(row['failed_uploads'])} failed: {row['failed_uploads'][:3]}" if row["failed_uploads"] else ""), flush=True)
        split_rows = []
        for split in ("auto", "never", "always") if "split" in modes else ():
            for n in (1, 4):
                row = e2e_level(bins, logs, images, n, args.rounds, "local", split=split)
                row.update(mode=f"split-{split}", in_flight=n)
                split_rows.append(row)
                print(f"  split {split} {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s, {row['calls_per_upload']} calls/upload", flush=True)
        results["split"] = split_rows
    finally:
        if seaweed:
            seaweed.stop()

    if "check" in modes:
        results["output_check"] = output_check(python, bins, logs, images)

    if "memory" in modes:
        # Memory: one processor, 17-20 MP photos, 4 in flight.
        p = start_processor(bins, logs, "rss")
        try:
            r = run_bench(bins / "prism-bench", "processor", large_corpus(), 4, 3, ["--port", str(p.port)])
            results["large_photos_4_in_flight"] = {"images": [x.name for x in large_corpus()], "uploads": r["uploads"],
                                                    "processor_peak_rss_mb": round(p.rss() / 2**20, 1)}
        finally:
            p.stop()

    prism_modes = ["processor", "e2e-local", "e2e-s3"]
    results["ratios_vs_pipeline"] = ratios_to(runs, "pipeline", prism_modes, levels)
    everything = runs + results["peers"]
    results["ratios_vs_pyvips_once"] = ratios_to(everything, "pyvips-once", ["pipeline", "e2e-local", "e2e-s3"] + PEERS, levels)

    table(runs + results["peers"], "Results (default recipe: thumb, small, medium, large, blur)")
    if results["split"]:
        table(results["split"], "Splitting an upload over processors (e2e, local store)")
    for title, ratios in (("the in-process pipeline", results["ratios_vs_pipeline"]), ("pyvips decode-once", results["ratios_vs_pyvips_once"])):
        if ratios:
            print(f"\nRatios to {title} (latency, CPU: lower is better; throughput: higher is better)")
            for key, value in ratios.items():
                print(f"  {key:<16} latency {value['median_latency_x']}x   throughput {value['throughput_x']}x   CPU/upload {value['cpu_per_upload_x']}x")
    print_goals(results, levels)
    print("\nMarkdown (docs/performance.md)\n" + markdown_table(results))
    e2e1 = next((r for r in runs if r["mode"] == "e2e-local" and r["in_flight"] == min(levels)), None)
    if e2e1:
        print(f"\nWhere the time goes (e2e-local, {min(levels)} in flight, mean ms)")
        for side in ("gateway", "processor"):
            for label, value in e2e1["stages_ms"][side].items():
                print(f"  {side:<9} {label:<30} {value:>8}")
        print("\nCPU ms per upload by process (e2e-local): " + "; ".join(
            f"{r['in_flight']} in flight: gateway {r['cpu_ms_per_upload_by_process']['gateway']}, processors {r['cpu_ms_per_upload_by_process']['processors']}"
            for r in runs if r["mode"] == "e2e-local"))
    if "output_check" in results:
        print_output_check(results["output_check"])
    if "large_photos_4_in_flight" in results:
        print(f"\nProcessor peak RSS, 17-20 MP photos, 4 in flight: {results['large_photos_4_in_flight']['processor_peak_rss_mb']} MB")
    out = Path(args.out or results_dir / f"{stamp}-bench.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    if not args.out:
        shutil.copyfile(out, results_dir / "latest.json")
    if args.plot_dir and everything:
        subprocess.run([python, REPO / "Benchmarks" / "peers.py", "plot", out, args.plot_dir], check=True)
        print(f"\nfigure: {args.plot_dir}/performance-latency.svg (and .png)")
    print(f"\nJSON: {out}; logs: {logs}")


if __name__ == "__main__":
    main()
