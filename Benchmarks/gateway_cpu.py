#!/usr/bin/env python3
"""The gateway's CPU per upload, alone, optionally with a perf profile: what docs/performance.md's
gateway steps were measured with.

  python3 Benchmarks/gateway_cpu.py --bin-dir .build/release                  # local store on /tmp
  python3 Benchmarks/gateway_cpu.py --bin-dir .build/release --data-root /dev/shm   # on tmpfs
  python3 Benchmarks/gateway_cpu.py --bin-dir .build/release --perf /tmp/gw.data    # then:
  perf report -i /tmp/gw.data --children --sort sym -g none | head -80

A gateway and two processors (as `make bench` starts them) get the corpus `--rounds` times at
`--in-flight` uploads at once; the gateway's and processors' user + system CPU over the uploads
is divided by their number. Where the local store writes matters: a file system's own work
(creating files, copying into the page cache) is the gateway's kernel CPU, so compare on the
same file system, or on tmpfs to see the gateway's own share. Alternate the binaries you compare
and repeat: one run of 32 uploads varies by 1-2 ms per upload on a shared machine.
"""
import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as bench  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin-dir", help="prism-gateway and prism-processor (default: the release build)")
    parser.add_argument("--rounds", type=int, default=2, help="passes over the corpus")
    parser.add_argument("--in-flight", type=int, default=1)
    parser.add_argument("--split", default="auto")
    parser.add_argument("--data-root", help="where the local store's directory is made (default: the system's temp dir)")
    parser.add_argument("--perf", metavar="FILE", help="also record `perf record -g` of the gateway into FILE")
    parser.add_argument("--local-fsync", choices=["true", "false"], help="the gateway's --local-fsync (default: the gateway's, true)")
    args = parser.parse_args()
    if args.data_root:
        tempfile.tempdir = args.data_root
    bins = bench.bin_dir(args.bin_dir)
    logs = Path(tempfile.mkdtemp(prefix="prism-gateway-cpu-"))
    images = bench.corpus()
    flags = ["--local-fsync", args.local_fsync] if args.local_fsync else []
    with bench.prism_stack(bins, logs, "gateway-cpu", args.in_flight, split=args.split, gateway_flags=flags) as (url, _data, gateway, processors):
        bench.http_load(url, images[:2], 1, 1)  # warm-up beyond http_load's own
        perf = None
        if args.perf:
            perf = subprocess.Popen(["perf", "record", "-F", "999", "-g", "-o", args.perf, "-p", str(gateway.p.pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        before = [gateway.cpu()] + [p.cpu() for p in processors]
        latencies, wall, _ = bench.http_load(url, images, args.in_flight, args.rounds)
        after = [gateway.cpu()] + [p.cpu() for p in processors]
        if perf:
            perf.send_signal(signal.SIGINT)
            perf.wait()
    n = len(latencies)
    row = bench.summarize(latencies, wall, n)
    gateway_ms = 1000 * (after[0] - before[0]) / n
    processors_ms = 1000 * (sum(after[1:]) - sum(before[1:])) / n
    print(f"{n} uploads, median {row['median_ms']} ms, {row['uploads_per_s']}/s; CPU per upload: gateway {gateway_ms:.1f} ms,"
          f" processors {processors_ms:.0f} ms; load {os.getloadavg()[0]:.1f}; store under {tempfile.gettempdir()},"
          f" local fsync {args.local_fsync or 'default (true)'}")


if __name__ == "__main__":
    main()
