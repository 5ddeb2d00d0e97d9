"""anycore (2 workers) against `uvicorn --workers 2` with wrk, alternating, in one run.

    .venv/bin/python bench/http_vs_uvicorn.py [--rounds 3] [--duration 10] [--connections 32,256]

Needs wrk (`apt-get install -y wrk`). Writes bench/results/<time>.md and prints the same
table: per app and connection count, the median over rounds of anycore/uvicorn ratios
for req/s, p50 and p99. Every process it starts is stopped, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent
VENV_BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def start_anycore(app: str) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    home = tempfile.mkdtemp(prefix="anycore-bench-")
    env = {**os.environ, "ANYCORE_HOME": home}
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "anycore"), "up", str(HERE / "apps" / app), "--listen", f"127.0.0.1:{port}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/", env


def start_uvicorn(app: str) -> tuple[subprocess.Popen[bytes], str, dict[str, str]]:
    port = free_port()
    proc = subprocess.Popen([str(VENV_BIN / "uvicorn"), "app:app", "--workers", "2", "--loop", "uvloop", "--http", "httptools",
                             "--log-level", "warning", "--no-access-log", "--port", str(port)],
                            cwd=HERE / "apps" / app, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    return proc, f"http://127.0.0.1:{port}/", dict(os.environ)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    lat = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p50": lat["50"], "p99": lat["99"], "non2xx": float(errors.group(1)) if errors else 0.0,
            "load": os.getloadavg()[0]}


def measure(kind: str, app: str, connections: int, duration: int) -> dict[str, float]:
    proc, url, _ = (start_anycore if kind == "anycore" else start_uvicorn)(app)
    try:
        wait_http(url)
        wrk(url, connections, 2)  # warm up
        return wrk(url, connections, duration)
    finally:
        stop(proc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", default="32,256")
    parser.add_argument("--apps", default="hello,cpu1ms")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is missing: apt-get install -y wrk")
    rows: list[dict[str, object]] = []
    for app in args.apps.split(","):
        for c in map(int, args.connections.split(",")):
            for r in range(args.rounds):
                order = ["anycore", "uvicorn"] if r % 2 == 0 else ["uvicorn", "anycore"]
                result = {kind: measure(kind, app, c, args.duration) for kind in order}
                rows.append({"app": app, "c": c, "round": r, **{f"{k}": v for k, v in result.items()}})
                a, u = result["anycore"], result["uvicorn"]
                print(f"{app} c={c} round {r}: anycore {a['rps']:.0f} req/s p99 {a['p99']:.2f} ms | "
                      f"uvicorn {u['rps']:.0f} req/s p99 {u['p99']:.2f} ms | ratio {a['rps'] / u['rps']:.2f}", flush=True)
    lines = ["| app | c | req/s ratio (median) | p50 ratio | p99 ratio | anycore req/s | uvicorn req/s |", "|---|---|---|---|---|---|---|"]
    for app in args.apps.split(","):
        for c in map(int, args.connections.split(",")):
            sel = [r for r in rows if r["app"] == app and r["c"] == c]
            ratio = lambda key: statistics.median(r["anycore"][key] / r["uvicorn"][key] for r in sel)  # type: ignore[index]  # noqa: E731
            lines.append(f"| {app} | {c} | {ratio('rps'):.2f}x | {ratio('p50'):.2f}x | {ratio('p99'):.2f}x | "
                         f"{statistics.median(r['anycore']['rps'] for r in sel):.0f} | "  # type: ignore[index]
                         f"{statistics.median(r['uvicorn']['rps'] for r in sel):.0f} |")  # type: ignore[index]
    table = "\n".join(lines)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    report = (f"# anycore vs uvicorn --workers 2 ({stamp}, {os.cpu_count()} cores, wrk -t1, {args.duration}s x {args.rounds} rounds)\n\n"
              f"{table}\n\nRaw rounds:\n\n```json\n{json.dumps(rows, indent=1)}\n```\n")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{stamp}.md").write_text(report)
    (HERE / "RESULTS.md").write_text(report)
    print(table)


if __name__ == "__main__":
    main()
