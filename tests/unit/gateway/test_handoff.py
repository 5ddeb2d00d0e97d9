"""gateway/handoff.py: a connection another data plane accepted (``dataplane.Upgrade``),
served by the node's HTTP code over an in-memory transport, with a fake clock."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.frames import Frame, Opcode

from anycore import wire
from anycore.gateway.handoff import AdoptedConnection
from anycore.gateway.http import Limits
from anycore.gateway.websocket import WebSocketSession
from tests.unit.clock import FakeClock
from tests.unit.gateway.fakes import FakeChannel, FakeSink, FakeTransport, gateway

HANDSHAKE = (b"GET /chat?x=1 HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
NAMED_CLIENT, NAMED_SERVER = ("203.0.113.7", 5555), ("198.51.100.1", 443)


class PlacingSink(FakeSink):
    """Places every WebSocket on one recording worker, as SocketHost.open does."""

    def __init__(self) -> None:
        super().__init__()
        self.worker = FakeChannel()
        self.opened: list[wire.WsOpen] = []

    def open_websocket(self, session: Any, frame: wire.WsOpen) -> None:
        session.service, session.worker, session.release = self, self.worker, self.worker.release
        self.worker.sockets[session.id] = session
        self.opened.append(frame)
        self.worker.send(frame)


def adopt(buffered: bytes) -> tuple[AdoptedConnection, FakeTransport, PlacingSink, Any]:
    sink = PlacingSink()
    gw, _ = gateway(sink=sink)
    conn = AdoptedConnection(gw, buffered, NAMED_CLIENT, NAMED_SERVER, clock=FakeClock())
    transport = FakeTransport(peer=("127.0.0.1", 40000))  # the socket's own peer: not what the scope says
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, sink, gw


def test_the_buffered_head_is_upgraded_with_the_addresses_the_gateway_named() -> None:
    async def go() -> None:
        conn, transport, sink, gw = adopt(HANDSHAKE)
        assert isinstance(transport.protocol, WebSocketSession)  # the session owns the transport now
        assert conn not in gw.connections and transport.protocol in gw.websockets
        [frame] = sink.opened
        assert (frame.path, frame.query, frame.client, frame.server) == ("/chat", b"x=1", NAMED_CLIENT, NAMED_SERVER)
        transport.protocol.on_frame(wire.WsAccept(frame.id, None, []))
        assert transport.data.startswith(b"HTTP/1.1 101")

    asyncio.run(go())


def test_bytes_after_the_head_reach_the_websocket_session_not_the_http_parser() -> None:
    async def go() -> None:
        early = Frame(Opcode.TEXT, b"early").serialize(mask=True)
        _, transport, sink, _ = adopt(HANDSHAKE + early)
        session = transport.protocol
        assert isinstance(session, WebSocketSession) and not transport.closed
        session.on_frame(wire.WsAccept(sink.opened[0].id, None, []))
        assert [f.text for f in sink.worker.frames if type(f) is wire.WsMsg] == ["early"]

    asyncio.run(go())


def test_a_handoff_past_max_connections_is_refused_with_503() -> None:
    async def go() -> None:
        sink = PlacingSink()
        gw, _ = gateway(sink=sink)
        gw.limits = Limits(max_connections=1)
        gw.websockets.add(object())  # one WebSocket already open on this node
        conn = AdoptedConnection(gw, HANDSHAKE, NAMED_CLIENT, NAMED_SERVER, clock=FakeClock())
        transport = FakeTransport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        assert transport.data.startswith(b"HTTP/1.1 503") and transport.closed and not sink.opened

    asyncio.run(go())


def test_an_accept_that_comes_after_the_client_left_is_dropped_not_raised() -> None:
    """Found by the native runs of tests/e2e/test_ws_bounds.py: the client's FIN read in
    the same loop turn as the app's WsAccept (before connection_lost) made ``send_response``
    assert, which killed the worker's whole channel (and the worker). Not handoff-specific."""
    async def go() -> None:
        _, transport, sink, _ = adopt(HANDSHAKE)
        session = transport.protocol
        session.eof_received()  # the client is gone; connection_lost comes a turn later
        session.on_frame(wire.WsAccept(sink.opened[0].id, None, []))
        assert not transport.data.startswith(b"HTTP/1.1 101")
        session.connection_lost(None)
        assert [type(f) for f in sink.worker.frames][-1] is wire.WsClose  # the app is told

    asyncio.run(go())


def test_a_refusal_that_comes_after_the_client_left_is_dropped_not_raised() -> None:
    async def go() -> None:
        _, transport, sink, _ = adopt(HANDSHAKE)
        session = transport.protocol
        session.eof_received()
        session.on_frame(wire.WsClose(sink.opened[0].id, 1008, ""))  # the app refuses: a 403 to nobody
        assert transport.closed and not transport.data

    asyncio.run(go())
