"""Durable jobs through JetStream: jobs/s on one node and on two, against plain requests.

A nats-server (token, JetStream, a temporary directory) and anycore nodes joined to it, each
serving one ASGI service (one worker of ``--slots`` slots, default 1) whose ``/enqueue``
calls ``anycore.enqueue`` N times (50 at a time) and whose ``/job`` handler burns
``--cpu-ms`` of CPU (default 5) and appends one line to a file in its data dir. Measured, in one run and in this order:

1. peer: the same N ``POST /job`` sent as HTTP requests by 8 client threads to node A;
2. one node: N jobs enqueued on A, until every one has run (A alone);
3. two nodes: node B joins; N more jobs enqueued on A, until every one has run on A or B.

Reported: enqueue/s (until the last ``Enqueued``: every job stored), end-to-end jobs/s
(first enqueue to last run) and the ratio to the peer's requests/s, and each node's share.

    .venv/bin/python bench/jobs.py [--jobs 1000] [--cpu-ms 5] [--slots 1]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from procs import free_port, stop_all

APP = r"""
import asyncio
import json
import os

import time

import anycore

LOG = os.path.join(os.environ["ANYCORE_DATA_DIR"], "runs.log")


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    out = b"ok"
    if scope["path"] == "/enqueue":
        n = json.loads(body)["n"]
        path = "/job?" + scope["query_string"].decode()
        for start in range(0, n, 50):
            await asyncio.gather(*(anycore.enqueue("work", "POST", path, json={"i": i})
                                   for i in range(start, min(n, start + 50))))
    elif scope["path"] == "/job":
        cpu = float(scope["query_string"].decode().partition("cpu=")[2] or 0) / 1000
        end = time.process_time() + cpu
        while time.process_time() < end:  # the job's work: CPU, so a second node's core counts
            pass
        fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, b"run\n")
        os.close(fd)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": out})
"""


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.02)


def count(home: Path) -> int:
    found = list(home.rglob("runs.log"))
    return sum(p.read_bytes().count(b"\n") for p in found)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--cpu-ms", type=float, default=5.0, help="CPU each job burns (0: a bare job)")
    parser.add_argument("--slots", type=int, default=1, help="slots of the service's one worker per node")
    args = parser.parse_args()
    n = args.jobs
    root = Path(tempfile.mkdtemp(prefix="anycore-bench-jobs-"))
    token = secrets.token_hex(16)
    port = free_port()
    (root / "nats.conf").write_text(f'host: 127.0.0.1\nport: {port}\nauthorization {{ token: "{token}" }}\n'
                                    f'jetstream {{ store_dir: "{root / "js"}" }}\n')
    service = root / "work"
    service.mkdir()
    (service / "app.py").write_text(textwrap.dedent(APP))
    (service / "anycore.toml").write_text(f'name = "work"\nworkers = 1\nslots = {args.slots}\n')
    query = f"?cpu={args.cpu_ms}"
    procs: list[subprocess.Popen[bytes]] = []
    nats_bin = Path(sys.executable).parent / "nats-server"
    procs.append(subprocess.Popen([str(nats_bin), "-c", str(root / "nats.conf")], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL))
    homes: list[Path] = []

    def start_node(i: int) -> dict:
        home = root / f"home{i}"
        homes.append(home)
        env = {**os.environ, "ANYCORE_HOME": str(home), "ANYCORE_TOKEN": token, "ANYCORE_USER": "root"}
        out = open(root / f"node{i}.out", "wb")
        procs.append(subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", str(service), "--listen",
                                       "127.0.0.1:0", "--nats", f"nats://127.0.0.1:{port}"],
                                      env=env, stdout=out, stderr=subprocess.STDOUT))
        wait(lambda: (home / "node.json").exists() and "service work" in (root / f"node{i}.out").read_text(), 60,
             f"node {i}")
        return json.loads((home / "node.json").read_text())

    def total() -> int:
        return sum(count(h) for h in homes)

    def jobs_run(gateway: str, label: str, peer: float) -> None:
        before = [count(h) for h in homes]
        start = time.perf_counter()
        reply = httpx.post(gateway + "/enqueue" + query, json={"n": n}, timeout=300)
        stored = time.perf_counter() - start
        assert reply.status_code == 200, reply.text
        wait(lambda: total() - sum(before) >= n, 300, f"{label}: every job to run")
        elapsed = time.perf_counter() - start
        shares = [count(h) - b for h, b in zip(homes, before)]
        print(f"{label}: {n} jobs stored in {stored:.2f} s ({n / stored:.0f} enqueue/s); all run after "
              f"{elapsed:.2f} s: {n / elapsed:.0f} jobs/s = {n / elapsed / peer:.2f}x the peer; per node {shares}")

    try:
        a = start_node(0)
        wait(lambda: httpx.get(a["gateway"] + "/").status_code == 200, 10, "a to serve")
        before = total()
        start = time.perf_counter()
        with ThreadPoolExecutor(8) as pool, httpx.Client(timeout=30, limits=httpx.Limits(max_connections=8)) as client:
            statuses = list(pool.map(lambda i: client.post(a["gateway"] + "/job" + query, json={"i": i}).status_code, range(n)))
        peer = n / (time.perf_counter() - start)
        assert statuses.count(200) == n and total() - before == n
        print(f"jobs of {args.cpu_ms} ms CPU, one worker of {args.slots} slot(s) per node")
        print(f"peer: {n} POST /job over HTTP, 8 client threads, node A: {peer:.0f} req/s")
        jobs_run(a["gateway"], "one node", peer)
        start_node(1)
        jobs_run(a["gateway"], "two nodes", peer)
    finally:
        stop_all(procs)


if __name__ == "__main__":
    main()
