"""A closed WebSocket holds no compressor: permessage-deflate's zlib state (~40 KiB a
connection at the node's window settings) is dropped at ``connection_lost``, not when the
last reference to the session goes, which can be the worker's ``Done`` much later or the
cyclic GC. Held that long, 300 closed connections a cycle grow the node by ~12 MiB a cycle
until a collection (tests/e2e/test_ws_bounds.py measures the node; this pins the cause).
"""

from __future__ import annotations

import asyncio

from websockets.frames import Frame, Opcode

from anycore import wire
from anycore.gateway.websocket import WebSocketSession

from tests.unit.gateway.fakes import FakeChannel, FakeTransport

HANDSHAKE = (b"GET /echo HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
             b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n")


def test_a_deflate_websocket_frees_its_compressor_when_its_connection_is_lost() -> None:
    async def go() -> None:
        worker = FakeChannel(1, "svc@1")
        transport = FakeTransport()
        s = WebSocketSession(transport, ("127.0.0.1", 40000), ("127.0.0.1", 8080))
        assert s.start(HANDSHAKE) is not None
        s.worker, s.release = worker, worker.release
        worker.sockets[s.id] = s
        s.on_frame(wire.WsAccept(s.id, None, []))
        assert transport.data.startswith(b"HTTP/1.1 101")
        assert b"permessage-deflate" in transport.data
        deflate = s.protocol.extensions
        assert deflate and deflate[0].name == "permessage-deflate"
        s.on_frame(wire.WsMsg(s.id, "x" * 1000, None))  # the compressor is used, its buffers live
        s.data_received(Frame(Opcode.CLOSE, b"\x03\xe8").serialize(mask=True, extensions=[]))
        s.connection_lost(None)
        assert s.protocol.extensions == []
        assert s not in s.registry

    asyncio.run(go())
