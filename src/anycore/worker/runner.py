"""A worker's main: forked from the zygote, it builds its own uvloop loop and serves frames.

Order of life: run ASGI lifespan startup, say ``Ready`` (or ``StartFailed`` and exit 3),
then run one task per ``Req`` until ``Stop`` or until the node's socket closes.

Two sockets. Under the Python gateway every frame travels on the worker's one frame
socket. Under the native gateway (``anycore up --gateway native``) the worker also has a
*data socket*, whose other end the node hands to ``anycore-gateway``: HTTP requests
(``Req``/``Body``/``Credit``/``Cancel``) arrive there and their answers leave there, while
``Ready``, ``Tick``, ``Stop``, WebSockets and Sessions stay on the frame socket with the
node. There is one code path: a request's frames go back on the socket its ``Req`` came
from (the cycle keeps that socket's sender), whichever socket that is. A ``Tick``
frame leaves from the event loop itself every ``tick`` seconds: it is the liveness signal,
so a loop blocked by a handler (``time.sleep(60)``) stops ticking and the node notices.
``SIGUSR1`` makes faulthandler dump every thread's stack to stderr (the node's log)
before the node kills a hung worker. The worker always leaves through ``os._exit``: it
shares the zygote's inherited state and must not run its atexit handlers.

A WSGI worker runs its app on one thread per slot (``wsgi_threads.py``): the loop hands
each ``Req`` to a thread, the thread writes the answer to the socket itself, and the
ticker holds back its ``Tick`` while a thread is stuck in the app, so a hung thread is a
hung worker. Sessions of the same service still run on the loop.

Layer L1 (worker); runs in the worker process. It uses ``entry`` (to resolve hooks) and
the request runners (``asgi``, ``wsgi``, ``session``); the zygote imports it, never the reverse.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import socket
import sys
import time
import traceback
from typing import Any, Callable

import msgspec
import uvloop

from anycore import wire
from anycore.framing import FrameProtocol
from anycore.worker import calls
from anycore.worker.asgi import ASGIApp, Cycle, Lifespan, WsCycle, build_scope, build_ws_scope
from anycore.worker import jobs
from anycore.worker.entry import import_app
from anycore.worker.session import Session, SessionCycle, check_migrate
from anycore.worker.wsgi import WSGIApp, WsgiCycle, run_cycle, strict_validator
from anycore.worker.wsgi_threads import ChannelWriter, LockedFrameProtocol, WsgiThreads

BARRIER_TIMEOUT = 3.0  # a moving group's sessions wait this long for each other at most
DISCONNECT_GRACE = 0.5  # seconds an app has to notice http.disconnect before it is cancelled
RESYNC_TIMEOUT = 2.0  # a replaced native gateway: at most this long to get our writes out (GatewayReset)
EXIT_STARTUP_FAILED = 3


class WorkerServer:
    loop: asyncio.AbstractEventLoop  # set when main() runs
    send_frame: Callable[[wire.Frame], None]  # likewise
    calls: calls.CallClient  # likewise: the worker's end of anycore.call
    def __init__(self, app: ASGIApp, lifespan: bool, tick: float, readiness: str = "",
                 handlers: dict[str, type[Session]] | None = None, release: str = "",
                 wsgi_app: WSGIApp | None = None, slots: int = 1) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.slots = slots
        self.wsgi: WsgiThreads | None = None
        self.lost = False
        self.readiness = readiness
        self.use_lifespan = lifespan
        self.tick = tick
        self.release = release
        self.handlers = handlers or {}
        self.rooms: dict[str, set[SessionCycle]] = {}  # Session key -> its connections here
        self.barriers: dict[str, tuple[list[int], asyncio.Future[None]]] = {}
        self.cycles: dict[int, Cycle] = {}
        self.sockets: dict[int, WsCycle | SessionCycle] = {}
        self.stopping: asyncio.Future[None] | None = None
        self.proto: FrameProtocol | None = None
        # The native gateway's data socket (None under the Python gateway): for GatewayReset.
        self.data_transport: asyncio.BaseTransport | None = None
        self.data_proto: FrameProtocol | None = None
        self.data_writer: ChannelWriter | None = None
        self.jobs: jobs.JobChannel | None = None
        self.state: dict[str, Any] = {}

    async def main(self, sock: socket.socket, data: socket.socket | None = None) -> int:
        loop = self.loop = asyncio.get_running_loop()
        self.stopping = loop.create_future()
        factory = LockedFrameProtocol if self.wsgi_app is not None else FrameProtocol
        _, proto = await loop.connect_accepted_socket(lambda: factory(self.on_frame, self.on_lost), sock=sock)
        self.proto = proto
        self.send_frame = proto.send
        self.calls = calls.install(proto.send, loop)  # anycore.call from this worker's code
        self.jobs = jobs.bind(proto.send, loop)  # anycore.enqueue
        if self.wsgi_app is not None:
            writer = ChannelWriter(sock.fileno())
            proto.writer = writer  # type: ignore[attr-defined]
            self.wsgi = WsgiThreads(self.wsgi_app, self.slots, writer.write)
            self.wsgi.start()
        if data is not None:
            await self._connect_data(data, factory)
        lifespan = Lifespan(self.app) if self.use_lifespan else None
        if lifespan is not None:
            failure = await lifespan.startup()
            if failure is not None:
                print(f"lifespan startup failed: {failure}", file=sys.stderr, flush=True)
                proto.send(wire.StartFailed(f"ASGI lifespan startup failed: {failure}", ""))
                proto.close()
                await asyncio.sleep(0)
                return EXIT_STARTUP_FAILED
            self.state = lifespan.state
        if self.readiness:
            failure = await self._probe(self.readiness)
            if failure is not None:
                print(failure, file=sys.stderr, flush=True)
                proto.send(wire.StartFailed(failure, ""))
                proto.close()
                await asyncio.sleep(0)
                return EXIT_STARTUP_FAILED
        proto.send(wire.Ready(os.getpid()))
        ticker = asyncio.ensure_future(self._tick())
        await self.stopping
        # Drain: the node stops routing to us before sending Stop; finish what runs.
        pending = [c.task for c in [*self.cycles.values(), *self.sockets.values()] if c.task is not None]
        if pending:
            await asyncio.wait(pending)
        if self.wsgi is not None:
            if not self.lost:  # nobody would read the answers of the threads still running
                await self.wsgi.drained()
            self.wsgi.close()
        if lifespan is not None:
            failure = await lifespan.shutdown()
            if failure:
                print(f"lifespan shutdown failed: {failure}", file=sys.stderr, flush=True)
        ticker.cancel()
        proto.close()
        return 0

    async def _connect_data(self, data: socket.socket, factory: type[FrameProtocol]) -> None:
        """The native gateway's socket: requests read from it are answered on it. Its loss
        is the worker's (the gateway closes it only when the worker is removed). Connected
        before ``Ready``: the node hands it to the gateway only after that."""
        writer = ChannelWriter(data.fileno()) if self.wsgi is not None else None
        write = writer.write if writer is not None else None

        def protocol() -> FrameProtocol:
            proto = factory(lambda frame: self.on_frame(frame, proto.send, write), self.on_lost)
            if writer is not None:
                proto.writer = writer  # type: ignore[attr-defined]
            return proto

        self.data_transport, self.data_proto = await self.loop.connect_accepted_socket(protocol, sock=data)  # type: ignore[assignment]
        self.data_writer = writer

    def _gateway_reset(self, below: int) -> None:
        """The native gateway was replaced: its requests (data socket, id < ``below``) are
        cancelled; their answers, if any still leave, go to ids the new gateway ignores."""
        if self.wsgi is not None:
            for wsgi_cycle in list(self.wsgi.cycles.values()):
                if wsgi_cycle.id < below:
                    wsgi_cycle.disconnect()  # the thread goes on until the app returns; its output is dropped
        node = self.proto
        for cycle in list(self.cycles.values()):
            if cycle.id < below and getattr(cycle.send_frame, "__self__", node) is not node:
                cycle.disconnect()
                if cycle.task is not None:
                    self.loop.call_later(DISCONNECT_GRACE, cycle.task.cancel)
        self.loop.create_task(self._resync_data(below))

    async def _resync_data(self, below: int) -> None:
        """Bring the data socket to a frame boundary both ways, then say GatewayResetDone.
        In: the dead gateway may have left half a frame — dropped, with everything it wrote
        that is not read yet (no new gateway writes before the node hears Done). Out: what
        this worker wrote is whole frames once it is all in the kernel (the node reads and
        discards it meanwhile); the dead gateway's cycles, cancelled, write nothing more."""
        proto, transport = self.data_proto, self.data_transport
        if proto is not None and transport is not None:
            proto.discard_input()
            try:
                with socket.socket(fileno=os.dup(transport.get_extra_info("socket").fileno())) as sock:
                    while sock.recv(1 << 16, socket.MSG_DONTWAIT):
                        pass
            except OSError:
                pass
            deadline = self.loop.time() + RESYNC_TIMEOUT
            while proto.pending_output() and self.loop.time() < deadline:
                await asyncio.sleep(0.005)
            if self.data_writer is not None:  # no WSGI thread is half-way through a write
                await self.loop.run_in_executor(None, self.data_writer.lock.acquire)
                self.data_writer.lock.release()
        if self.proto is not None:
            self.proto.send(wire.GatewayResetDone(below))

    async def _probe(self, path: str) -> str | None:
        """Call the app with ``GET path`` in-process; None if it answered 2xx or 3xx."""
        sent: list[wire.Frame] = []
        req = wire.Req(0, "GET", path, path.encode(), b"", [(b"host", b"anycore-readiness")], "1.1", "http",
                       None, None, "", b"", False)
        if self.wsgi is not None:  # in the loop's thread: nothing else runs before Ready
            wsgi_cycle = WsgiCycle(req)
            wsgi_cycle.credit = 1 << 62
            written: list[bytes] = []
            written.append(run_cycle(self.wsgi.app, wsgi_cycle, self.wsgi.base, written.append))
            sent = list(_decode_frames(b"".join(written)))
            error = next((f.error for f in sent if type(f) is wire.Done), None)
            if error is not None and not any(type(f) is wire.Resp and f.status != 500 for f in sent):
                return f"readiness check GET {path} raised {error}"
        else:
            cycle = Cycle(req, sent.append)
            try:
                await self.app(build_scope(req, self.state), cycle.receive, cycle.send)
            except Exception as exc:  # noqa: BLE001 - reported as the readiness failure
                return f"readiness check GET {path} raised {type(exc).__name__}: {exc}"
        status = next((f.status for f in sent if type(f) is wire.Resp), None)
        if status is None:
            return f"readiness check GET {path} sent no response"
        if status >= 400:
            return f"readiness check GET {path} answered {status}"
        return None

    async def _tick(self) -> None:
        assert self.proto is not None
        while True:
            # A WSGI thread stuck in the app holds the ticks back: the node sees a hung worker.
            if self.wsgi is None or self.wsgi.stuck_for(time.monotonic()) <= self.tick:
                self.proto.send(wire.Tick())
            await asyncio.sleep(self.tick)

    def on_lost(self, exc: Exception | None) -> None:
        # The node is gone (or closed us): nobody can receive our answers any more.
        self.lost = True
        self.calls.lost()
        if self.jobs is not None:
            self.jobs.lost()
        if self.wsgi is not None:
            self.wsgi.disconnect_all()
        for cycle in self.cycles.values():
            cycle.disconnect()
            if cycle.task is not None:
                cycle.task.cancel()
        for ws in self.sockets.values():
            ws.closed = True
            ws.window.close()
            if ws.task is not None:
                ws.task.cancel()
        if self.stopping is not None and not self.stopping.done():
            self.stopping.set_result(None)

    def on_frame(self, frame: wire.Frame, reply: Callable[[wire.Frame], None] | None = None,
                 write: Callable[[bytes], None] | None = None) -> None:
        """A frame from the node (``reply`` None) or from the native gateway's data socket
        (``reply``/``write``: that socket's frame sender and, in a WSGI worker, its writer)."""
        kind = type(frame)
        if self.wsgi is not None and (kind is wire.Req or kind is wire.Body or kind is wire.Credit or kind is wire.Cancel):
            if kind is wire.Req:
                self.wsgi.submit(frame, write)  # type: ignore[arg-type]
            else:
                self.wsgi.on_frame(frame)
            return
        if type(frame) is wire.Req:
            cycle = Cycle(frame, reply or self.proto.send)  # type: ignore[union-attr]
            self.cycles[frame.id] = cycle
            cycle.task = self.loop.create_task(self._run(cycle, build_scope(frame, self.state), frame))
        elif type(frame) is wire.Body:
            cycle = self.cycles.get(frame.id)
            if cycle is not None:
                cycle.feed(frame.data, frame.more)
        elif type(frame) is wire.Credit:
            cycle = self.cycles.get(frame.id)
            if cycle is not None:
                cycle.add_credit(frame.n)
            elif (ws := self.sockets.get(frame.id)) is not None:
                ws.feed(frame)  # a WebSocket's send window
        elif type(frame) is wire.Cancel:
            cycle = self.cycles.get(frame.id)
            if cycle is not None:
                cycle.disconnect()
                task = cycle.task
                if task is not None:
                    asyncio.get_running_loop().call_later(DISCONNECT_GRACE, task.cancel)
        elif kind is wire.GatewayReset:
            self._gateway_reset(frame.below)  # type: ignore[attr-defined]
        elif kind is wire.CallResp or kind is wire.CallBody or kind is wire.CallCredit or kind is wire.CallEnd:
            self.calls.on_frame(frame)
        elif type(frame) is wire.WsOpen:
            if frame.handler not in self.handlers and frame.handler:
                self.send_frame(wire.WsClose(frame.id, 1011, f"no session handler {frame.handler} in this release"))
                self.send_frame(wire.Done(frame.id, "unknown session handler"))
            elif frame.handler:
                session = SessionCycle(frame, self.handlers[frame.handler], self)
                self.sockets[frame.id] = session
                session.task = asyncio.ensure_future(self._run_session(session))
            else:
                ws = WsCycle(frame, self.proto.send)  # type: ignore[union-attr]
                self.sockets[frame.id] = ws
                ws.task = asyncio.ensure_future(self._run_ws(ws, build_ws_scope(frame, self.state)))
        elif type(frame) is wire.WsMsg or type(frame) is wire.WsClose or type(frame) is wire.SessSnap:
            ws = self.sockets.get(frame.id)
            if ws is not None:
                ws.feed(frame)
            elif type(frame) is wire.SessSnap:
                self.send_frame(wire.SessState(frame.id, wire.SNAPSHOT, 0, None, "the session is not on this worker"))
        elif type(frame) is wire.MigrateCheck:
            handler = self.handlers.get(frame.handler)
            self.send_frame(wire.MigrateChecked(frame.id, check_migrate(handler, frame) if handler is not None else
                                                f"no session handler {frame.handler} in this release"))
        elif type(frame) is wire.Notify:
            asyncio.ensure_future(self._notify(frame))
        elif type(frame) is wire.Enqueued:
            if self.jobs is not None:
                self.jobs.answered(frame)
        elif type(frame) is wire.Stop:
            if self.stopping is not None and not self.stopping.done():
                self.stopping.set_result(None)

    async def _run_ws(self, ws: WsCycle, scope: dict[str, Any]) -> None:
        error: str | None = None
        try:
            await self.app(scope, ws.receive, ws.send)
        except asyncio.CancelledError:
            error = "cancelled"
        except BaseException as exc:  # noqa: BLE001 - closes the socket with 1011, never the worker
            error = f"{type(exc).__name__}: {exc}"
            print(f"error in WebSocket {scope['path']}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        if not ws.closed:
            ws.closed = True
            self.proto.send(wire.WsClose(ws.id, 1011 if error else 1000, ""))  # type: ignore[union-attr]
        del self.sockets[ws.id]
        self.proto.send(wire.Done(ws.id, error))  # type: ignore[union-attr]

    async def barrier(self, group: str, size: int) -> None:
        """A moving group's sessions wait here for each other before they snapshot (see
        wire.SessSnap). Bounded: a member that closed meanwhile never arrives."""
        if group not in self.barriers:
            self.barriers[group] = ([0], self.loop.create_future())
        count, done = self.barriers[group]
        count[0] += 1
        if count[0] >= size:
            del self.barriers[group]
            done.set_result(None)
            return
        try:
            await asyncio.wait_for(asyncio.shield(done), BARRIER_TIMEOUT)
        except asyncio.TimeoutError:
            self.barriers.pop(group, None)

    async def _run_session(self, session: SessionCycle) -> None:
        await session.run()
        del self.sockets[session.id]
        self.send_frame(wire.Done(session.id, None))

    async def _notify(self, frame: wire.Notify) -> None:
        """The release's client-notify hook: ``hook(from_release, to_release)`` returns the
        message (str or bytes; None for no message) the node sends to old connections."""
        try:
            outcome = import_app(frame.hook)(frame.from_release, frame.to_release)
            if asyncio.iscoroutine(outcome):
                outcome = await outcome
            if outcome is not None and not isinstance(outcome, (str, bytes)):
                raise TypeError(f"client_notify returned {type(outcome).__name__}; return str, bytes or None")
            notice = wire.Notice(outcome if isinstance(outcome, str) else None,
                                 outcome if isinstance(outcome, bytes) else None, None)
        except Exception as exc:  # noqa: BLE001 - reported, the deploy goes on
            print(f"client_notify {frame.hook} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            notice = wire.Notice(None, None, f"{type(exc).__name__}: {exc}")
        self.send_frame(notice)

    async def _run(self, cycle: Cycle, scope: dict[str, Any], req: wire.Req) -> None:
        calls.enter_request(req)  # in this request's own task: its calls inherit its deadline and ids
        error: str | None = None
        try:
            await self.app(scope, cycle.receive, cycle.send)
            if not cycle.started and not cycle.disconnected:
                error = "the app returned without sending a response"
        except asyncio.CancelledError:
            error = "cancelled"
        except BaseException as exc:  # noqa: BLE001 - any app failure becomes a 500, never a dead worker
            error = f"{type(exc).__name__}: {exc}"
            print(f"error in {scope['method']} {scope['path']}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        if error is not None and not cycle.started and not cycle.disconnected:
            body = b'{"error": "internal server error", "detail": "the service raised an exception; see `anycore logs`"}'
            cycle.send_frame(wire.Resp(cycle.id, 500, [(b"content-type", b"application/json")], body, False))
            cycle.started = cycle.complete = True
        elif cycle.started and not cycle.complete and error is None:
            error = "the app returned before finishing its response body"
        del self.cycles[cycle.id]
        cycle.send_frame(wire.Done(cycle.id, error))  # on the socket the Req came from


def redirect_output(log_fd: int) -> None:
    """Point fds 1 and 2 at the node's log socket for this process; dump stacks there on SIGUSR1."""
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(log_fd)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    faulthandler.enable(file=sys.stderr, all_threads=True)
    faulthandler.register(signal.SIGUSR1, file=sys.stderr, all_threads=True)


async def no_websocket(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The ASGI side of a WSGI service: WSGI has no WebSockets (its Sessions still work)."""
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})


_frames = msgspec.msgpack.Decoder(wire.Frame)


def _decode_frames(data: bytes) -> Any:
    view, start = memoryview(data), 0
    while start < len(data):
        size = int.from_bytes(view[start:start + 4], "big")
        yield _frames.decode(view[start + 4:start + 4 + size])
        start += 4 + size


def run_worker(app: Any, lifespan: bool, data_fd: int, log_fd: int, tick: float, readiness: str = "",
               handlers: dict[str, type[Session]] | None = None, release: str = "", wsgi: bool = False,
               slots: int = 1, gateway_fd: int = -1) -> None:
    """Entry point in the forked child; never returns. With ``wsgi`` the app is a WSGI
    callable, run on ``slots`` threads (wrapped in ``wsgiref.validate.validator`` when the
    service's env sets ``ANYCORE_WSGI_VALIDATE=1``, for tests). ``data_fd`` is the frame
    socket to the node; ``gateway_fd`` (>= 0 under the native gateway) the data socket."""
    code = 1
    try:
        redirect_output(log_fd)
        sock = socket.socket(fileno=data_fd)
        data = socket.socket(fileno=gateway_fd) if gateway_fd >= 0 else None
        wsgi_app = None
        if wsgi:
            wsgi_app = app
            if os.environ.get("ANYCORE_WSGI_VALIDATE") == "1":
                wsgi_app = strict_validator(app)
            app = no_websocket
        server = WorkerServer(app, lifespan, tick, readiness, handlers, release, wsgi_app, slots)
        code = uvloop.run(server.main(sock, data))
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
