"""Fakes for running a real ``ReleaseSupervisor`` without processes: a fake zygote (the
injected factory), fake workers speaking wire frames over real socketpairs, a fake owner
(``ports.ReleaseOwner``), a fake clock and a recording kill function.

A ``FakeWorker`` is the far side of the frame socket the supervisor got from ``fork``: it
reads frames with the real ``anycore.framing.FrameProtocol`` and writes Ready/Tick like a
worker does. "Dying" is what a real death looks like to the node: EOF on the frame socket,
then the zygote's report of the exit status. Signals go to the recording kill function;
SIGKILL makes the fake worker die (status 9), SIGUSR1 does nothing (a real one would dump
its stacks). No pid of a fake is a real process: they start above any pid_max.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import re
import signal
import socket
from typing import Any, Callable

from anycore import wire
from anycore.config import ServiceConfig
from anycore.framing import FrameProtocol
from anycore.log import NodeLog
from anycore.supervisor.release import ReleaseSupervisor
from tests.unit.clock import FakeClock as Clock, until  # noqa: F401  (until: for the tests)

_pids = itertools.count(1 << 23)  # above the kernel's largest pid_max (2**22)


async def settle(turns: int = 20) -> None:
    """Let every ready callback run for a few loop turns (to see that something does NOT happen)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class FakeWorker:
    def __init__(self, zygote: "FakeZygote", worker_id: int, frames: socket.socket, logs: socket.socket) -> None:
        self.zygote = zygote
        self.id = worker_id
        self.pid = next(_pids)
        self.frames_sock = frames
        self.logs = logs
        self.received: list[wire.Frame] = []
        self.proto: FrameProtocol | None = None
        self.dead = False
        self.connected = asyncio.get_running_loop().create_future()

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> FrameProtocol:
            self.proto = FrameProtocol(self._frame, lambda exc: None)
            return self.proto

        await loop.connect_accepted_socket(protocol, sock=self.frames_sock)
        self.zygote.on_forked(self.id, self.pid)
        self.connected.set_result(None)
        if self.zygote.auto_ready:
            self.ready()

    def _frame(self, frame: wire.Frame) -> None:
        self.received.append(frame)
        if type(frame) is wire.Stop and self.zygote.exit_on_stop:
            self.die(0)  # drained: closes its socket and exits 0

    def stopped(self) -> bool:
        return any(type(f) is wire.Stop for f in self.received)

    def send(self, frame: wire.Frame) -> None:
        assert self.proto is not None
        self.proto.send(frame)

    def ready(self) -> None:
        self.send(wire.Ready(self.pid))

    def tick(self) -> None:
        self.send(wire.Tick())

    def die(self, status: int) -> None:
        """EOF on its sockets, then the zygote reports ``status`` (a raw wait status)."""
        if self.dead:
            return
        self.dead = True
        if self.proto is not None:
            self.proto.close()
        else:
            self.frames_sock.close()
        self.logs.close()
        self.zygote.on_exited(self.pid, status)

    def crash(self, code: int = 1) -> None:
        self.die(code << 8)


