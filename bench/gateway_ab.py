"""A/B of one anycore system between two source trees, alternating: did a change make it slower?

    python bench/gateway_ab.py A_SRC B_SRC [--rounds 4] [--seconds 4] [--c 32] [--gateway python]

Starts `anycore up bench/apps/hello` (2 workers; `--gateway` is passed only when not python,
so a tree from before the option exists works) with PYTHONPATH=<src> for each tree in
turn (ABAB...), runs `wrk -t1 -cC` after a 1 s warm-up, and prints per run req/s and CPU
core-µs per request of the node process alone and of all its processes (utime+stime from
/proc, as the suite counts them), then the medians per tree. Uses this interpreter (its
site-packages must hold anycore's dependencies). Used for issue 15: the worker's data
socket must not slow the Python gateway down.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import wrk  # noqa: E402
from procs import cpu_seconds, free_port, stop_tree, tree  # noqa: E402
from systems import http_get  # noqa: E402

HELLO = Path(__file__).resolve().parent / "apps" / "hello"


def one(src: str, seconds: float, c: int, gateway: str) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="gateway-ab-"))
    shutil.copytree(HELLO, work / "app")
    (work / "app" / "anycore.toml").write_text('name = "bench"\nworkers = 2\n')
    port = free_port()
    # $ANYCORE_GATEWAY too: a tree whose default is native runs the Python gateway when asked.
    env = {**os.environ, "PYTHONPATH": src, "ANYCORE_HOME": str(work / "home"), "ANYCORE_USER": "root",
           "ANYCORE_GATEWAY": gateway}
    log = open(work / "node.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", str(work / "app"), "--listen",
                             f"127.0.0.1:{port}", *(["--gateway", gateway] if gateway != "python" else [])], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 60
        while http_get(url, 2)[0] != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((work / "node.log").read_text()[-2000:])
            time.sleep(0.1)
        wrk(url, c, 1)
        procs = tree(proc.pid)
        node_before, all_before = procs[proc.pid].cpu_s, cpu_seconds(procs)
        m = wrk(url, c, seconds)
        after = tree(proc.pid)
        n = m["requests"]
        return {"rps": m["rps"], "node_us": (after[proc.pid].cpu_s - node_before) * 1e6 / n,
                "all_us": (cpu_seconds(after) - all_before) * 1e6 / n}
    finally:
        stop_tree(proc)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--c", type=int, default=32)
    parser.add_argument("--gateway", default="python")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    for r in range(args.rounds):
        for label in ("A", "B") if r % 2 == 0 else ("B", "A"):
            m = one(args.a if label == "A" else args.b, args.seconds, args.c, args.gateway)
            results[label].append(m)
            print(f"round {r} {label}: {m['rps']:.0f} req/s, node {m['node_us']:.1f} µs/req, all {m['all_us']:.1f} µs/req "
                  f"(load {os.getloadavg()[0]:.1f})", flush=True)
    for label, rows in results.items():
        med = {k: statistics.median(row[k] for row in rows) for k in ("rps", "node_us", "all_us")}
        print(f"median {label} ({args.a if label == 'A' else args.b}): {med['rps']:.0f} req/s, node {med['node_us']:.1f} "
              f"µs/req, all {med['all_us']:.1f} µs/req")


if __name__ == "__main__":
    main()
