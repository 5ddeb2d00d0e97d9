"""WebSockets: echo messages/s and the swap pause, anycore against uvicorn, in one run.

    .venv/bin/python bench/ws_sessions.py [--duration 8] [--connections 32] [--window 8] [--rounds 2]

1. Echo throughput. The same load (N connections, each keeping `window` 64-byte text
   messages in flight, for `duration` seconds; the load runs in a separate process) against:
   an anycore echo `Session` (2 workers), an anycore plain ASGI echo app (2 workers), and
   `uvicorn --workers 2 --ws websockets` with the same ASGI echo app. Rounds alternate
   systems (ABCABC) so machine noise hits all of them.
2. Swap pause. 50 anycore echo Sessions each send a message every 20 ms and time the echo;
   5 deploys happen meanwhile. Reported: baseline p50/p99 round trip, the worst round trip
   during the deploys (the pause a client sees), disconnects. For uvicorn, the same clients
   through a `SIGHUP` reload: how many connections are dropped (uvicorn cannot keep them).

Needs uvicorn and websockets (installed with anycore's test extras). Writes
bench/results/ws-<time>.md. Loopback only; every process it starts is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import websockets

from common import free_port

HERE = Path(__file__).parent
BIN = Path(sys.executable).parent
ASGI_ECHO = """
async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    elif scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
"""
SESSION_ECHO = ASGI_ECHO + """
from anycore import Session

VERSION = "{version}"

class Echo(Session):
    async def on_message(self, message):
        await self.send(message)
