"""Replacing code under load: anycore deploy vs gunicorn HUP vs uvicorn --workers 2 SIGHUP.

    .venv/bin/python bench/swap_vs_peers.py [--rounds 3] [--connections 16]

For each system, in one run: serve a hello app (version A) with 2 workers, put it under
`wrk -c16` load, replace the code with version B, and measure (1) the errors wrk saw
(socket errors + non-2xx) and (2) the time from the start of the swap (the `anycore
deploy` command, CLI start-up and upload included; the HUP signal for the others) until a
probe client sees version B on 20 requests in a row (counted from the first of them). Needs wrk and gunicorn (`pip install gunicorn`).
Ray Serve is not measured here: it is not installed in this environment (see
MEASURED.md for its figures on these machines). Writes bench/results/swap-<time>.md.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
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
APP = """
VERSION = "{v}"

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


def get(url: str) -> str:
    try:
        return urllib.request.urlopen(url, timeout=2).read().decode()
    except OSError:
        return ""


def wait_version(url: str, version: str, timeout: float = 60.0, streak: int = 20) -> float:
    """Seconds until the first of `streak` consecutive probes that all see `version`."""
    t0 = time.monotonic()
    seen, first = 0, 0.0
    while time.monotonic() - t0 < timeout:
        sent = time.monotonic()
        if get(url) == version:
            first = first if seen else sent
            seen += 1
        else:
            seen = 0
        if seen >= streak:
            return first - t0
        time.sleep(0.005)
    raise RuntimeError(f"{url} never served {version!r}")


def parse_wrk(out: str) -> int:
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out.split("Socket errors:")[1])) if "Socket errors:" in out else 0
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return errors + (int(non2xx.group(1)) if non2xx else 0)


def write_app(directory: Path, version: str) -> None:
    (directory / "app.py").write_text(APP.format(v=version))


def run(system: str, connections: int) -> tuple[int, float]:
    work = Path(tempfile.mkdtemp(prefix=f"swap-{system}-"))
    write_app(work, "A")
    (work / "anycore.toml").write_text('name = "swap"\nworkers = 2\n')
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "ANYCORE_HOME": str(work / "home")}
    if system == "anycore":
        cmd = [str(BIN / "anycore"), "up", str(work), "--listen", f"127.0.0.1:{port}"]
    elif system == "gunicorn":
        cmd = [str(BIN / "gunicorn"), "-k", "uvicorn.workers.UvicornWorker", "-w", "2", "-b", f"127.0.0.1:{port}", "app:app"]
    else:
        cmd = [str(BIN / "uvicorn"), "app:app", "--workers", "2", "--port", str(port), "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_version(url, "A", streak=3)
        load = subprocess.Popen(["wrk", "-t1", f"-c{connections}", "-d6s", url], stdout=subprocess.PIPE, text=True)
        time.sleep(2)
        write_app(work, "B")
        deploy = None
        if system == "anycore":
            deploy = subprocess.Popen([str(BIN / "anycore"), "deploy", str(work)], env=env, stdout=subprocess.DEVNULL)
        else:
            os.kill(server.pid, signal.SIGHUP)
        swap = wait_version(url, "B")
        if deploy is not None and deploy.wait(60) != 0:
            raise RuntimeError("anycore deploy failed")
        out, _ = load.communicate(timeout=60)
        return parse_wrk(out), swap
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    systems = ["anycore", "gunicorn", "uvicorn"]
    results: dict[str, list[tuple[int, float]]] = {s: [] for s in systems}
    for r in range(args.rounds):
        for system in systems[r % 3:] + systems[: r % 3]:
            errors, swap = run(system, args.connections)
            results[system].append((errors, swap))
            print(f"round {r} {system}: {errors} errors, new code everywhere after {swap:.3f}s", flush=True)
    lines = ["| system | errors per swap (median, max) | time to 100 % new code (median) |", "|---|---|---|"]
    for system in systems:
        errs = [e for e, _ in results[system]]
        lines.append(f"| {system} | {statistics.median(errs):.0f}, {max(errs)} | {statistics.median(s for _, s in results[system]):.3f} s |")
    table = "\n".join(lines)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"swap-{stamp}.md").write_text(f"# Code swap under wrk -c{args.connections} ({stamp})\n\n{table}\n\n{results}\n")
    print(table)


if __name__ == "__main__":
    main()
