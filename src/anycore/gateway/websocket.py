"""L1 — WebSockets held by the gateway: the node owns the client socket, a worker runs the app.

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

A connection routed to an ``anycore.Session`` (``handler`` set) is never closed by the
node: when its worker drains or dies the node moves it (see ``node.sessions``). While it
moves, the client's messages are held here, in order, and delivered to the new worker
after the session's state. ``delivered`` numbers the client's messages; a checkpointing
Session reports the number its state reflects, and the messages after it are kept
(``unacked``) to be replayed if the worker dies.

A Session's move is a state, ``MoveState``, along one table (``gateway.states.MOVES``):
``moving`` is every state but ATTACHED and CLOSED (see ``gateway.states``).
"""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import deque
from typing import Any, Callable

import msgspec

from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.http11 import Request
from websockets.server import ServerProtocol

from anycore import wire
from anycore.errors import IllegalTransition
from anycore.gateway.states import ATTACHED, CLOSED, DETACHED, HELD, MOVES, MOVING, REOPENING, MoveState
from anycore.ports import RequestSink, SocketChannel

MAX_MESSAGE = 1024 * 1024
# websockets' own server defaults: a 4 KiB window and memLevel 5 cost ~64 KiB of zlib state
# per connection, where zlib's defaults (32 KiB window, memLevel 8) cost ~320 KiB and, freed
# and reallocated by the thousand, fragment the node's heap (RSS grew ~60 MiB per 1,000
# connections opened and closed).
DEFLATE = ServerPerMessageDeflateFactory(server_max_window_bits=12, client_max_window_bits=12,
                                         compress_settings={"memLevel": 5})
CLOSE_WAIT = 5.0  # after our close frame, the client has this long to answer before the abort
MAX_HELD = 10_000  # client messages held for one moving Session; more closes it with 1013
_ids = itertools.count(10**12)  # distinct from HTTP exchange ids


