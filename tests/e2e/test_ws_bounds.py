"""Bounded memory per WebSocket (issue 12, item 1), with a real node and real clients.

- A client that never reads while the app sends 64 KiB messages in a loop (awaiting only
  its ``send``): node and worker RSS stay within 64 MiB of their baseline for 30 s, the
  app's ``send`` is slowed by the send window, and the node closes the client with 1008
  after ``ws_stall_timeout`` (the app sees ``websocket.disconnect`` with that code).
- permessage-deflate connections opened and closed by the hundred do not grow the node.
- WebSockets count toward ``--max-connections``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import httpx
import pytest
import websockets

from tests.conftest import make_service, wait_for
from tests.e2e.planes import nodes  # noqa: F401 - every test here runs on both data planes (the heavy ones on native only)

# Heavy: the Python gateway's run would prove the same Python code again (tests/e2e/planes.py).
NATIVE_ONLY = pytest.mark.planes("native")

APP = """
import asyncio

STATE = {"sent": 0, "closed": None}


async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        if scope["path"] == "/deaf":  # never receives: the client must be slowed, not buffered
            STATE["deaf"] = True
            await asyncio.sleep(3600)
        if scope["path"] == "/flood":
            chunk = b"x" * 65536
            try:
                while True:  # never awaits anything but send: only the send window slows it
                    await send({"type": "websocket.send", "bytes": chunk})
                    STATE["sent"] += 1
            except OSError:
                message = await receive()
                STATE["closed"] = message.get("code")
            return
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": "echo:" + (message.get("text") or "")})
    elif scope["type"] == "http":
        body = repr(STATE).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