"""


def write_service(root: Path, name: str, code: str, sessions: bool) -> Path:
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(code)
    config = 'name = "echo"\nworkers = 2\n'
    if sessions:
        config += '[sessions]\n"/session" = "app:Echo"\n'
    (directory / "anycore.toml").write_text(config)
    return directory


class Anycore:
    def __init__(self, directory: Path, home: Path) -> None:
        self.home = home
        self.env = {**os.environ, "ANYCORE_HOME": str(home)}
        self.port = free_port()
        self.proc = subprocess.Popen([str(BIN / "anycore"), "up", str(directory), "--listen", f"127.0.0.1:{self.port}"],
                                     env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.port)

    def deploy(self, directory: Path) -> None:
        subprocess.run([str(BIN / "anycore"), "deploy", str(directory)], env=self.env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Uvicorn:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([str(BIN / "uvicorn"), "app:app", "--workers", "2", "--ws", "websockets", "--port",
                                      str(self.port), "--log-level", "warning", "--no-access-log"],
                                     cwd=directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_http(self.port)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_http(port: int, timeout: float = 60.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1).read()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing answered on port {port} within {timeout}s")


# -- 1. echo throughput (the load runs in its own process) -------------------------------------
def _echo_load(url: str, connections: int, window: int, duration: float, out: "multiprocessing.Queue[int]") -> None:
    async def one(ws: websockets.ClientConnection, stop: float) -> int:
        done = 0
        payload = "x" * 64
        for _ in range(window):
            await ws.send(payload)
        while time.monotonic() < stop:
            await ws.recv()
            done += 1
            await ws.send(payload)
        return done

    async def main() -> int:
        sockets = [await websockets.connect(url, compression=None) for _ in range(connections)]
        stop = time.monotonic() + duration
        counts = await asyncio.gather(*(one(ws, stop) for ws in sockets))
        for ws in sockets:
            await ws.close()
        return sum(counts)

    out.put(asyncio.run(main()))


def echo_rate(url: str, connections: int, window: int, duration: float) -> float:
    queue: multiprocessing.Queue[int] = multiprocessing.Queue()
    proc = multiprocessing.Process(target=_echo_load, args=(url, connections, window, duration, queue))
    proc.start()
    count = queue.get(timeout=duration + 120)
    proc.join(30)
    return count / duration


# -- 2. swap pause ---------------------------------------------------------------------------------
async def timed_clients(url: str, clients: int, until: asyncio.Event) -> tuple[list[float], list[tuple[float, float]], int]:
    """Each client sends every 20 ms and times the echo. Returns the RTTs, (time, rtt) pairs and disconnects."""
    rtts: list[float] = []
    timeline: list[tuple[float, float]] = []
    dropped = 0

    async def one(i: int) -> None:
        nonlocal dropped
        try:
            async with websockets.connect(url, compression=None) as ws:
                n = 0
                while not until.is_set():
                    n += 1
                    t = time.monotonic()
                    await ws.send(f"{i}:{n}")
                    reply = await asyncio.wait_for(ws.recv(), 30)
                    assert reply == f"{i}:{n}", reply
                    rtt = time.monotonic() - t
                    rtts.append(rtt)
                    timeline.append((t, rtt))
                    await asyncio.sleep(0.02)
        except (websockets.ConnectionClosed, OSError, asyncio.TimeoutError):
            dropped += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    return rtts, timeline, dropped


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def anycore_swap(root: Path, deploys: int) -> dict[str, float]:
    a = write_service(root, "swap_a", SESSION_ECHO.replace("{version}", "A"), True)
    b = write_service(root, "swap_b", SESSION_ECHO.replace("{version}", "B"), True)
    node = Anycore(a, root / "home-swap")
    try:
        until = asyncio.Event()
        clients = asyncio.ensure_future(timed_clients(f"ws://127.0.0.1:{node.port}/session", 50, until))
        await asyncio.sleep(3)
        baseline_end = time.monotonic()
        windows = []
        for i in range(deploys):
            t0 = time.monotonic()
            await asyncio.to_thread(node.deploy, b if i % 2 == 0 else a)
            windows.append((t0, time.monotonic()))
            await asyncio.sleep(1)
        until.set()
        rtts, timeline, dropped = await clients
    finally:
        node.stop()
    base = [r for t, r in timeline if t < baseline_end]
    during = [r for t, r in timeline if any(s <= t <= e + 0.5 for s, e in windows)]
    return {"base_p50_ms": pct(base, 0.5) * 1000, "base_p99_ms": pct(base, 0.99) * 1000,
            "deploy_p99_ms": pct(during, 0.99) * 1000, "deploy_max_ms": max(during) * 1000 if during else float("nan"),
            "messages": len(rtts), "dropped": dropped}


async def uvicorn_reload(root: Path) -> dict[str, float]:
    directory = root / "uv_swap"
    directory.mkdir(exist_ok=True)
    (directory / "app.py").write_text(ASGI_ECHO)
    server = Uvicorn(directory)
    try:
        until = asyncio.Event()
        clients = asyncio.ensure_future(timed_clients(f"ws://127.0.0.1:{server.port}/", 50, until))
        await asyncio.sleep(3)
        server.proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(5)
        until.set()
        rtts, _, dropped = await clients
    finally:
        server.stop()
    return {"messages": len(rtts), "dropped": dropped}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=8.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--deploys", type=int, default=5)
    args = parser.parse_args()
    load_before = os.getloadavg()
    root = Path(tempfile.mkdtemp(prefix="anycore-ws-bench-"))
    session_dir = write_service(root, "session", SESSION_ECHO.replace("{version}", "A"), True)
    uv_dir = root / "uv"
    uv_dir.mkdir()
    (uv_dir / "app.py").write_text(ASGI_ECHO)

    rates: dict[str, list[float]] = {"anycore Session": [], "anycore ASGI": [], "uvicorn": []}
    for _ in range(args.rounds):
        node = Anycore(session_dir, root / "home")
        try:
            rates["anycore Session"].append(echo_rate(f"ws://127.0.0.1:{node.port}/session", args.connections, args.window, args.duration))
            rates["anycore ASGI"].append(echo_rate(f"ws://127.0.0.1:{node.port}/", args.connections, args.window, args.duration))
        finally:
            node.stop()
        server = Uvicorn(uv_dir)
        try:
            rates["uvicorn"].append(echo_rate(f"ws://127.0.0.1:{server.port}/", args.connections, args.window, args.duration))
        finally:
            server.stop()
    swap = asyncio.run(anycore_swap(root, args.deploys))
    reload = asyncio.run(uvicorn_reload(root))
    load_after = os.getloadavg()

    uv = statistics.median(rates["uvicorn"])
    lines = [f"# WebSockets — {time.strftime('%Y-%m-%d %H:%M:%S')}", "",
             f"`python bench/ws_sessions.py --duration {args.duration} --connections {args.connections} "
             f"--window {args.window} --rounds {args.rounds}`; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
             f"({os.cpu_count()} cores; the load generator shares them).", "",
             "## Echo, messages/s (median of rounds)", "", "| system | msg/s | ratio to uvicorn | rounds |", "|---|---|---|---|"]
    for name, values in rates.items():
        median = statistics.median(values)
        lines.append(f"| {name} | {median:,.0f} | {median / uv:.2f}x | {', '.join(f'{v:,.0f}' for v in values)} |")
    lines += ["", f"## Swap pause: 50 sessions sending every 20 ms, {args.deploys} deploys", "",
              "| | anycore Session | uvicorn SIGHUP |", "|---|---|---|",
              f"| connections dropped | {swap['dropped']} of 50 | {reload['dropped']} of 50 |",
              f"| round trip p50 / p99 before | {swap['base_p50_ms']:.1f} / {swap['base_p99_ms']:.1f} ms | |",
              f"| round trip p99 during deploys | {swap['deploy_p99_ms']:.1f} ms | |",
              f"| worst round trip during deploys (the pause) | {swap['deploy_max_ms']:.1f} ms | |",
              f"| messages echoed | {swap['messages']} | {reload['messages']} |"]
    report = "\n".join(lines) + "\n"
    print(report)
    out = HERE / "results" / f"ws-{time.strftime('%Y%m%d-%H%M%S')}.md"
    out.parent.mkdir(exist_ok=True)
    out.write_text(report)
    print(json.dumps({"rates": rates, "swap": swap, "reload": reload}))


if __name__ == "__main__":
    main()
