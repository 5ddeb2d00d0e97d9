"""What a call between services costs: ``anycore.call`` vs an in-process function call vs
an httpx call through the gateway's TCP port, and calls/s between two services on one node.

One node (embedded NATS, a temporary $ANYCORE_HOME) serves two services: ``front`` (the
caller) and ``back`` (a bare ASGI app answering ``hello``), one worker each. Every figure
is measured inside front's worker, so it is what the caller's code waits:

- ``direct``: ``await back_function()``, the same handler called in-process (the floor);
- ``call``: ``await anycore.call("back", "GET", "/hello")`` (frames to the node, placed on
  back's worker, answer back);
- ``httpx``: ``await client.get(gateway + "/back/hello")`` with one keep-alive
  ``httpx.AsyncClient`` — what a service does today to reach another one;
- ``tcp``: the same GET over a hand-written HTTP/1.1 keep-alive client on asyncio streams
  (one connection per lane): the TCP hop through the gateway without httpx's own cost.

Sequential (one at a time) in batches, the three kinds alternating (ABAB), then calls/s
with ``--concurrency`` calls in flight (call, tcp and httpx). Reported: median µs per op per
batch, the medians over batches, and the ratios call/httpx and call - direct.

    .venv/bin/python bench/calls.py [--rounds 6] [--batch 300] [--concurrency 16]
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
import textwrap
from pathlib import Path

import httpx

from procs import wait

FRONT = r"""
import asyncio, time
import httpx
import anycore

CLIENT = None


async def hello_in_process():
    return b"hello"


class RawHttp:
    # The leanest HTTP/1.1 keep-alive client over asyncio streams: the TCP hop without the cost of httpx.

    def __init__(self):
        self.reader = self.writer = None

    async def get(self, url, path):
        try:
            return await self._get(url, path)
        except (asyncio.IncompleteReadError, ConnectionError):  # the gateway closed an idle keep-alive connection
            self.writer = None
            return await self._get(url, path)

    async def _get(self, url, path):
        if self.writer is None:
            host, port = url.removeprefix("http://").split(":")
            self.reader, self.writer = await asyncio.open_connection(host, int(port))
        self.writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nhost: bench\r\n\r\n")
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
        body = await self.reader.readexactly(length)
        return head[9:12], body


RAW = {}


async def one(kind, url, lane=0):
    if kind == "direct":
        await hello_in_process()
    elif kind == "call":
        r = await anycore.call("back", "GET", "/hello")
        assert r.status_code == 200 and r.content == b"hello", r.status_code
    elif kind == "tcp":
        raw = RAW.get(lane) or RAW.setdefault(lane, RawHttp())
        status, body = await raw.get(url, "/back/hello")
        assert status == b"200" and body == b"hello", status
    else:
        r = await CLIENT.get(url + "/back/hello")
        assert r.status_code == 200 and r.content == b"hello", r.status_code


async def app(scope, receive, send):
    global CLIENT
    if scope["type"] != "http":
        return
    q = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
    kind, n, c, url = q["kind"], int(q["n"]), int(q.get("c", "1")), q.get("url", "")
    if CLIENT is None:
        CLIENT = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=64, max_connections=64), timeout=30)
    times = []
    if c == 1:
        for _ in range(n):
            start = time.perf_counter()
            await one(kind, url)
            times.append(time.perf_counter() - start)
        result = {"median_us": sorted(times)[len(times) // 2] * 1e6, "p90_us": sorted(times)[int(len(times) * 0.9)] * 1e6}
    else:
        async def loop(lane):
            for _ in range(n // c):
                await one(kind, url, lane)
        start = time.perf_counter()
        await asyncio.gather(*(loop(lane) for lane in range(c)))
        result = {"per_s": (n // c) * c / (time.perf_counter() - start)}
    body = __import__("json").dumps(result).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""

BACK = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--batch", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="anycore-bench-calls-"))
    for name, code, routes in (("front", FRONT, "/front"), ("back", BACK, "/back")):
        (root / name).mkdir()
        (root / name / "app.py").write_text(textwrap.dedent(code))
        (root / name / "anycore.toml").write_text(f'name = "{name}"\nroutes = ["{routes}"]\nworkers = 1\nslots = 64\n')
    env = {**os.environ, "ANYCORE_HOME": str(root / "home"), "ANYCORE_USER": "root"}
    out = open(root / "node.out", "wb")
    node = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", str(root / "front"), str(root / "back"),
                             "--listen", "127.0.0.1:0"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait(lambda: (root / "home" / "node.json").exists() and (root / "node.out").read_text().count("service ") >= 2,
             90, "the node and its two services")
        gateway = json.loads((root / "home" / "node.json").read_text())["gateway"]
        with httpx.Client(timeout=120) as client:
            def run(kind: str, n: int, c: int = 1) -> dict[str, float]:
                r = client.get(f"{gateway}/front/?kind={kind}&n={n}&c={c}&url={gateway}")
                assert r.status_code == 200, r.text
                return r.json()  # type: ignore[no-any-return]

            kinds = ["direct", "call", "tcp", "httpx"]
            for kind in kinds:
                run(kind, 50)  # warm up: imports, keep-alive connections
                run(kind, 64, args.concurrency)
            seq: dict[str, list[float]] = {k: [] for k in kinds}
            par: dict[str, list[float]] = {k: [] for k in kinds[1:]}
            for i in range(args.rounds):
                order = kinds if i % 2 == 0 else kinds[::-1]
                for kind in order:
                    seq[kind].append(run(kind, args.batch)["median_us"])
                for kind in order:
                    if kind != "direct":
                        par[kind].append(run(kind, args.batch * 4, args.concurrency)["per_s"])
        med = {k: statistics.median(v) for k, v in seq.items()}
        print(f"one node, two services, one worker each; {args.rounds} rounds x {args.batch} sequential ops, alternating")
        for kind in kinds:
            print(f"  {kind:6s} median {med[kind]:8.1f} µs per op   (batches: {', '.join(f'{v:.0f}' for v in seq[kind])})")
        print(f"  call / httpx through the gateway's TCP port: {med['call'] / med['httpx']:.2f}x "
              f"(per round: {', '.join(f'{c / h:.2f}' for c, h in zip(seq['call'], seq['httpx']))})")
        print(f"  call / raw HTTP/1.1 keep-alive through the gateway's TCP port: {med['call'] / med['tcp']:.2f}x "
              f"(per round: {', '.join(f'{c / h:.2f}' for c, h in zip(seq['call'], seq['tcp']))})")
        print(f"  call - direct in-process: {med['call'] - med['direct']:.1f} µs")
        for kind in kinds[1:]:
            print(f"  {kind:6s} {statistics.median(par[kind]):8.0f} calls/s with {args.concurrency} in flight "
                  f"(rounds: {', '.join(f'{v:.0f}' for v in par[kind])})")
        for peer in ("tcp", "httpx"):
            print(f"  calls/s call / {peer}: {statistics.median(par['call']) / statistics.median(par[peer]):.2f}x")
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()


if __name__ == "__main__":
    main()
