#!/usr/bin/env python3
"""The numbers docs/scaling.md's capacity model rests on: what one upload costs each part of
Prism, measured with real processes, so an operator can re-measure on their own hardware.

  python3 Benchmarks/capacity.py --bin-dir .build/release          # about 3 minutes on 2 cores
  python3 Benchmarks/capacity.py --bin-dir .build/release --skip-s3 --rounds 1
  python3 Benchmarks/capacity.py --model Benchmarks/results/X-capacity.json --pod-cores 4 --gateways 3

Per recipe (the built-in default, a lone thumbnail, three AVIF sizes), at --in-flight uploads
at once against a gateway and two processors (local store):
  - gateway and processor CPU per upload (user + system from /proc/PID/stat);
  - bytes per upload on each hop: client -> gateway (the body), gateway -> processors and back
    (each processor's rchar/wchar from /proc/PID/io: a processor touches no disk, so what it
    reads and writes is its sockets), gateway -> store (prism_gateway_bytes_stored_total), and
    the manifest back to the client;
  - store requests per upload (prism_gateway_store_seconds_count, plus the manifest's PUT) and
    processor calls per upload.
Then the gateway's peak RSS (VmHWM, a fresh gateway per level) at 1, 2, 4, 8 and 16 uploads in
flight, and, with SeaweedFS on PATH, the default recipe on the S3 store (SigV4 and libcurl cost
the gateway more CPU than local files).

CPU, bytes and requests per upload are totals over a measurement divided by its uploads; each
per-recipe (and S3) number is the median of --repeat measurements, each on fresh processes.
Run it on a quiet machine, or say how busy it was (the 1-minute load average is in every row).
"""
import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import REPO, Proc, corpus, free_port, machine, metric_value, proc_cpu_seconds, summarize  # noqa: E402

RECIPES = {
    "recipes": {
        "thumbnail": {
            "description": "one 200x200 cover thumbnail, JPEG",
            "variants": [{"name": "thumb", "operations": [{"resize": {"width": 200, "height": 200, "fit": "COVER"}}],
                          "output": {"format": "JPEG", "quality": 80}}],
        },
        "avif": {
            "description": "three AVIF sizes, the expensive encoder",
            "variants": [
                {"name": f"w{w}", "operations": [{"resize": {"width": w, "height": w, "fit": "INSIDE", "withoutEnlargement": True}}],
                 "output": {"format": "AVIF", "quality": 55}} for w in (1280, 640, 320)
            ],
        },
    }
}


def proc_io(pid):
    """rchar and wchar of a process: every byte its read/write calls moved, sockets included."""
    fields = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    return int(fields["rchar"]), int(fields["wchar"])


