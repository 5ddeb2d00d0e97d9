"""WebSockets held by the gateway: the node owns the client socket, a worker runs the app.

The upgrade request is parsed by the HTTP connection; this protocol then takes over the
transport and drives the ``websockets`` sans-I/O ``ServerProtocol`` (RFC 6455 framing,
permessage-deflate, ping/pong, close handshake, size limit). The app's side travels as
``WsOpen``/``WsAccept``/``WsMsg``/``WsClose`` frames over the worker's channel; the
handshake response is sent only when the app accepts (``websocket.accept``), and a close
before accept becomes a 403.

A WebSocket does not hold a request slot: it is long-lived and mostly idle, so it is
placed on the least-loaded accepting worker without consuming a slot. When its worker
drains (a deploy, a scale-down, a stop), the connection is closed with 1012 (service
restart) at the end of the drain timeout, staggered with jitter, never a bare TCP drop;
when its worker dies, with 1011.
"""

from __future__ import annotations

import asyncio
import itertools
import random
from typing import TYPE_CHECKING, Any

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.http11 import Request
from websockets.server import ServerProtocol

from anycore import wire

if TYPE_CHECKING:
    from anycore.node.service import ServiceRuntime
    from anycore.supervisor.worker import WorkerHandle

MAX_MESSAGE = 1024 * 1024
_ids = itertools.count(10**12)  # distinct from HTTP exchange ids


class WebSocketSession(asyncio.Protocol):
    def __init__(self, transport: Any, client: tuple[str, int] | None, server: tuple[str, int] | None) -> None:
        self.id = next(_ids)
        self.transport = transport
        self.client = client
        self.server = server
        self.protocol = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()], max_size=MAX_MESSAGE)
        self.request: Request | None = None
        self.worker: WorkerHandle | None = None
        self.service: ServiceRuntime | None = None
        self.accepted = False
        self.closed = False
        self.fragments: list[bytes] = []
        self.fragment_text = False
        self.release = ""
        self.close_timer: asyncio.TimerHandle | None = None

    # -- handshake ---------------------------------------------------------------------
    def start(self, handshake: bytes) -> Request | None:
        """Feed the re-serialised upgrade request; returns it if it is a valid handshake."""
        self.transport.set_protocol(self)
        self.protocol.receive_data(handshake)
        events = self.protocol.events_received()
        if not events or not isinstance(events[0], Request):
            self._flush()
            self.transport.close()
            return None
        self.request = events[0]
        return self.request

    def open_frame(self, path: str, raw_path: bytes, query: bytes, headers: list[tuple[bytes, bytes]], root_path: str) -> wire.WsOpen:
        protocols = [p.strip() for k, v in headers if k == b"sec-websocket-protocol" for p in v.decode("latin-1").split(",")]
        return wire.WsOpen(self.id, path, raw_path, query, headers, protocols, self.client, self.server, root_path)

    def reject(self, status: int, text: str) -> None:
        response = self.protocol.reject(status, text)
        self.protocol.send_response(response)
        self._flush()
        self.closed = True
        self.transport.close()

    # -- frames from the worker -----------------------------------------------------------
    def on_frame(self, frame: wire.Frame) -> None:
        if self.closed:
            return
        if type(frame) is wire.WsAccept:
            assert self.request is not None
            response = self.protocol.accept(self.request)
            if frame.subprotocol:
                response.headers["Sec-WebSocket-Protocol"] = frame.subprotocol
            for name, value in frame.headers:
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
            response.headers["anycore-release"] = self.release
            self.protocol.send_response(response)
            self.accepted = True
        elif type(frame) is wire.WsMsg:
            if frame.text is not None:
                self.protocol.send_text(frame.text.encode())
            else:
                self.protocol.send_binary(frame.data or b"")
        elif type(frame) is wire.WsClose:
            if not self.accepted:
                self.reject(403, "the service refused the WebSocket\n")
                return
            self.close(frame.code, frame.reason, tell_worker=False)
            return
        self._flush()

    def close(self, code: int, reason: str = "", tell_worker: bool = True) -> None:
        """Start the closing handshake with the client (the node never drops a WebSocket bare)."""
        if self.closed:
            return
        if not self.accepted:
            self.reject(503, "the service is restarting; retry\n")
        else:
            self.protocol.send_close(code, reason)
            self._flush()
            # The client answers with its own close frame; do not wait for it forever.
            asyncio.get_running_loop().call_later(5.0, self._abort)
        if tell_worker:
            self._tell_worker(code, reason)

    def close_later(self, delay: float, code: int) -> None:
        if self.close_timer is None and not self.closed:
            self.close_timer = asyncio.get_running_loop().call_later(delay, self.close, code, "service restart")

    def worker_gone(self, draining: bool) -> None:
        self.worker = None
        self.close(1012 if draining else 1011, "service restart" if draining else "worker died", tell_worker=False)

    def _tell_worker(self, code: int, reason: str) -> None:
        if self.worker is not None:
            self.worker.send(wire.WsClose(self.id, code, reason))

    def _abort(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self.transport.write(data)
            elif not self.transport.is_closing():
                self.transport.close()  # an empty chunk means: close the TCP connection

    # -- bytes from the client ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.protocol.receive_data(data)
        for event in self.protocol.events_received():
            if isinstance(event, Frame):
                self._client_frame(event)
        self._flush()
        if self.protocol.state in (State.CLOSING, State.CLOSED) and not self.closed:
            self._client_closed()

    def _client_frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self.fragments = [frame.data]
            self.fragment_text = frame.opcode is Opcode.TEXT
        elif frame.opcode is Opcode.CONT:
            self.fragments.append(frame.data)
        else:
            return  # ping/pong/close are handled by the protocol itself
        if frame.fin and self.worker is not None:
            data = b"".join(self.fragments)
            self.fragments = []
            if self.fragment_text:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    self.protocol.fail(1007, "invalid UTF-8 in a text message")
                    return
                self.worker.send(wire.WsMsg(self.id, text, None))
            else:
                self.worker.send(wire.WsMsg(self.id, None, data))

    def _client_closed(self) -> None:
        received = self.protocol.close_rcvd
        self.closed = True
        self._tell_worker(received.code if received else 1006, received.reason if received else "")

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._tell_worker(1006, "")
        if self.close_timer is not None:
            self.close_timer.cancel()
        if self.service is not None:
            self.service.websocket_gone(self)


def drain_delay(drain_timeout: float) -> float:
    """When to close a draining release's WebSocket: at the end of the drain timeout, spread
    over a jitter window so that clients do not all reconnect in the same instant."""
    window = min(5.0, drain_timeout / 2)
    return drain_timeout - window + random.random() * window