"""
CONFIG = 'name = "ws"\nworkers = 1\n'
HANDSHAKE = (b"GET /flood HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def port_of(node) -> int:
    return int(node.url.rsplit(":", 1)[1])


def state(node) -> dict:
    return eval(httpx.get(node.url + "/", timeout=10).text)  # noqa: S307 - the test app's own repr


@NATIVE_ONLY
def test_a_client_that_never_reads_keeps_node_and_worker_memory_bounded(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "ws", APP, CONFIG))
    worker_pid = wait_for(lambda: node.ready_workers("ws") and node.ready_workers("ws")[0]["pid"], what="a worker")
    base_node, base_worker = rss_mib(node.proc.pid), rss_mib(worker_pid)
    sock = socket.create_connection(("127.0.0.1", port_of(node)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.sendall(HANDSHAKE)  # and never read (the 101 is checked at the end: it waits in the socket)
    started = time.monotonic()
    peak_node = peak_worker = 0.0
    try:
        while time.monotonic() - started < 30:
            peak_node = max(peak_node, rss_mib(node.proc.pid) - base_node)
            peak_worker = max(peak_worker, rss_mib(worker_pid) - base_worker)
            # Fail fast (an unbounded node grows by hundreds of MiB a second).
            assert peak_node < 64, f"node RSS grew by {peak_node:.0f} MiB"
            assert peak_worker < 64, f"worker RSS grew by {peak_worker:.0f} MiB"
            time.sleep(0.25)
        sock.settimeout(10)
        assert sock.recv(12) == b"HTTP/1.1 101"
        # The app was slowed, not spinning: it sent about what the buffers hold, not gigabytes.
        sent = state(node)["sent"]
        assert sent < 200, f"the app sent {sent} x 64 KiB to a client that reads nothing"
        # The node closed the stalled client with 1008; the app saw it as a disconnect.
        assert wait_for(lambda: state(node)["closed"], 20, what="the stalled WebSocket closed") == 1008
    finally:
        sock.close()
    assert node.proc.poll() is None
    assert httpx.get(node.url + "/").status_code == 200


@NATIVE_ONLY
def test_a_client_that_floods_an_app_that_never_receives_is_slowed_not_buffered(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "ws", APP, CONFIG))
    worker_pid = wait_for(lambda: node.ready_workers("ws") and node.ready_workers("ws")[0]["pid"], what="a worker")
    base_node, base_worker = rss_mib(node.proc.pid), rss_mib(worker_pid)
    url = node.url.replace("http://", "ws://") + "/deaf"

    async def flood() -> tuple[int, float, float]:
        sent = 0
        peak_node = peak_worker = 0.0
        ws = await websockets.connect(url, compression=None, open_timeout=30)
        chunk = b"y" * 65536

        async def sender() -> None:
            nonlocal sent
            while True:
                await ws.send(chunk)  # blocks once the node stops reading us
                sent += 1

        task = asyncio.ensure_future(sender())
        try:
            started = time.monotonic()
            while time.monotonic() - started < 8:
                await asyncio.sleep(0.25)
                peak_node = max(peak_node, rss_mib(node.proc.pid) - base_node)
                peak_worker = max(peak_worker, rss_mib(worker_pid) - base_worker)
                assert peak_node < 64 and peak_worker < 64, (peak_node, peak_worker)
        finally:
            task.cancel()
            ws.transport.abort()
        return sent, peak_node, peak_worker

    sent, peak_node, peak_worker = asyncio.run(flood())
    # A window in the worker plus the socket buffers on the way, not 8 s of a local socket.
    assert sent < 400, f"{sent} x 64 KiB accepted from a client of an app that receives nothing"
    assert node.proc.poll() is None


@NATIVE_ONLY
def test_deflate_websockets_opened_and_closed_leave_node_memory_flat(nodes, tmp_path):
    """8 x (open 300 permessage-deflate WebSockets, one message each, close them)."""
    # glibc keeps freed heap memory for reuse, so the node's RSS shows what the allocator
    # holds, not what the node does. With blocks over 4 KiB mapped on their own and the
    # heap's top trimmed at every free, freed zlib buffers leave RSS; what stays is held.
    node = nodes.start(make_service(tmp_path, "ws", APP, CONFIG),
                       env={"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096:glibc.malloc.trim_threshold=0"})
    url = node.url.replace("http://", "ws://") + "/echo"

    async def cycle() -> None:
        sockets = await asyncio.gather(*(websockets.connect(url, compression="deflate", open_timeout=30)
                                         for _ in range(300)))
        assert all(ws.protocol.extensions for ws in sockets)  # deflate was negotiated
        for ws in sockets:
            await ws.send("x" * 1000)
        for ws in sockets:
            assert await asyncio.wait_for(ws.recv(), 30) == "echo:" + "x" * 1000
        await asyncio.gather(*(ws.close() for ws in sockets))

    def closed_everywhere() -> bool:
        return node.service("ws")["websockets"] == 0

    samples = []
    for _ in range(8):
        asyncio.run(cycle())
        wait_for(closed_everywhere, 20, what="every WebSocket closed in the node")
        samples.append(rss_mib(node.proc.pid))
    # A leak grows the node by the same amount every cycle (before the fix: ~30 MiB, about
    # a third of its size, per 300). Python's own arenas and the heap's fragmentation also
    # grow, but less each cycle until they settle: 45, 47, 49, 51, 51, 53, 53, 53 MiB here
    # (without the tunables: 44, 53, 62, 66, 67, 67 in CI, which failed a slope taken from
    # the first cycle). So the slope is judged over the last half of the cycles only,
    # where settling has flattened and a leak has not.
    half = len(samples) // 2
    per_cycle = (samples[-1] - samples[half - 1]) / (len(samples) - half)
    assert per_cycle <= 0.10 * samples[0], f"node RSS per cycle (MiB): {[round(s, 1) for s in samples]}"


def test_websockets_count_toward_max_connections(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "ws", APP, CONFIG), args=("--max-connections", "100"))
    url = node.url.replace("http://", "ws://") + "/echo"

    async def scenario() -> tuple[int, int]:
        opened = []
        for _ in range(100):
            opened.append(await websockets.connect(url, open_timeout=30))
        refused = 0
        for _ in range(20):
            try:
                extra = await websockets.connect(url, open_timeout=10)
            except (websockets.InvalidStatus, websockets.InvalidHandshake, OSError):
                refused += 1
            else:
                opened.append(extra)
        # The ones accepted still work.
        await opened[0].send("still")
        echoed = await asyncio.wait_for(opened[0].recv(), 10) == "echo:still"
        total = len(opened)
        await asyncio.gather(*(ws.close() for ws in opened))
        return total if echoed else -1, refused

    total, refused = asyncio.run(scenario())
    assert (total, refused) == (100, 20)
    # Closed WebSockets free their places.
    def served() -> bool:
        try:
            return httpx.get(node.url + "/", timeout=10).status_code == 200
        except httpx.TransportError:
            return False

    wait_for(served, 10, what="a free place")
    assert node.proc.poll() is None
