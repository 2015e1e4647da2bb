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
"""
import argparse
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


def corpus():
    photos = sorted((IMAGES / "photos").glob("*.jpg"))
    extra = [IMAGES / "edge" / n for n in ("progressive-13mp.jpg", "large-photo.png", "large-19mp.jpg", "large-17mp.jpg")]
    return photos + extra


def large_corpus():
    return [IMAGES / "edge" / n for n in ("large-19mp.jpg", "large-17mp.jpg", "progressive-13mp.jpg")]


def bin_dir():
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
    def __init__(self, args, env=None, log=None, ready=None):
        self.log = open(log or os.devnull, "wb")
        self.p = subprocess.Popen([str(a) for a in args], stdout=self.log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "MALLOC_ARENA_MAX": "2", **(env or {})})
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
        "p95_ms": round(ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))], 1),
        "uploads_per_s": round(uploads / wall_s, 2),
        "wall_s": round(wall_s, 2),
    }


def run_bench(binary, mode, images, in_flight, rounds, extra=()):
    out = subprocess.run([binary, mode, "--images", ",".join(map(str, images)), "--in-flight", str(in_flight),
                          "--rounds", str(rounds), *extra], capture_output=True, text=True, check=True,
                         env={**os.environ, "MALLOC_ARENA_MAX": "2"})
    return json.loads(out.stdout)


def start_processor(bins, logs, name, *flags):
    port, status = free_port(), free_port()
    proc = Proc([bins / "prism-processor", "--port", port, "--status-port", status, *flags],
                log=logs / f"{name}.log", ready=f"http://127.0.0.1:{status}/readyz")
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
    state = {"next": 0, "latencies": [], "errors": []}

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
    return state["latencies"], wall


def e2e_level(bins, logs, images, in_flight, rounds, store, seaweed=None, split="auto"):
    # Two processors on one machine share its cores: one worker per core in all.
    workers = str(max(1, (os.cpu_count() or 2) // 2))
    processors = [start_processor(bins, logs, f"p{i}-{store}-{in_flight}-{split}", "--workers", workers) for i in range(2)]
    port = free_port()
    data = Path(tempfile.mkdtemp(prefix="prism-bench-"))
    flags = ["--port", port, "--processors", ",".join(f"127.0.0.1:{p.port}" for p in processors), "--data-dir", data,
             "--split", split, "--max-concurrent-uploads", "64"]
    env = {}
    if store == "s3":
        flags += ["--storage", "s3", "--s3-endpoint", seaweed.endpoint, "--s3-bucket", f"bench-{in_flight}-{split}", "--s3-create-bucket"]
        env = seaweed.gateway_env()
    gateway = Proc([bins / "prism-gateway", *flags], env=env, log=logs / f"gateway-{store}-{in_flight}-{split}.log",
                   ready=f"http://127.0.0.1:{port}/healthz")
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while "ready: 2 " not in requests.get(url + "/readyz", timeout=2).text:
            if time.monotonic() > deadline:
                raise RuntimeError("processors not ready")
            time.sleep(0.05)
        procs = [gateway] + processors
        cpu0 = [p.cpu() for p in procs]
        gw0 = metrics_of(url + "/metrics")
        pm0 = [metrics_of(f"http://127.0.0.1:{p.status}/metrics") for p in processors]
        latencies, wall = http_load(url, images, in_flight, rounds)
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
    finally:
        gateway.stop()
        for p in processors:
            p.stop()
        shutil.rmtree(data, ignore_errors=True)


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
    }


def table(rows, title):
    print(f"\n{title}")
    print(f"{'mode':<12} {'in flight':>9} {'median ms':>10} {'p95 ms':>8} {'uploads/s':>10} {'CPU ms/up':>10} {'peak RSS MB':>22} {'calls/up':>9}")
    for r in rows:
        rss = r.get("peak_rss_mb")
        rss_text = f"{rss:.0f}" if isinstance(rss, (int, float)) else f"gw {rss['gateway']:.0f}, p {'/'.join(f'{x:.0f}' for x in rss['processors'])}" if isinstance(rss, dict) else "-"
        print(f"{r['mode']:<12} {r['in_flight']:>9} {r['median_ms']:>10} {r['p95_ms']:>8} {r['uploads_per_s']:>10} "
              f"{r['cpu_ms_per_upload']:>10} {rss_text:>22} {r.get('calls_per_upload', '-'):>9}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the corpus per measurement")
    parser.add_argument("--levels", default=",".join(map(str, LEVELS)))
    parser.add_argument("--skip-s3", action="store_true")
    parser.add_argument("--out", default=str(REPO / "Benchmarks" / "results" / "latest.json"))
    args = parser.parse_args()
    levels = [int(x) for x in args.levels.split(",")]
    bins = bin_dir()
    images = corpus()
    missing = [p for p in images if not p.exists()]
    if missing:
        sys.exit(f"missing images {missing}: run python3 scripts/make_test_images.py")
    logs = Path(tempfile.mkdtemp(prefix="prism-bench-logs-"))
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; {info['swift']}; {info['libvips']}; commit {info['commit']}")
    print(f"corpus: {len(images)} images, {', '.join(p.name for p in images)}; {args.rounds} passes per measurement; raw image bodies over HTTP/1.1 keep-alive")
    results = {"machine": info, "corpus": [p.name for p in images], "rounds": args.rounds, "runs": []}
    runs = results["runs"]

    for n in levels:
        r = run_bench(bins / "prism-bench", "pipeline", images, n, args.rounds)
        row = summarize([x / 1000 for x in r["latencies_ms"]], r["wall_s"], r["uploads"])
        row.update(mode="pipeline", in_flight=n, cpu_ms_per_upload=round(1000 * r["cpu_s"] / r["uploads"], 1),
                   peak_rss_mb=round(r["peak_rss_bytes"] / 2**20, 1))
        runs.append(row)
        print(f"  pipeline {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s", flush=True)

    for n in levels:
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

    seaweed = None
    stores = ["local"] if args.skip_s3 else ["local", "s3"]
    if "s3" in stores:
        seaweed = Seaweed(logs)
    try:
        for store in stores:
            for n in levels:
                row = e2e_level(bins, logs, images, n, args.rounds, store, seaweed)
                row.update(mode=f"e2e-{store}", in_flight=n)
                runs.append(row)
                print(f"  e2e-{store} {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s, {row['calls_per_upload']} calls/upload", flush=True)
        split_rows = []
        for split in ("auto", "never", "always"):
            for n in (1, 4):
                row = e2e_level(bins, logs, images, n, args.rounds, "local", split=split)
                row.update(mode=f"split-{split}", in_flight=n)
                split_rows.append(row)
                print(f"  split {split} {n}: {row['median_ms']} ms median, {row['uploads_per_s']}/s, {row['calls_per_upload']} calls/upload", flush=True)
        results["split"] = split_rows
    finally:
        if seaweed:
            seaweed.stop()

    # Memory: one processor, 17-20 MP photos, 4 in flight.
    p = start_processor(bins, logs, "rss")
    try:
        r = run_bench(bins / "prism-bench", "processor", large_corpus(), 4, 3, ["--port", str(p.port)])
        results["large_photos_4_in_flight"] = {"images": [x.name for x in large_corpus()], "uploads": r["uploads"],
                                                "processor_peak_rss_mb": round(p.rss() / 2**20, 1)}
    finally:
        p.stop()

    def row(mode, n):
        return next(r for r in runs if r["mode"] == mode and r["in_flight"] == n)

    ratios = {}
    for n in levels:
        base = row("pipeline", n)
        for mode in ("processor", "e2e-local") + (("e2e-s3",) if "s3" in stores else ()):
            r = row(mode, n)
            ratios[f"{mode}@{n}"] = {"median_latency_x": round(r["median_ms"] / base["median_ms"], 2),
                                    "throughput_x": round(r["uploads_per_s"] / base["uploads_per_s"], 2)}
    results["ratios_vs_pipeline"] = ratios

    table(runs, "Results (default recipe: thumb, small, medium, large, blur)")
    table(results["split"], "Splitting an upload over processors (e2e, local store)")
    print("\nRatios to the in-process pipeline (latency: lower is better; throughput: higher is better)")
    for key, value in ratios.items():
        print(f"  {key:<16} latency {value['median_latency_x']}x   throughput {value['throughput_x']}x")
    e2e1 = row("e2e-local", 1)
    print("\nWhere the time goes (e2e-local, 1 in flight, mean ms)")
    for side in ("gateway", "processor"):
        for label, value in e2e1["stages_ms"][side].items():
            print(f"  {side:<9} {label:<30} {value:>8}")
    print(f"\nProcessor peak RSS, 17-20 MP photos, 4 in flight: {results['large_photos_4_in_flight']['processor_peak_rss_mb']} MB")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nJSON: {args.out}; logs: {logs}")


if __name__ == "__main__":
    main()
