"""L1 — the node's handle on one worker process: its frame channel, lifecycle and exit reason.

It implements ``ports.Channel``: frames for a request (or a WebSocket) are routed by id to
the ``ports.FrameTarget`` that started it (an exchange or a session, opaque here: the
supervisor never imports the gateway). The handle never decides anything: a lost
connection (the worker's death, seen at once as EOF) and every ``Done`` are reported to
its owner, the release's supervisor, which applies the policy.

It counts nothing: requests in flight and served are the router's (one owner per fact),
asked through ``ports.ReleaseOwner``. ``exchanges`` is the id -> target routing map, not a
count. Why the node ended it is ``exit_reason`` (``lifecycle.ExitReason``: whether it was
deliberate is decided there, in one place) plus ``exit_detail``, the human text. What it
measures of its process, when asked: RSS, and ``busy``, the cores it used over its last
second or so (CPU time from /proc, the scaler's second input besides the router's counts).

Under the native gateway the handle also holds ``data``, the node's end of the worker's
data socket, until the node hands it to the gateway, and ``stop_gate``: a drained
worker's ``Stop`` waits until the gateway said it has nothing in flight there (a request
the gateway already wrote to the data socket must not meet a worker that has stopped).
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import TYPE_CHECKING, Any, Callable

from anycore import wire
from anycore.framing import FrameProtocol
from anycore.lifecycle import ExitReason, Lifecycle, WorkerState
from anycore.ports import FrameTarget

if TYPE_CHECKING:
    from anycore.supervisor.zygote import ZygoteHandle


class WorkerHandle:
    def __init__(self, worker_id: int, release: str, slots: int, now: float,
                 on_ready: Callable[["WorkerHandle"], None],
                 on_failed_start: Callable[["WorkerHandle", str], None],
                 on_done: Callable[["WorkerHandle", Any, str | None], None],
                 on_lost: Callable[["WorkerHandle"], None],
                 clock: Callable[[], float] | None = None,
                 kill: Callable[[int, int], None] = os.kill,
                 on_enqueue: Callable[["WorkerHandle", wire.Enqueue], None] | None = None,
                 cpu_time: Callable[[int], float | None] | None = None) -> None:
        self.id = worker_id
        self.release = release
        self.slots = slots
        self.life: Lifecycle[WorkerState] = Lifecycle(f"worker {worker_id} of {release}", WorkerState.FORKING)
        self.pid = 0
        self.started_at = now
        self.last_tick = now
        self.exchanges: dict[int, FrameTarget] = {}  # requests by id (the exchange answering it)
        self.sockets: dict[int, FrameTarget] = {}  # WebSocket sessions by id: no slot, not in the router
        self.checks: dict[int, asyncio.Future[str | None]] = {}  # MigrateCheck answers by session id
        self.notices: list[asyncio.Future[wire.Notice]] = []
        # Frames of the calls this worker's code makes to other services (wire tags 21-29),
        # and None once when the worker is lost: the node's call router (node/calls.py).
        self.on_call: Callable[["WorkerHandle", wire.Frame | None], None] | None = None
        self.proto: FrameProtocol | None = None
        self.data: socket.socket | None = None  # native gateway: the data socket's node end, until handed over
        self.stop_gate: asyncio.Future[None] | None = None  # native gateway: Stop waits for its WorkerIdle
        self.exit_status: int | None = None
        self.exit_cause = ""
        self.gateway_reset: "asyncio.Future[None] | None" = None  # a native gateway's restart waits for GatewayResetDone
        self.exit_reason = ExitReason.CRASH  # why the node ended it (hang, recycle, drain, stop), if it did
        self.exit_detail = ""  # the human text of that reason: "served 10 requests (max_requests=10)"
        self.exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False
        self.lost_counts = (0, 0)  # (in flight, served) as the router had them when it was lost: for the log
        self.replacing = False  # a replacement is starting; drain this one once it is ready
        self.recycle_reason = ""
        self.zygote: "ZygoteHandle | None" = None  # the zygote that forked it (its parent)
        # Resolved when the worker is ready, failed if it dies or fails its startup first.
        self.ready_waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ready_waiter.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        self._on_ready = on_ready
        self._on_failed_start = on_failed_start
        self._on_done = on_done
        self._on_lost = on_lost
        self._clock = clock or asyncio.get_running_loop().time
        self._cpu_time = cpu_time or process_cpu_seconds
        self.busy = 0.0  # cores it used over its last measured interval (the scaler's CPU input)
        self._cpu_mark: tuple[float, float] | None = None  # (when, its CPU seconds then)
        self._kill = kill
        self._on_enqueue = on_enqueue  # the app's anycore.enqueue (node.jobs answers with Enqueued)

    @property
    def state(self) -> WorkerState:
        return self.life.state

    def end(self, reason: ExitReason, detail: str = "") -> None:
        """The node ends this worker for ``reason`` (set before the signal or the Stop)."""
        self.exit_reason, self.exit_detail = reason, detail

    def describe_end(self) -> str:
        """The reason as the log has always shown it: "hung: ...", "recycled: ...", "stopped",
        a failed start's own text; "" for a crash."""
        reason = self.exit_reason
        if reason is ExitReason.CRASH:
            return ""
        if reason is ExitReason.FAILED_START:
            return self.exit_detail
        return f"{reason.value}: {self.exit_detail}" if self.exit_detail else reason.value

    async def connect(self, sock: socket.socket) -> None:
        # The handle takes its protocol as soon as it exists: the worker's Ready can be read
        # (and a request dispatched to it) before this coroutine resumes.
        def protocol() -> FrameProtocol:
            self.proto = FrameProtocol(self._frame, self._lost)
            return self.proto

        await asyncio.get_running_loop().connect_accepted_socket(protocol, sock=sock)

    def send(self, frame: wire.Frame) -> None:
        if self.proto is not None:
            self.proto.send(frame)

    def stop(self) -> None:
        """Send ``Stop`` (drain and exit) now, or once ``stop_gate`` resolves."""
        gate = self.stop_gate
        if gate is None or gate.done():
            self.send(wire.Stop())
        else:
            gate.add_done_callback(lambda _: self.send(wire.Stop()))

    def start_request(self, exchange: FrameTarget, frame: wire.Req) -> None:
        self.exchanges[frame.id] = exchange
        self.send(frame)

    def _frame(self, frame: wire.Frame) -> None:
        kind = type(frame)
        if kind is wire.Resp or kind is wire.Body or kind is wire.Credit:
            exchange = self.exchanges.get(frame.id)  # type: ignore[union-attr]
            if exchange is not None:
                exchange.on_frame(frame)
            elif kind is wire.Credit and (session := self.sockets.get(frame.id)) is not None:  # type: ignore[union-attr]
                session.on_frame(frame)  # a WebSocket's app received client messages
        elif kind is wire.WsMsg or kind is wire.WsAccept or kind is wire.WsClose or kind is wire.SessState:
            session = self.sockets.get(frame.id)  # type: ignore[union-attr]
            if session is not None:
                session.on_frame(frame)
        elif kind is wire.Done and frame.id in self.sockets:  # type: ignore[union-attr]
            self.sockets.pop(frame.id)  # type: ignore[union-attr]
        elif kind is wire.Done:
            exchange = self.exchanges.pop(frame.id, None)  # type: ignore[union-attr]
            if exchange is not None:
                self._on_done(self, exchange, frame.error)  # type: ignore[union-attr]
        elif kind is wire.Tick:
            self.last_tick = self._clock()
        elif kind is wire.GatewayResetDone:
            if self.gateway_reset is not None and not self.gateway_reset.done():
                self.gateway_reset.set_result(None)  # node/native.py waits for it
        elif kind is wire.Ready:
            self.pid = self.pid or frame.pid  # type: ignore[union-attr]
            self._on_ready(self)
        elif kind is wire.StartFailed:
            self._on_failed_start(self, frame.reason)  # type: ignore[union-attr]
        elif kind is wire.MigrateChecked:
            check = self.checks.pop(frame.id, None)  # type: ignore[union-attr]
            if check is not None and not check.done():
                check.set_result(frame.error)  # type: ignore[union-attr]
        elif kind is wire.Notice and self.notices:
            self.notices.pop(0).set_result(frame)  # type: ignore[arg-type]
        elif (kind is wire.CallReq or kind is wire.CallBody or kind is wire.CallCredit or kind is wire.CallCancel) \
                and self.on_call is not None:
            self.on_call(self, frame)
        elif kind is wire.Enqueue:
            if self._on_enqueue is not None:
                self._on_enqueue(self, frame)  # type: ignore[arg-type]
            else:
                self.send(wire.Enqueued(frame.id, "", "this node runs no job queue"))  # type: ignore[union-attr]

    def check_migrate(self, frame: wire.MigrateCheck) -> "asyncio.Future[str | None]":
        """Dry-run a Session's migrate() here; resolves to None or the error with its traceback."""
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.checks[frame.id] = future
        self.send(frame)
        return future

    def notify(self, frame: wire.Notify) -> "asyncio.Future[wire.Notice]":
        future: asyncio.Future[wire.Notice] = asyncio.get_running_loop().create_future()
        self.notices.append(future)
        self.send(frame)
        return future

    def _lost(self, exc: Exception | None) -> None:
        self.proto = None
        if self.data is not None:
            self.data.close()
            self.data = None
        for check in self.checks.values():
            if not check.done():
                check.set_result("the worker running the check died")
        self.checks.clear()
        for notice in self.notices:
            if not notice.done():
                notice.set_result(wire.Notice(None, None, "the worker died"))
        self.notices.clear()
        if not self.lost:
            self.lost = True
            if self.on_call is not None:
                self.on_call(self, None)  # its calls in flight are cancelled
            self._on_lost(self)

    def signal(self, signum: int) -> None:
        if self.pid and not self.exited.done():
            try:
                self._kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def sample_busy(self, now: float, interval: float) -> float:
        """The cores it used since its last sample (``busy``), measured again once
        ``interval`` s have passed; the first call only sets the mark, so CPU spent before
        the caller started asking (imports, lifespan startup) never counts."""
        if self._cpu_mark is not None and now - self._cpu_mark[0] < interval:
            return self.busy
        cpu = self._cpu_time(self.pid) if self.pid else None
        if cpu is None:
            return self.busy
        if self._cpu_mark is not None:
            when, before = self._cpu_mark
            self.busy = max(0.0, (cpu - before) / (now - when)) if now > when else self.busy
        self._cpu_mark = (now, cpu)
        return self.busy

    def rss_mib(self) -> float:
        try:
            with open(f"/proc/{self.pid}/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, IndexError):
            return 0.0

    def info(self, now: float, inflight: int, served: int) -> dict[str, Any]:
        """For ``ps``: the counts are the router's, passed in by the supervisor."""
        return {
            "id": self.id, "pid": self.pid, "release": self.release, "state": self.state.value,
            "inflight": inflight, "slots": self.slots, "served": served, "websockets": len(self.sockets),
            "uptime": round(now - self.started_at, 1), "rss_mib": round(self.rss_mib(), 1),
            "cpu": round(self.busy, 2),
        }


_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (/proc), None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, ValueError, IndexError):
        return None
