"""Plain ASGI WebSocket apps through the gateway: echo, reject, drain with 1012, bad frames."""

from __future__ import annotations

import asyncio
import socket
import sys
import time

import httpx
import pytest
import websockets

from tests.conftest import make_service
from tests.e2e.planes import nodes  # noqa: F401 - every test here runs on both data planes (the heavy ones on native only)

# Heavy: the Python gateway's run would prove the same Python code again (tests/e2e/planes.py).
NATIVE_ONLY = pytest.mark.planes("native")

ECHO = """
VERSION = "{version}"

async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if scope["path"] == "/reject":
            await send({{"type": "websocket.close", "code": 1008}})
            return
        await send({{"type": "websocket.accept"}})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                print("disconnect", message["code"], flush=True)
                return
            if "text" in message and message["text"] is not None:
                await send({{"type": "websocket.send", "text": VERSION + ":" + message["text"]}})
            else:
                await send({{"type": "websocket.send", "bytes": message["bytes"][::-1]}})
    elif scope["type"] == "http":
        await send({{"type": "http.response.start", "status": 200, "headers": []}})
        await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""
CONFIG = 'name = "ws"\nworkers = 1\ndrain_timeout = 4\n'


def ws_url(node, path: str) -> str:
    return node.url.replace("http://", "ws://") + path


def test_asgi_websocket_app_works_through_the_gateway(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "ws", ECHO.format(version="v1"), CONFIG))

    async def scenario() -> None:
        async with websockets.connect(ws_url(node, "/echo")) as ws:
            assert ws.response.headers["anycore-release"].startswith("ws@")
            await ws.send("hello")
            assert await ws.recv() == "v1:hello"
            await ws.send(b"abc")
            assert await ws.recv() == b"cba"
            big = "x" * 200_000  # compressed with permessage-deflate, reassembled whole
            await ws.send(big)
            assert await ws.recv() == "v1:" + big
        try:
            async with websockets.connect(ws_url(node, "/reject")):
                raise AssertionError("a rejected WebSocket must not open")
        except websockets.InvalidStatus as exc:
            assert exc.response.status_code == 403

    asyncio.run(scenario())
    node.wait_output(r"\[ws@\w+ worker \d+\] disconnect 1000")
    assert httpx.get(node.url + "/").text == "v1"


@NATIVE_ONLY
def test_deploy_keeps_websockets_on_the_old_release_then_closes_them_with_1012_staggered(nodes, tmp_path):
    v1 = make_service(tmp_path / "v1", "ws", ECHO.format(version="v1"), CONFIG)
    v2 = make_service(tmp_path / "v2", "ws", ECHO.format(version="v2"), CONFIG)
    node = nodes.start(v1)

    async def scenario() -> tuple[list[int | None], list[float], float, str]:
        sockets = [await websockets.connect(ws_url(node, f"/s{i}")) for i in range(6)]
        for ws in sockets:
            await ws.send("before")
            assert await ws.recv() == "v1:before"
        deploy = await asyncio.create_subprocess_exec(*node_cli("deploy", str(v2)), env=node.env,
                                                      stdout=asyncio.subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while (await asyncio.to_thread(httpx.get, node.url + "/")).text != "v2":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        shifted = time.monotonic()
        # After the shift the old connections still talk to the old code.
        for ws in sockets:
            await ws.send("after")
            assert await ws.recv() == "v1:after"
        async def until_closed(ws: websockets.ClientConnection) -> tuple[int | None, float]:
            try:
                await asyncio.wait_for(ws.recv(), 30)
            except websockets.ConnectionClosed as exc:
                return (exc.rcvd.code if exc.rcvd else None), time.monotonic()
            return None, time.monotonic()

        # Watch all of them at once, so each close is timed when it happens.
        closes = await asyncio.gather(*(until_closed(ws) for ws in sockets))
        codes = [code for code, _ in closes]
        closed_at = [at for _, at in closes]
        assert await deploy.wait() == 0
        async with websockets.connect(ws_url(node, "/new")) as ws:
            await ws.send("hi")
            fresh = await ws.recv()
        return codes, closed_at, shifted, fresh

    codes, closed_at, shifted, fresh = asyncio.run(scenario())
    assert codes == [1012] * 6  # Service Restart, never 1006
    assert min(closed_at) - shifted >= 4 - 2.0 - 0.5  # not before the drain window (4 s, jitter window 2 s)
    assert max(closed_at) - min(closed_at) > 0.05  # spread over the jitter window, not all at once
    assert fresh == "v2:hi"


def node_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "anycore.cli.main", *args]


def test_bad_websocket_frames_are_refused_and_the_node_lives_on(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "ws", ECHO.format(version="v1"), CONFIG))

    async def scenario() -> tuple[int | None, int | None]:
        # Invalid UTF-8 in a text frame: close 1007.
        async with websockets.connect(ws_url(node, "/utf8")) as ws:
            from websockets.frames import Frame, Opcode

            ws.protocol.send_frame(Frame(Opcode.TEXT, b"\xff\xfe invalid"))
            ws.send_data()
            try:
                await asyncio.wait_for(ws.recv(), 10)
                utf8 = None
            except websockets.ConnectionClosed as exc:
                utf8 = exc.rcvd.code if exc.rcvd else None
        # An oversized message (over the 1 MiB limit): close 1009.
        async with websockets.connect(ws_url(node, "/big"), max_size=None, compression=None) as ws:
            try:
                await ws.send("y" * (2 * 1024 * 1024))
                await asyncio.wait_for(ws.recv(), 10)
                big = None
            except websockets.ConnectionClosed as exc:
                big = exc.rcvd.code if exc.rcvd else None
        return utf8, big

    utf8, big = asyncio.run(scenario())
    assert utf8 == 1007
    assert big == 1009
    # A handshake with a bad Sec-WebSocket-Key gets a 400, not a crash.
    with socket.create_connection((node.record["gateway"].split("//")[1].split(":")[0], int(node.url.rsplit(":", 1)[1]))) as sock:
        sock.sendall(b"GET /x HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: nope\r\nSec-WebSocket-Version: 13\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400")
    assert node.proc.poll() is None
    assert httpx.get(node.url + "/").status_code == 200


@NATIVE_ONLY
def test_silent_websocket_clients_are_pinged_and_dead_ones_closed(nodes, tmp_path):
    """The WebSocket keepalive is its own timer, not the HTTP keep-alive: an idle client that
    answers pings stays; one that never answers is closed after the ping timeout."""
    node = nodes.start(make_service(tmp_path, "ws", ECHO.format(version="v1"), CONFIG), args=("--ws-ping-interval", "0.5"))
    port = int(node.url.rsplit(":", 1)[1])

    async def scenario() -> None:
        # A live client (websockets answers pings by itself), idle for longer than the
        # HTTP keep-alive timeout and several ping intervals: still open, still served.
        async with websockets.connect(ws_url(node, "/echo"), ping_interval=None) as ws:
            await asyncio.sleep(3)
            await ws.send("still here")
            assert await asyncio.wait_for(ws.recv(), 10) == "v1:still here"
        # A client that completes the handshake and then reads nothing, answers nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        await writer.drain()
        started = time.monotonic()
        received = b""
        while chunk := await asyncio.wait_for(reader.read(4096), 15):
            received += chunk
        assert received.startswith(b"HTTP/1.1 101")
        assert b"\x89" in received  # a ping frame (FIN + opcode 9) came before the close
        assert time.monotonic() - started < 10
        writer.close()

    asyncio.run(scenario())
    assert node.proc.poll() is None