def peak_rss_mb(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


class Stack:
    """A gateway and `processors` processors, each with `workers` workers, started fresh."""

    def __init__(self, bins, logs, name, recipes, processors=2, workers=1, store="local", seaweed=None):
        self.processors = []
        for i in range(processors):
            port, status = free_port(), free_port()
            p = Proc([bins / "prism-processor", "--port", port, "--status-port", status, "--workers", workers,
                      # Deep enough for every level measured: a full queue answers 503, not a number.
                      "--queue", "32"],
                     log=logs / f"{name}-p{i}.log", ready=f"http://127.0.0.1:{status}/readyz")
            p.port, p.status = port, status
            self.processors.append(p)
        self.data = Path(tempfile.mkdtemp(prefix="prism-capacity-"))
        port = free_port()
        flags = ["--port", port, "--processors", ",".join(f"127.0.0.1:{p.port}" for p in self.processors),
                 "--data-dir", self.data, "--recipes", recipes, "--max-concurrent-uploads", "64"]
        env = {}
        if store == "s3":
            flags += ["--storage", "s3", "--s3-endpoint", seaweed.endpoint, "--s3-bucket", f"capacity-{name}", "--s3-create-bucket"]
            env = seaweed.gateway_env()
        self.url = f"http://127.0.0.1:{port}"
        self.gateway = Proc([bins / "prism-gateway", *flags], env=env, log=logs / f"{name}-gateway.log", ready=self.url + "/healthz")
        deadline = time.monotonic() + 30
        while f"ready: {processors} " not in requests.get(self.url + "/readyz", timeout=2).text:
            if time.monotonic() > deadline:
                raise RuntimeError("processors not ready")
            time.sleep(0.05)

    def stop(self):
        self.gateway.stop()
        for p in self.processors:
            p.stop()
        import shutil
        shutil.rmtree(self.data, ignore_errors=True)


def load(url, images, in_flight, rounds, recipe):
    """in_flight client threads with keep-alive sessions, raw bodies; returns latencies, wall
    time, body bytes and answer bytes. A failed upload stops the measurement."""
    bodies = [(p.read_bytes(), "image/png" if p.suffix == ".png" else "image/jpeg") for p in images]
    total = len(bodies) * rounds
    lock = threading.Lock()
    state = {"next": 0, "latencies": [], "errors": [], "sent": 0, "answered": 0}

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
            r = session.post(f"{url}/v1/images?recipe={recipe}", data=body, headers={"Content-Type": ctype}, timeout=120)
            took = time.monotonic() - began
            with lock:
                if r.status_code == 201:
                    state["latencies"].append(took)
                    state["sent"] += len(body)
                    state["answered"] += len(r.content)
                else:
                    state["errors"].append(f"{r.status_code} {r.text[:200]}")

    start = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(in_flight)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - start
    if state["errors"]:
        raise RuntimeError(f"uploads failed: {state['errors'][:5]}")
    return state["latencies"], wall, state["sent"], state["answered"]


def measure(stack, images, in_flight, rounds, recipe):
    # Warm-up: connections, first-use paths, libvips' format loaders.
    body = images[0].read_bytes()
    requests.post(f"{stack.url}/v1/images?recipe={recipe}", data=body, headers={"Content-Type": "image/jpeg"}, timeout=120)
    gw, ps = stack.gateway.p.pid, [p.p.pid for p in stack.processors]
    cpu0 = [proc_cpu_seconds(pid) for pid in [gw, *ps]]
    io0 = [proc_io(pid) for pid in ps]
    m0 = requests.get(stack.url + "/metrics", timeout=5).text
    calls0 = sum(metric_value(requests.get(f"http://127.0.0.1:{p.status}/metrics", timeout=5).text, "prism_processor_calls_started_total")
                 for p in stack.processors)
    latencies, wall, sent, answered = load(stack.url, images, in_flight, rounds, recipe)
    cpu = [proc_cpu_seconds(pid) - c for pid, c in zip([gw, *ps], cpu0)]
    io = [tuple(b - a for a, b in zip(before, proc_io(pid))) for pid, before in zip(ps, io0)]
    m1 = requests.get(stack.url + "/metrics", timeout=5).text
    calls1 = sum(metric_value(requests.get(f"http://127.0.0.1:{p.status}/metrics", timeout=5).text, "prism_processor_calls_started_total")
                 for p in stack.processors)
    n = len(latencies)

    def delta(name, labels=None):
        return metric_value(m1, name, labels) - metric_value(m0, name, labels)

    row = summarize(latencies, wall, n)
    row.update({
        "recipe": recipe, "in_flight": in_flight,
        "gateway_cpu_ms_per_upload": round(1000 * cpu[0] / n, 1),
        "processor_cpu_ms_per_upload": round(1000 * sum(cpu[1:]) / n, 1),
        "calls_per_upload": round((calls1 - calls0) / n, 2),
        "bytes_per_upload": {
            "client_to_gateway_body": round(sent / n),
            "gateway_to_processors": round(sum(r for r, _ in io) / n),
            "processors_to_gateway": round(sum(w for _, w in io) / n),
            "gateway_to_store": round(delta("prism_gateway_bytes_stored_total") / n),
            "gateway_to_client_manifest": round(answered / n),
        },
        # The store timer counts the original and each variant; the manifest is one more PUT.
        "store_requests_per_upload": round(delta("prism_gateway_store_seconds_count") / n + 1, 2),
        "peak_rss_mb": {"gateway": peak_rss_mb(gw), "processors": [peak_rss_mb(pid) for pid in ps]},
    })
    return row


def median_row(reps):
    """The median of each number over repetitions (a shared machine's noise hits single runs),
    with every repetition kept under "repetitions"."""
    def merge(values):
        first = values[0]
        if isinstance(first, dict):
            return {k: merge([v[k] for v in values]) for k in first}
        if isinstance(first, list):
            return [merge([v[i] for v in values]) for i in range(len(first))]
        if isinstance(first, (int, float)) and not isinstance(first, bool):
            return statistics.median(values)
        return first
    row = merge(reps)
    row["repetitions"] = reps
    return row


PROCESSOR_COUNTS = [1, 2, 4, 8, 12, 16, 24, 32, 48, 64]


def model(results, recipe="default", pod_cores=2, gateways=2, gateway_cores=1, s3_puts_per_s=3500):
    """docs/scaling.md's throughput table from measured numbers: processors are CPU-bound
    (uploads/s = cores x 1000 / CPU ms per upload), gateways too, the store takes a fixed number
    of PUTs per upload, and every byte through a gateway is counted once in and once out."""
    row = next(r for r in results["per_recipe"] if r["recipe"] == recipe)
    p, g = row["processor_cpu_ms_per_upload"], row["gateway_cpu_ms_per_upload"]
    b = row["bytes_per_upload"]
    through_gateway = (b["client_to_gateway_body"] + b["processors_to_gateway"] + b["gateway_to_processors"]
                       + b["gateway_to_store"] + b["gateway_to_client_manifest"])
    puts = row["store_requests_per_upload"]
    gateway_limit = gateways * gateway_cores * 1000 / g
    s3_limit = s3_puts_per_s / puts
    lines = [f"{recipe}: processor {p:.0f} ms, gateway {g:.1f} ms CPU per upload; {through_gateway / 1e6:.2f} MB through a gateway "
             f"(in + out) and {puts:.0f} store PUTs per upload; one gateway core feeds {p / g:.1f} processor cores",
             f"| processor pods ({pod_cores} cores) | uploads/s the processors make | gateway cores that needs | "
             f"traffic through the gateways, Gbit/s | S3 PUT/s | uploads/s with {gateways} gateways of {gateway_cores} core | first limit |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for n in PROCESSOR_COUNTS:
        made = n * pod_cores * 1000 / p
        limits = []
        if made > gateway_limit:
            limits.append(f"gateway CPU ({gateways} x {gateway_cores} core)")
        if made > s3_limit:
            limits.append(f"S3 PUT rate ({s3_puts_per_s}/s)")
        lines.append(f"| {n} | {made:.0f} | {made * g / 1000:.1f} | {made * through_gateway * 8 / 1e9:.1f} | {made * puts:.0f} | "
                     f"{min(made, gateway_limit):.0f} | {', '.join(limits) or 'processor CPU'} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", help="where prism-gateway and prism-processor are (a release build)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the corpus per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per recipe (and for S3); the median is reported")
    parser.add_argument("--in-flight", type=int, default=4, help="uploads at once for the per-recipe rows")
    parser.add_argument("--memory-levels", default="1,2,4,8,16", help="uploads in flight for the gateway's RSS rows")
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--out", help="the JSON (default Benchmarks/results/DATE-capacity.json)")
    parser.add_argument("--model", metavar="JSON", help="only print the throughput model from a saved result")
    parser.add_argument("--pod-cores", type=int, default=2, help="cores per processor pod in the model")
    parser.add_argument("--gateways", type=int, default=2, help="gateway pods in the model")
    parser.add_argument("--gateway-cores", type=int, default=1, help="cores per gateway pod in the model")
    parser.add_argument("--s3-puts-per-second", type=int, default=3500, help="the store's PUT limit in the model (AWS S3: 3500 per prefix)")
    args = parser.parse_args()
    shape = dict(pod_cores=args.pod_cores, gateways=args.gateways, gateway_cores=args.gateway_cores, s3_puts_per_s=args.s3_puts_per_second)
    if args.model:
        results = json.loads(Path(args.model).read_text())
        for recipe in [r["recipe"] for r in results["per_recipe"]]:
            print(model(results, recipe, **shape) + "\n")
        return
    if not args.bin_dir:
        parser.error("--bin-dir is required")
    bins = Path(args.bin_dir).resolve()
    images = corpus()
    missing = [p for p in images if not p.exists()]
    if missing:
        sys.exit(f"missing images {missing}: run python3 scripts/make_test_images.py")
    logs = Path(tempfile.mkdtemp(prefix="prism-capacity-logs-"))
    recipes = logs / "recipes.json"
    recipes.write_text(json.dumps(RECIPES))
    workers = max(1, (os.cpu_count() or 2) // 2)  # two processors share the machine: one worker per core in all
    info = machine()
    info["bin_dir"] = str(bins)
    print(f"machine: {info['cpu']}, {info['cores']} cores; load {info['load_avg_at_start']}; corpus {len(images)} images", flush=True)
    results = {"machine": info, "corpus": [p.name for p in images],
               "corpus_bytes_mean": round(sum(p.stat().st_size for p in images) / len(images)), "recipes": RECIPES,
               "per_recipe": [], "gateway_memory": [], "s3": None}

    for recipe in ("default", "thumbnail", "avif"):
        # AVIF costs 8x the default recipe: one pass over the corpus per repetition.
        rounds = 1 if recipe == "avif" else args.rounds
        reps = []
        for rep in range(args.repeat):
            stack = Stack(bins, logs, f"recipe-{recipe}-{rep}", recipes, workers=workers)
            try:
                reps.append(measure(stack, images, args.in_flight, rounds, recipe))
            finally:
                stack.stop()
        row = median_row(reps)
        results["per_recipe"].append(row)
        b = row["bytes_per_upload"]
        print(f"{recipe:<10} {row['in_flight']} in flight: {row['uploads_per_s']} uploads/s, gateway {row['gateway_cpu_ms_per_upload']} ms, "
              f"processors {row['processor_cpu_ms_per_upload']} ms CPU per upload, {row['calls_per_upload']} calls, "
              f"{row['store_requests_per_upload']} store requests; bytes {b}; load {row['load_avg_1min_at_end']}", flush=True)

    for level in [int(x) for x in args.memory_levels.split(",")]:
        stack = Stack(bins, logs, f"memory-{level}", recipes, workers=workers)
        try:
            row = measure(stack, images, level, args.rounds, "default")
        finally:
            stack.stop()
        results["gateway_memory"].append(row)
        print(f"memory     {level:>2} in flight: gateway peak RSS {row['peak_rss_mb']['gateway']} MB, processors {row['peak_rss_mb']['processors']} MB, "
              f"{row['uploads_per_s']} uploads/s, gateway {row['gateway_cpu_ms_per_upload']} ms CPU per upload; load {row['load_avg_1min_at_end']}", flush=True)

    if not args.skip_s3:
        from conftest import Seaweed  # Tests/system, on sys.path through run.py
        seaweed = Seaweed(logs / "seaweed")
        reps = []
        try:
            for rep in range(args.repeat):
                stack = Stack(bins, logs, f"s3-{rep}", recipes, workers=workers, store="s3", seaweed=seaweed)
                try:
                    reps.append(measure(stack, images, args.in_flight, args.rounds, "default"))
                finally:
                    stack.stop()
        finally:
            seaweed.stop()
        row = median_row(reps)
        results["s3"] = row
        print(f"s3 default {row['in_flight']} in flight: {row['uploads_per_s']} uploads/s, gateway {row['gateway_cpu_ms_per_upload']} ms, "
              f"processors {row['processor_cpu_ms_per_upload']} ms CPU per upload, {row['store_requests_per_upload']} store requests, "
              f"gateway peak RSS {row['peak_rss_mb']['gateway']} MB; load {row['load_avg_1min_at_end']}", flush=True)

    results["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    out = Path(args.out) if args.out else REPO / "Benchmarks" / "results" / time.strftime("%Y-%m-%d-%H%M-capacity.json", time.gmtime())
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {out}\n")
    for recipe in ("default", "thumbnail", "avif"):
        print(model(results, recipe, **shape) + "\n")


if __name__ == "__main__":
    main()
