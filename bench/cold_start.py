"""Cold start from zero: anycore (fork from a warm zygote) vs a fresh uvicorn process.

    .venv/bin/python bench/cold_start.py [--rounds 10]

anycore: a hello service with min_workers = 0 and keep_warm = 1; wait until `anycore ps`
shows no worker, then time one request (it is queued, wakes the scaler, waits for the
fork) and compare it with warm requests right after. uvicorn: time from starting the
process until its first answer (what "scale from zero" costs when a new process must
start). Ray Serve from zero replicas is not measured: Ray is not installed here.
Writes bench/results/cold-<time>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from common import free_port

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent


def timed_get(url: str) -> float:
    t0 = time.perf_counter()
    urllib.request.urlopen(url, timeout=30).read()
    return time.perf_counter() - t0


def workers(env: dict[str, str]) -> int:
    out = subprocess.run([str(BIN / "anycore"), "ps", "--json"], env=env, capture_output=True, text=True, check=True).stdout
    return len(json.loads(out)["services"][0]["live"]["workers"])


def anycore_rounds(rounds: int) -> list[tuple[float, float]]:
    work = Path(tempfile.mkdtemp(prefix="cold-"))
    (work / "app.py").write_text((HERE / "apps" / "hello" / "app.py").read_text())
    (work / "anycore.toml").write_text('name = "cold"\nmin_workers = 0\nmax_workers = 2\nkeep_warm = 1\nscale_down_delay = 1\n')
    port = free_port()
    env = {**os.environ, "ANYCORE_HOME": str(work / "home")}
    node = subprocess.Popen([str(BIN / "anycore"), "up", str(work), "--listen", f"127.0.0.1:{port}"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    results = []
    try:
        deadline = time.monotonic() + 30
        while not (work / "home" / "node.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        for _ in range(rounds):
            while workers(env):
                time.sleep(0.2)
            time.sleep(0.2)  # spaced from the scale-down, so the fork does not race a drain
            cold = timed_get(url)
            warm = statistics.median(timed_get(url) for _ in range(5))
            results.append((cold, warm))
            print(f"anycore: cold {cold * 1000:.1f} ms, warm {warm * 1000:.1f} ms, extra {(cold - warm) * 1000:.1f} ms", flush=True)
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(30)
    return results


def uvicorn_rounds(rounds: int) -> list[float]:
    results = []
    for _ in range(rounds):
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        t0 = time.perf_counter()
        proc = subprocess.Popen([str(BIN / "uvicorn"), "app:app", "--port", str(port), "--log-level", "warning"],
                                cwd=HERE / "apps" / "hello", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            while True:
                try:
                    urllib.request.urlopen(url, timeout=1).read()
                    break
                except OSError:
                    time.sleep(0.002)
            results.append(time.perf_counter() - t0)
            print(f"uvicorn: first answer after {results[-1] * 1000:.1f} ms", flush=True)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(20)
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    anycore = anycore_rounds(args.rounds)
    uvicorn = uvicorn_rounds(args.rounds)
    extra = statistics.median(c - w for c, w in anycore)
    cold = statistics.median(c for c, _ in anycore)
    table = ("| system | cold request (median) | extra over warm (median) |\n|---|---|---|\n"
             f"| anycore (fork from zygote) | {cold * 1000:.1f} ms | {extra * 1000:.1f} ms |\n"
             f"| uvicorn (new process) | {statistics.median(uvicorn) * 1000:.1f} ms | - |\n\n"
             f"anycore cold / uvicorn start: {cold / statistics.median(uvicorn):.2f}x\n")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"cold-{stamp}.md").write_text(f"# Cold start from zero ({stamp})\n\n{table}")
    print(table)


if __name__ == "__main__":
    main()