class FakeZygote:
    """What ``ReleaseSupervisor`` uses of a ``ZygoteHandle``."""

    def __init__(self, on_forked: Callable[[int, int], None], on_exited: Callable[[int, int], None]) -> None:
        loop = asyncio.get_running_loop()
        self.pid = next(_pids)
        self.kind = "asgi"
        self.on_forked = on_forked
        self.on_exited = on_exited
        self.ready: asyncio.Future[None] = loop.create_future()
        self.ready.set_result(None)
        self.gone: asyncio.Future[None] = loop.create_future()
        self.workers: list[FakeWorker] = []
        self.auto_ready = True
        self.exit_on_stop = True
        self.is_lost = False
        self._tasks: set[asyncio.Task[None]] = set()

    def lost(self) -> bool:
        return self.is_lost or self.gone.done()

    def fork(self, worker_id: int) -> tuple[socket.socket, socket.socket]:
        frames_node, frames_far = socket.socketpair()
        logs_node, logs_far = socket.socketpair()
        worker = FakeWorker(self, worker_id, frames_far, logs_far)
        self.workers.append(worker)
        task = asyncio.ensure_future(worker.connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return frames_node, logs_node

    def by_pid(self, pid: int) -> FakeWorker | None:
        return next((w for w in self.workers if w.pid == pid), None)

    async def run_hook(self, *args: Any) -> None:
        pass

    async def stop(self, timeout: float = 5.0) -> None:
        if not self.gone.done():
            self.gone.set_result(None)
        for worker in self.workers:
            if not worker.dead:
                worker.die(signal.SIGKILL)  # PR_SET_PDEATHSIG


class FakeOwner:
    """``ports.ReleaseOwner``, recording what the supervisor reports; the router's counts
    (in flight, served) are set by the test."""

    name = "svc"
    scale_override: tuple[int, int] | None = None
    data_sockets = False

    def __init__(self) -> None:
        self.ready: list[Any] = []
        self.draining: list[Any] = []
        self.lost: list[Any] = []
        self.crashlooping: list[Any] = []
        self.served: dict[int, int] = {}
        self.in_flight: dict[int, int] = {}

    def on_done(self, worker: Any, exchange: Any, error: str | None) -> None:
        pass

    def on_enqueue(self, worker: Any, frame: Any) -> None:
        pass

    def worker_ready(self, worker: Any) -> None:
        self.ready.append(worker)

    def worker_draining(self, worker: Any) -> None:
        self.draining.append(worker)

    def worker_lost(self, worker: Any) -> None:
        self.lost.append(worker)

    def release_crashlooping(self, release: Any) -> None:
        self.crashlooping.append(release)

    def autoscale(self, now: float, budget: int | None) -> None:
        pass

    def inflight(self, worker_id: int) -> int:
        return self.in_flight.get(worker_id, 0)

    def served_by(self, worker_id: int) -> int:
        return self.served.get(worker_id, 0)


_FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


class Harness:
    """One release under test: its supervisor, fakes, clock, log and the signals it sent."""

    def __init__(self, **config: Any) -> None:
        self.clock = Clock()
        self.owner = FakeOwner()
        self.log = NodeLog(io.StringIO())
        self.signals: list[tuple[int, int]] = []
        self.zygotes: list[FakeZygote] = []
        self.auto_ready = True  # new zygotes' workers send Ready as soon as they are connected
        self.config = ServiceConfig(name="svc", **config)
        self.sup = ReleaseSupervisor(self.owner, "svc@test", "/nonexistent", self.config, self.log,
                                     zygote_factory=self._factory, clock=self.clock, kill=self._kill)

    def _factory(self, release: str, directory: str, entry: str, env: dict[str, str], slots: int, tick: float,
                 readiness: str, on_forked: Callable[[int, int], None], on_exited: Callable[[int, int], None],
                 stdout: int, sessions: list[str] | None = None, launch: Any = None) -> FakeZygote:
        zygote = FakeZygote(on_forked, on_exited)
        zygote.auto_ready = self.auto_ready
        self.zygotes.append(zygote)
        return zygote

    def _kill(self, pid: int, signum: int) -> None:
        self.signals.append((pid, signum))
        worker = self.zygote.by_pid(pid)
        if signum == signal.SIGKILL and worker is not None:
            worker.die(signal.SIGKILL)

    @property
    def zygote(self) -> FakeZygote:
        return self.zygotes[-1]

    async def start(self) -> None:
        """Start and promote the release, with every worker ready."""
        await asyncio.wait_for(self.sup.start(), 5.0)
        self.sup.promote()

    def handle(self, fake: FakeWorker) -> Any:
        return self.sup.workers[fake.id]

    def events(self, name: str) -> list[dict[str, str]]:
        found = []
        for line in self.log.all:
            fields = {k: (v[1:-1].replace('\\"', '"') if v.startswith('"') else v) for k, v in _FIELD.findall(line)}
            if fields.get("event") == name:
                found.append(fields)
        return found

    async def close(self) -> None:
        await asyncio.wait_for(self.sup.stop(timeout=1.0), 5.0)


def run(test: Callable[[], Any]) -> None:
    asyncio.run(asyncio.wait_for(test(), 20.0))
