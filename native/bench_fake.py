"""Gateway cost with fake workers: req/s and the gateway's CPU per request under wrk.

    /work/main/.venv/bin/python native/bench_fake.py [--workers 2] [--slots 64] [--seconds 5] [-c 32 -c 256]

Starts ``native/target/release/anycore-gateway`` behind ``tests/e2e/native_fake.py``'s
stand-in node, with fake Python workers answering ``/hello`` in one frame, and runs
``wrk -t1`` against it. CPU: utime+stime of the gateway process (``/proc/<pid>/stat``)
over the run, divided by the requests wrk counted. The workers' CPU is reported apart.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from native_fake import FakeNode  # noqa: E402


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--slots", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("-c", type=int, action="append")
    args = p.parse_args()
    node = FakeNode(threads=args.threads)
    port = node.listen()
    node.service()
    for w in range(args.workers):
        node.add_worker(w + 1, slots=args.slots)
    time.sleep(1.0)
    url = f"http://127.0.0.1:{port}/hello"
    subprocess.run(["wrk", "-t1", "-c8", "-d1s", url], capture_output=True)  # warm up
    print(f"gateway threads={node.started.threads}, workers={args.workers}x{args.slots} slots")
    for c in args.c or [32, 256]:
        g0 = cpu(node.proc.pid)
        w0 = sum(cpu(w.pid) for w in node.workers.values())
        out = subprocess.run(["wrk", "-t1", f"-c{c}", f"-d{args.seconds}s", "--latency", url],
                             capture_output=True, text=True).stdout
        g1 = cpu(node.proc.pid)
        w1 = sum(cpu(w.pid) for w in node.workers.values())
        total = int(re.search(r"(\d+) requests in", out).group(1))
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        p99 = re.search(r"99%\s+(\S+)", out).group(1)
        errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        print(f"c={c}: {rps:.0f} req/s, p99 {p99}, gateway {(g1 - g0) / total * 1e6:.1f} core-us/req, "
              f"workers {(w1 - w0) / total * 1e6:.1f} core-us/req, non-2xx {errors.group(1) if errors else 0}")
    node.close()


if __name__ == "__main__":
    main()
