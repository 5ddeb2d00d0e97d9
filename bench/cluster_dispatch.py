"""What a request pays to run on another node: a spilled request vs the same request served locally.

Two anycore nodes join one nats-server (token, JetStream, a temporary directory), both
serving a bare ASGI app with one worker of one slot. Node A's only slot is held by a long
request, so every GET sent to A spills over to B (claim, then the request and response as
frames over NATS); the same GET sent straight to B is served locally by B. Sequential
requests (one at a time), alternating A and B in batches; reported: median and p90 latency
of each path and their ratio, and that every spilled answer names B in `anycore-node`.

    .venv/bin/python bench/cluster_dispatch.py [--requests 400] [--batch 50]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import httpx

from procs import free_port, stop_all, wait

APP = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["query_string"] == b"hold":
        await asyncio.sleep(600)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--batch", type=int, default=50)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anycore-bench-cluster-"))
    token = secrets.token_hex(16)
    port = free_port()
    (root / "nats.conf").write_text(f'host: 127.0.0.1\nport: {port}\nauthorization {{ token: "{token}" }}\n'
                                    f'jetstream {{ store_dir: "{root / "js"}" }}\n')
    service = root / "svc"
    service.mkdir()
    (service / "app.py").write_text(textwrap.dedent(APP))
    (service / "anycore.toml").write_text('name = "svc"\nworkers = 1\nslots = 1\n')
    procs: list[subprocess.Popen[bytes]] = []
    nats_bin = Path(sys.executable).parent / "nats-server"
    procs.append(subprocess.Popen([str(nats_bin), "-c", str(root / "nats.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    try:
        nodes = []
        for i in range(2):
            home = root / f"home{i}"
            env = {**os.environ, "ANYCORE_HOME": str(home), "ANYCORE_TOKEN": token, "ANYCORE_USER": "root"}
            out = open(root / f"node{i}.out", "wb")
            procs.append(subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", str(service), "--listen",
                                           "127.0.0.1:0", "--nats", f"nats://127.0.0.1:{port}"],
                                          env=env, stdout=out, stderr=subprocess.STDOUT))
            wait(lambda h=home: (h / "node.json").exists() and "service svc" in (root / f"node{i}.out").read_text(),
                 60, f"node {i}")
            nodes.append(json.loads((home / "node.json").read_text()))
        a, b = nodes
        wait(lambda: httpx.get(a["gateway"] + "/").status_code == 200, 10, "a to serve")
        # Hold A's only slot; wait until B's heartbeat has been seen by A (a spill succeeds).
        def hold() -> None:
            try:
                httpx.get(a["gateway"] + "/?hold", timeout=700)
            except httpx.HTTPError:  # cut when the nodes stop
                pass

        threading.Thread(target=hold, daemon=True).start()

        def inflight(i: int) -> int:
            env = {**os.environ, "ANYCORE_HOME": str(root / f"home{i}"), "ANYCORE_TOKEN": token, "ANYCORE_USER": "root"}
            ps = subprocess.run([sys.executable, "-m", "anycore.cli.main", "ps", "--json"], env=env, capture_output=True)
            return int(json.loads(ps.stdout)["services"][0]["inflight"])

        wait(lambda: inflight(0) == 1, 30, "the hold request to take a's slot")
        wait(lambda: httpx.get(a["gateway"] + "/", timeout=10).headers["anycore-node"] == b["node_id"], 30,
             "a request to a to run on b")
        spilled: list[float] = []
        local: list[float] = []
        with httpx.Client(timeout=10) as client:
            for _ in range(args.requests // args.batch):
                for url, into, expect in ((a["gateway"], spilled, b["node_id"]), (b["gateway"], local, b["node_id"])):
                    for _ in range(args.batch):
                        start = time.perf_counter()
                        response = client.get(url + "/")
                        into.append(time.perf_counter() - start)
                        assert response.status_code == 200 and response.headers["anycore-node"] == expect, (response.status_code, response.headers)
        def p(values: list[float], q: float) -> float:
            return sorted(values)[int(q * (len(values) - 1))] * 1000
        print(f"{len(spilled)} spilled (A -> B over NATS) vs {len(local)} local (B), sequential, one slot each")
        print(f"  local   p50 {p(local, 0.5):6.2f} ms  p90 {p(local, 0.9):6.2f} ms")
        print(f"  spilled p50 {p(spilled, 0.5):6.2f} ms  p90 {p(spilled, 0.9):6.2f} ms")
        print(f"  spilled/local p50 ratio {statistics.median(spilled) / statistics.median(local):.2f}x, "
              f"added p50 {p(spilled, 0.5) - p(local, 0.5):.2f} ms")
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
