"""Fakes for the service runtime's unit tests: a clock, a client connection under a real
``Exchange``, worker channels and a release supervisor that own the worker table, and a
client socket under a real ``WebSocketSession``. No process, no socket."""

from __future__ import annotations

import asyncio
import functools
import io
import json
from types import SimpleNamespace
from typing import Any, Awaitable, Callable

import msgspec
from websockets.frames import Frame, Opcode

from anycore import wire
from anycore.config import ServiceConfig
from anycore.gateway.exchange import Exchange
from anycore.gateway.websocket import WebSocketSession
from anycore.lifecycle import ExitReason, WorkerState
from anycore.log import NodeLog
from tests.unit import clock
from tests.unit.clock import until
from anycore.node.service import ServiceRuntime


def run(test: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """Run an async test in a fresh event loop."""
    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 10))
    return wrapper


class FakeClock(clock.FakeClock):
    def __init__(self, now: float = 1e9) -> None:  # far ahead of the loop's clock: a timer armed on the wrong clock never fires
        super().__init__(now)


class FakeConn:
    """The client connection under an ``Exchange``: collects what is written."""

    def __init__(self) -> None:
        self.closed = self.closing = self.writing_paused = False
        self.client = ("127.0.0.1", 40000)
        self.node_header = b"anycore-node: test\r\n"
        self.gateway = SimpleNamespace(node_header=self.node_header)  # where the exchange read it before issue 13
        self.out = bytearray()

    def write(self, data: bytes) -> None:
        self.out += data

    def response_done(self, exchange: Exchange) -> None:
        pass

    def abort(self) -> None:
        self.closed = True

    def body_flow(self, ok: bool) -> None:
        pass


def request(method: str = "GET", path: bytes = b"/", body: bytes = b"", expect_continue: bool = False) -> Exchange:
    exchange = Exchange(FakeConn(), method, path, b"", [(b"host", b"x")], "1.1", True,
                        len(body) if body else None, False, 0.0)
    exchange.expect_continue = expect_continue
    if body:
        exchange.feed_body(body)
        exchange.end_body()
    return exchange


def answer_of(exchange: Exchange) -> tuple[int, dict[str, Any]]:
    """(status, JSON body of a node-made answer, or {})."""
    head, _, body = bytes(exchange.conn.out).partition(b"\r\n\r\n")
    try:
        return exchange.status, json.loads(body)
    except ValueError:
        return exchange.status, {}


class FakeWorker:
    """A ``ports.Channel`` standing in for a ``WorkerHandle``: records the frames it is sent."""

    def __init__(self, owner: ServiceRuntime, worker_id: int, release: str, slots: int) -> None:
        self.owner = owner
        self.id, self.release, self.slots = worker_id, release, slots
        self.exchanges: dict[int, Exchange] = {}
        self.sockets: dict[int, WebSocketSession] = {}
        self.sent: list[wire.Frame] = []
        self.exit_reason = ExitReason.CRASH
        self.state = WorkerState.READY

    def send(self, frame: wire.Frame) -> None:
        self.sent.append(frame)

    def start_request(self, exchange: Exchange, frame: wire.Req) -> None:
        self.exchanges[frame.id] = exchange
        self.sent.append(frame)

    def started(self, exchange: Exchange) -> bool:
        return any(type(f) is wire.Req and f.id == exchange.id for f in self.sent)

    def answer(self, exchange: Exchange, status: int = 200) -> None:
        """The app answers and finishes (Resp, then Done), as a worker's socket delivers them."""
        exchange.on_frame(wire.Resp(exchange.id, status, [], b"ok", False))
        self.exchanges.pop(exchange.id)
        self.owner.on_done(self, exchange, None)


class FakeRelease:
    """A release supervisor: owns its ``workers`` table and reports to the service."""

    def __init__(self, owner: ServiceRuntime, name: str = "r1") -> None:
        self.owner = owner
        self.release = name
        self.workers: dict[int, FakeWorker] = {}
        self.live_since = 0.0
        self.launch = None
        self.woken = 0
        self.stopping = False
        self.stopped = False

    def start_worker(self, worker_id: int, slots: int = 1) -> FakeWorker:
        worker = FakeWorker(self.owner, worker_id, self.release, slots)
        self.workers[worker_id] = worker
        self.owner.worker_ready(worker)
        return worker

    def kill(self, worker: FakeWorker) -> None:
        """The worker's socket hit EOF: it crashed."""
        worker.state = WorkerState.EXITED
        self.owner.worker_lost(worker)
        del self.workers[worker.id]

    def promote(self) -> None:
        self.live_since = self.owner.clock()

    def wake(self) -> None:
        self.woken += 1

    def autoscale(self, *args: object) -> None:
        pass

    def info(self) -> dict[str, object]:
        return {"release": self.release}

    async def stop(self, timeout: float | None = None, on_drained: object = None) -> None:
        """Drain: each worker is told to stop, finishes its requests, exits."""
        self.stopping = True
        for worker in self.workers.values():
            worker.exit_reason = ExitReason.STOPPED
            self.owner.worker_draining(worker)
        await until(lambda: not any(w.exchanges for w in self.workers.values()), "the drained workers' requests")
        for worker in list(self.workers.values()):
            self.kill(worker)
        self.stopped = True


def service(clock: FakeClock, **config: object) -> tuple[ServiceRuntime, FakeRelease]:
    """A running service with a live (fake) release and no worker yet."""
    cfg = msgspec.convert({"name": "svc", **config}, ServiceConfig)
    runtime = ServiceRuntime("svc", "/srv", cfg, "r1", NodeLog(io.StringIO()), ("127.0.0.1", 8000), clock=clock)
    release = FakeRelease(runtime)
    runtime.shift(release, "/srv", cfg)  # type: ignore[arg-type]
    return runtime, release


# -- WebSockets -----------------------------------------------------------------------------
class FakeTransport:
    def __init__(self) -> None:
        self.out = bytearray()
        self.closing = False

    def set_protocol(self, protocol: object) -> None:
        pass

    def write(self, data: bytes) -> None:
        self.out += data

    def close(self) -> None:
        self.closing = True

    abort = close

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


HANDSHAKE = (b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def websocket(runtime: ServiceRuntime, path: str) -> WebSocketSession:
    """A client's WebSocket, upgraded and handed to the service (as the gateway does)."""
    session = WebSocketSession(FakeTransport(), ("127.0.0.1", 40001), ("127.0.0.1", 8000))
    assert session.start(HANDSHAKE % path.encode()) is not None
    runtime.open_websocket(session, session.open_frame(path, path.encode(), b"", [], ""))
    return session


def client_says(session: WebSocketSession, text: str) -> None:
    """A text message from the client, as masked bytes on its socket."""
    session.data_received(Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[]))