class WebSocketSession(asyncio.Protocol):
    scheme = "ws"  # the scope's: "wss" when proxy headers say the client came over TLS
    http_version = "1.1"  # the scope's: "2" for an HTTP/2 stream the native gateway relays

    def __init__(self, transport: Any, client: tuple[str, int] | None, server: tuple[str, int] | None,
                 registry: set["WebSocketSession"] | None = None) -> None:
        self.id = next(_ids)
        self.registry = registry if registry is not None else set()
        self.registry.add(self)
        self.last_seen = asyncio.get_running_loop().time()
        self.ping_sent = 0.0
        self.transport = transport
        self.client = client
        self.server = server
        self.protocol = ServerProtocol(extensions=[DEFLATE], max_size=MAX_MESSAGE)
        self.request: Request | None = None
        self.worker: SocketChannel | None = None
        self.service: RequestSink | None = None
        self.accepted = False
        self.closed = False
        # For the access line written when the connection ends (``ended``, set by the
        # gateway while the log is on): the handshake answer's status (101, or a refusal's),
        # when the app accepted, and the bytes the client got after the answer's head.
        self.status = 0
        self.accepted_at = 0.0
        self.sent = 0
        self.ended: Callable[[WebSocketSession], None] | None = None
        self.fragments: list[bytes] = []
        self.fragment_text = False
        self.release = ""
        self.close_timer: asyncio.TimerHandle | None = None
        self.abort_timer: asyncio.TimerHandle | None = None
        # Flow control towards the client (see wire.WS_WINDOW): the bytes of the worker's
        # messages written out but not yet returned as credit, and since when the client's
        # socket has been above its high-water mark (0.0: it is not).
        self.owed_credit = 0
        self.stalled_since = 0.0
        # ... and towards the worker: client messages sent to it and not yet credited back
        # (it credits them as the app receives them); past WS_WINDOW the client is not read.
        self.to_worker = 0
        self.reading_paused = False
        # anycore.Session connections only:
        self.handler = ""
        self.key = ""
        self.opened: wire.WsOpen | None = None  # the open frame, sent again (with state) on a move
        self.move = ATTACHED
        self._held: list[wire.WsMsg | wire.WsClose] = []  # the client's messages while it moves
        self.delivered = 0
        self.checkpointing = False
        self.checkpoint: wire.SessState | None = None
        self.unacked: deque[tuple[int, wire.WsMsg]] = deque()
        self.replay: list[wire.WsMsg] = []  # set by reopen, sent by resume
        self.snapshots: deque[asyncio.Future[wire.SessState | None]] = deque()

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
        return wire.WsOpen(self.id, path, raw_path, query, headers, protocols, self.client, self.server, root_path,
                           scheme=self.scheme, http_version=self.http_version)

    def reject(self, status: int, text: str) -> None:
        if self.protocol.state is State.CONNECTING:  # else the client already left
            self.protocol.send_response(self.protocol.reject(status, text))
            self._flush()
        self.closed = True
        self.transport.close()

    # -- frames from the worker -----------------------------------------------------------
    def on_frame(self, frame: wire.Frame) -> None:
        if self.closed:
            return
        if type(frame) is wire.Credit:  # the app received client messages
            self.to_worker -= frame.n
            self._read_flow()
            return
        if type(frame) is wire.WsAccept and self.handler:
            self.checkpointing = frame.checkpoint
            if not frame.checkpoint:
                self.checkpoint = None
                self.unacked.clear()
            if self.accepted:
                return  # the same session, opened again after a move
        if type(frame) is wire.SessState:
            self._session_state(frame)
            return
        if type(frame) is wire.WsAccept:
            assert self.request is not None
            if self.protocol.state is not State.CONNECTING:
                return  # the client left before the accept (its EOF is read, connection_lost not yet run)
            response = self.protocol.accept(self.request)
            if frame.subprotocol:
                response.headers["Sec-WebSocket-Protocol"] = frame.subprotocol
            for name, value in frame.headers:
                response.headers[name.decode("latin-1")] = value.decode("latin-1")
            response.headers["anycore-release"] = self.release
            self.protocol.send_response(response)
            self._flush()  # the head, before ``accepted``: ``sent`` counts what follows it
            self.accepted, self.accepted_at = True, asyncio.get_running_loop().time()
        elif type(frame) is wire.WsMsg:
            if frame.text is not None:
                self.protocol.send_text(frame.text.encode())
            else:
                self.protocol.send_binary(frame.data or b"")
            self._flush()
            self._credit_back(wire.ws_size(frame))
            return
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
            if self.abort_timer is None:
                self.abort_timer = asyncio.get_running_loop().call_later(CLOSE_WAIT, self._abort)
        if tell_worker:
            self._tell_worker(code, reason)

    def push(self, text: str | None, data: bytes | None) -> None:
        """A message from the node itself (the client-notify hook), not from a worker."""
        if self.accepted and not self.closed:
            if text is not None:
                self.protocol.send_text(text.encode())
            else:
                self.protocol.send_binary(data or b"")
            self._flush()

    def keepalive(self, now: float, interval: float) -> None:
        """Ping a connection silent for ``interval``; close it with 1011 if the pong (or any
        byte) does not come within ``interval`` more: the client is gone without a FIN."""
        if self.closed or not self.accepted:
            return
        if self.ping_sent and now - self.ping_sent > interval:
            self.close(1011, "keepalive ping timeout")
            self._abort()
        elif not self.ping_sent and now - self.last_seen > interval:
            self.ping_sent = now
            self.protocol.send_ping(b"anycore")
            self._flush()

    def check_stall(self, now: float, bound: float) -> None:
        """Close a client that has not read for ``bound`` seconds while the app had more to
        send (its socket stayed above the high-water mark): 1008, and the abort follows
        CLOSE_WAIT later since the close frame queues behind what it did not read."""
        if self.stalled_since and not self.closed and now - self.stalled_since > bound:
            self.close(1008, "client too slow to read")

    # -- flow control towards the client ---------------------------------------------------
    def _credit_back(self, n: int) -> None:
        """Return credit for ``n`` bytes once the client's socket took them. Batched: credit
        leaves when half the window is owed, which never starves the worker (it waits only
        with a whole window out, so at least half of it is owed here or already on its way)."""
        self.owed_credit += n
        if not self.stalled_since and self.owed_credit >= wire.WS_WINDOW // 2:
            self._pay()

    def _pay(self) -> None:
        if self.owed_credit and self.worker is not None:
            self.worker.send(wire.Credit(self.id, self.owed_credit))
        self.owed_credit = 0

    def _read_flow(self) -> None:
        """Read the client only while the worker holds less than a window of its messages."""
        pause = self.to_worker > wire.WS_WINDOW
        if pause != self.reading_paused and not self.closed and not self.transport.is_closing():
            self.reading_paused = pause
            if pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        self.stalled_since = asyncio.get_running_loop().time()

    def resume_writing(self) -> None:
        self.stalled_since = 0.0
        self._pay()

    def close_later(self, delay: float, code: int) -> None:
        if self.close_timer is None and not self.closed:
            self.close_timer = asyncio.get_running_loop().call_later(delay, self.close, code, "service restart")

    def worker_gone(self, draining: bool) -> None:
        self.worker = None
        self.close(1012 if draining else 1011, "service restart" if draining else "worker died", tell_worker=False)

    def _tell_worker(self, code: int, reason: str) -> None:
        if self.move in MOVING:
            self._held.append(wire.WsClose(self.id, code, reason))
        elif self.worker is not None:
            self.worker.send(wire.WsClose(self.id, code, reason))

    # -- Sessions: moving between workers -----------------------------------------------------
    def _move_to(self, target: MoveState) -> None:
        if target not in MOVES[self.move]:
            raise IllegalTransition(f"session {self.id} ({self.handler or 'websocket'})", self.move.value, target.value)
        self.move = target

    @property
    def moving(self) -> bool:
        """Between ``hold`` and ``resume``: the client's messages are held here."""
        return self.move in MOVING

    def _deliver(self, message: wire.WsMsg) -> None:
        if self.move in MOVING:
            if len(self._held) >= MAX_HELD:
                # Close the client; the WsClose joins the held messages, so the session's new
                # worker still runs on_close after the ones it got.
                self.close(1013, "too many messages while the session moved; reconnect")
                return
            self._held.append(message)
        elif self.worker is not None:
            self.worker.send(message)
            self.to_worker += wire.ws_size(message)
            self._read_flow()
            self.delivered += 1
            if self.checkpointing:
                self.unacked.append((self.delivered, message))

    def _session_state(self, frame: wire.SessState) -> None:
        if frame.kind == wire.CHECKPOINT:
            if frame.state is not None:
                self.checkpoint = frame
                while self.unacked and self.unacked[0][0] <= frame.seq:
                    self.unacked.popleft()
        elif self.snapshots:
            self.snapshots.popleft().set_result(frame)

    def request_snapshot(self, detach: bool, group: str = "", size: int = 1) -> "asyncio.Future[wire.SessState | None]":
        """Ask the worker for ``snapshot()`` after the messages it has; None if it dies first."""
        future: asyncio.Future[wire.SessState | None] = asyncio.get_running_loop().create_future()
        if self.worker is None:
            future.set_result(None)
        else:
            self.snapshots.append(future)
            self.worker.send(wire.SessSnap(self.id, detach, group, size))
        return future

    def hold(self) -> None:
        """Start a move: from now the client's messages are held. A session already moving stays as it is."""
        if self.move not in MOVING:
            self._move_to(HELD)

    def abandon(self, code: int = 1011, reason: str = "no worker to run the session") -> None:
        """Give the move up (no worker to go to): drop the held messages, close the client."""
        self._end_move()
        self.detach()
        self.close(code, reason)

    def _end_move(self) -> None:
        if self.move is HELD:
            self._move_to(DETACHED)
        self._move_to(CLOSED)
        self._held = []

    def detach(self) -> None:
        """The worker holding the session is gone (or gave it up): fail pending snapshots.
        A moving session is then DETACHED; one that is not moving just has no worker."""
        if self.move is HELD or self.move is REOPENING:
            self._move_to(DETACHED)
        if self.worker is not None:
            self.worker.sockets.pop(self.id, None)
        self.worker = None
        self.owed_credit = self.to_worker = 0  # the next worker starts with a whole window each way
        self._read_flow()
        while self.snapshots:
            self.snapshots.popleft().set_result(None)

    def reopen(self, worker: SocketChannel, mode: str, state: wire.SessState | None, from_release: str,
               group: str = "", size: int = 1) -> None:
        """Open the session on ``worker`` from ``state`` (or fresh). Its messages wait for
        ``resume``, so that a group's sessions are all open before any of them runs one."""
        assert self.opened is not None
        self.detach()
        self._move_to(REOPENING)
        seq = state.seq if state is not None else self.delivered
        frame = msgspec.structs.replace(self.opened, mode=mode, state=state.state if state else None,
                                        from_release=from_release, seq=seq, group=group, size=size)
        self.worker, self.release = worker, worker.release
        worker.sockets[self.id] = self
        worker.send(frame)
        self.replay = [message for number, message in self.unacked if number > seq] if state is not None else []
        self.unacked.clear()
        self.checkpoint = state if state is not None and self.checkpointing else None  # a snapshot is a checkpoint too
        self.delivered = seq

    def resume(self) -> None:
        """Replay what the state does not reflect, then the messages held during the move, in order."""
        self._move_to(ATTACHED)
        worker = self.worker
        replay, self.replay = self.replay, []
        held, self._held = self._held, []
        if worker is None:
            return
        for message in [*replay, *held]:
            if type(message) is wire.WsClose:
                worker.send(message)
            else:
                self._deliver(message)  # type: ignore[arg-type]

    def _abort(self) -> None:
        if not self.transport.is_closing():
            self.transport.abort()

    def _flush(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                if not self.accepted and data.startswith(b"HTTP/1.1 "):
                    # A handshake answer (ours, or websockets' own 400/426 to a bad one) is
                    # one chunk, the first thing written: its status, and its body as sent.
                    self.status = int(data[9:12])
                    self.sent += len(data) - (data.find(b"\r\n\r\n") + 4)
                else:
                    self.sent += len(data)
                self.transport.write(data)
            elif not self.transport.is_closing():
                self.transport.close()  # an empty chunk means: close the TCP connection

    # -- bytes from the client ---------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        self.last_seen = asyncio.get_running_loop().time()
        self.ping_sent = 0.0
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
        if frame.fin and (self.worker is not None or self.move in MOVING):
            data = b"".join(self.fragments)
            self.fragments = []
            if self.fragment_text:
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError:
                    self.protocol.fail(1007, "invalid UTF-8 in a text message")
                    return
                self._deliver(wire.WsMsg(self.id, text, None))
            else:
                self._deliver(wire.WsMsg(self.id, None, data))

    def _client_closed(self) -> None:
        received = self.protocol.close_rcvd
        self.closed = True
        self._tell_worker(received.code if received else 1006, received.reason if received else "")

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._flush()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.registry.discard(self)
        if not self.closed:
            self.closed = True
            self._tell_worker(1006, "")
        for timer in (self.close_timer, self.abort_timer):
            if timer is not None:
                timer.cancel()
        self.close_timer = self.abort_timer = None
        # Free the compressor state now, not when the last reference goes (the worker's Done
        # may come much later): a closed connection holds no zlib buffers.
        self.protocol.extensions = []
        self.stalled_since = 0.0
        if self.service is not None:
            self.service.websocket_gone(self)
        ended, self.ended = self.ended, None
        if ended is not None:
            ended(self)


def drain_delay(drain_timeout: float) -> float:
    """When to close a draining release's WebSocket: at the end of the drain timeout, spread
    over a jitter window so that clients do not all reconnect in the same instant."""
    window = min(5.0, drain_timeout / 2)
    return drain_timeout - window + random.random() * window
