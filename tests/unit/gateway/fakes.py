"""Fakes for driving the gateway without sockets: real code, no mocks.

- ``FakeTransport``: an asyncio transport in memory. It records what is written, honours
  ``pause_reading``/``resume_reading`` (``reading`` says which), ``close``/``abort`` and
  ``set_protocol`` (the WebSocket hand-off).
- ``FakeClock``: the connection's clock; tests move it and call ``check_due`` themselves,
  as the gateway's sweeper would.
- ``FakeSink``: a ``ports.RequestSink`` (a service as the gateway sees it). ``on_submit``
  decides what the service does with each request (take it, answer it, buffer its body);
  ``run`` starts a taken request on a ``FakeChannel`` the way the service runtime does.
- ``FakeChannel``: a ``ports.SocketChannel`` (a worker) that records the frames sent to it.
"""

from __future__ import annotations

from typing import Any, Callable

from anycore import wire
from anycore.gateway.exchange import Exchange
from anycore.gateway.http import HttpConnection, Limits
from anycore.gateway.server import Gateway
from anycore.log import NodeLog
from tests.unit.clock import FakeClock


class FakeTransport:
    def __init__(self, peer: tuple[str, int] = ("127.0.0.1", 40000)) -> None:
        self.written: list[bytes] = []
        self.reading = True
        self.pauses = 0
        self.closed = False
        self.aborted = False
        self.protocol: Any = None
        self._extra = {"peername": peer, "sockname": ("127.0.0.1", 8080)}

    # what the connection calls
    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._extra.get(name, default)

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.written.append(bytes(data))

    def pause_reading(self) -> None:
        assert self.reading, "paused twice"
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        assert not self.reading, "resumed while reading"
        self.reading = True

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = self.aborted = True

    def is_closing(self) -> bool:
        return self.closed

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    # what tests read
    @property
    def data(self) -> bytes:
        return b"".join(self.written)

    def take(self) -> bytes:
        out = self.data
        self.written.clear()
        return out


class FakeChannel:
    def __init__(self, id: int = 1, release: str = "svc@1") -> None:
        self.id = id
        self.release = release
        self.frames: list[wire.Frame] = []
        self.started: list[Any] = []
        self.sockets: dict[int, Any] = {}

    def send(self, frame: wire.Frame) -> None:
        self.frames.append(frame)

    def start_request(self, exchange: Any, frame: wire.Req) -> None:
        self.started.append(exchange)
        self.frames.append(frame)


class FakeSink:
    """A service: takes every request (``submitted``) unless ``on_submit`` says otherwise."""

    def __init__(self, name: str = "svc", routes: list[str] | None = None, max_body: int = 1 << 20) -> None:
        self.name = name
        self.release_id = f"{name}@1"
        self.routes = routes or ["/"]
        self.max_body = max_body
        self.submitted: list[Exchange] = []
        self.gone: list[Exchange] = []
        self.placed: list[Exchange] = []
        self.unreserved: list[Exchange] = []
        self.on_submit: Callable[[Exchange], None] | None = None

    def submit(self, exchange: Exchange, path: str) -> None:
        exchange.service = self
        exchange.path = path
        self.submitted.append(exchange)
        if self.on_submit is not None:
            self.on_submit(exchange)

    def place_buffered(self, exchange: Exchange) -> None:
        self.unreserve(exchange)
        self.placed.append(exchange)

    def unreserve(self, exchange: Exchange) -> None:
        self.unreserved.append(exchange)
        exchange.reserved, exchange.waiting = 0, False

    def client_gone(self, exchange: Exchange) -> None:
        self.gone.append(exchange)

    def open_websocket(self, session: Any, frame: wire.WsOpen) -> None:
        session.service = self

    def websocket_gone(self, session: Any) -> None:
        pass

    # the service runtime's part, done by hand
    def run(self, exchange: Exchange, worker: FakeChannel | None = None, now: float = 0.0) -> FakeChannel:
        worker = worker or FakeChannel()
        frame = exchange.request_frame(exchange.path, None)
        worker.start_request(exchange, frame)
        exchange.on_dispatched(worker, now)
        return worker


def answer(exchange: Exchange, body: bytes = b"ok", status: int = 200) -> None:
    """The worker's whole response, as one frame."""
    exchange.on_frame(wire.Resp(exchange.id, status, [(b"content-type", b"text/plain")], body, False))


def gateway(limits: Limits | None = None, sink: FakeSink | None = None) -> tuple[Gateway, FakeSink]:
    gw = Gateway(NodeLog(stream=_Discard()), limits or Limits())
    gw.set_node("n1")
    gw.starting = False
    sink = sink or FakeSink()
    gw.add_service(sink)
    return gw, sink


def connect(gw: Gateway, clock: FakeClock | None = None) -> tuple[HttpConnection, FakeTransport, FakeClock]:
    clock = clock or FakeClock()
    conn = HttpConnection(gw, clock=clock)
    transport = FakeTransport()
    conn.connection_made(transport)  # type: ignore[arg-type]
    return conn, transport, clock


class _Discard:
    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass


def reachable(table: dict, start: object, avoid: object = frozenset()) -> set:
    """The states a transition table can reach from ``start`` without passing through ``avoid``."""
    seen, todo = set(), [start]
    while todo:
        for nxt in table[todo.pop()]:
            if nxt not in seen and nxt not in avoid:  # type: ignore[operator]
                seen.add(nxt)
                todo.append(nxt)
    return seen
