"""L1 — the supervisor of one release on this node: its zygote and its workers.

``start`` imports the code in a zygote (an import error fails the release with the
traceback; nothing is retried: a broken import does not heal by itself), then forks
``target`` workers and waits until each has run its ASGI lifespan startup. After that the
release keeps ``target`` workers alive:

- A worker's death is seen at once as EOF on its frame socket; its in-flight requests go
  back to the service (retry or 502) right then. The exit cause (code, signal, OOM) comes
  from the zygote, which reaps its children, and is logged with the worker.
- An unexpected exit is restarted under the release's RestartPolicy (immediate, then
  backoff; crashlooping past the intensity limit).
- ``step(now)`` runs every ``HOUSEKEEPING`` seconds: a worker that has not ticked within
  ``hang_timeout`` is hung — its event loop, or every WSGI thread, is stuck (stacks dumped
  through faulthandler, then killed, then replaced); a worker past ``max_requests`` or
  ``max_rss`` is recycled: its replacement starts first and the old one drains only once
  the new one is ready.

Why the node ended a worker is its ``ExitReason``: a deliberate one (recycled, drained,
stopped) is never fed to the restart policy; a hang is, like a crash. The restart
intensity (``restart_intensity`` exits within ``restart_period``) comes from the service's
config. The supervisor owns every process it starts and stops them with a bound: drain
(Stop frame), wait up to the drain timeout, then SIGKILL; the zygote last. It owns its
tasks too (a ``TaskGroup``) and its timers, cancelled on stop: nothing it started acts on
a stopped release.

Counts for ``/metrics`` are plain ints in a ``WorkerCounts`` the owner hands in (it outlives
the release, so a retired release's restarts stay counted): a restart is counted by its
cause once the exit status is known (``restart_cause``), and a *cold start* is one
scale-up from zero workers while a request waited for one — the fork a scaled-to-zero
service pays on demand, counted once however many workers that scale-up forks (forks of
a deploy, a restart, or a scale-up of a release that still had a worker are not cold).

It reports to its owner through ``ports.ReleaseOwner`` and never imports ``node/``; the
router's counts (in flight, served) are asked of the owner, not kept here. The zygote
factory, the clock and the kill function are injected (defaults: ``start_zygote``, the
loop's clock, ``os.kill``), so tests/unit/supervisor runs it against a fake zygote.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Coroutine

from anycore.config import ServiceConfig
from anycore.errors import ReleaseFailed
from anycore.lifecycle import ExitReason, Lifecycle, ReleaseState, WorkerState
from anycore.log import NodeLog
from anycore.ports import ReleaseOwner
from anycore.supervisor.output import pump_output
from anycore.scaler.core import Limits, Reason, Scaler
from anycore.supervisor.oom import OomCounter
from anycore.supervisor.launch import Launch
from anycore.supervisor.policy import RestartPolicy
from anycore.supervisor.worker import WorkerHandle
from anycore.supervisor.zygote import ZygoteHandle, start_zygote
from anycore.tasks import TaskGroup

HOUSEKEEPING = 0.25
BUSY_INTERVAL = 1.0  # seconds of CPU time per measure of a worker's busy cores (the scaler's input)
HANG_DUMP_GRACE = 0.5  # between SIGUSR1 (faulthandler dumps every stack) and SIGKILL
ZygoteFactory = Callable[..., ZygoteHandle]  # start_zygote's signature
_worker_ids = itertools.count(1)


def describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


def restart_policy(config: ServiceConfig) -> RestartPolicy:
    """The release's restart policy, from its service's config."""
    return RestartPolicy(cap=config.restart_backoff_cap, intensity=config.restart_intensity,
                         period=config.restart_period)


def scaler_limits(config: ServiceConfig, override: tuple[int, int] | None = None) -> Limits:
    low, high = override if override is not None else (config.min_count, config.max_count)
    stable = max(2.0, min(60.0, config.scale_down_delay))
    return Limits(low, high, config.slots, config.target_utilization, config.scale_down_delay, config.keep_warm,
                  stable_window=stable, panic_window=max(1.0, stable / 10))


def restart_cause(worker: WorkerHandle) -> str:
    """The ``cause`` label of a restart: hung, oom, signal (killed: kill -9, a segfault),
    exit (the process exited by itself), or unknown (its exit status never came)."""
    if worker.exit_reason is ExitReason.HUNG:
        return "hung"
    if "OOM" in worker.exit_cause:
        return "oom"
    status = worker.exit_status
    if status is None:
        return "unknown"
    return "signal" if os.WIFSIGNALED(status) else "exit"


@dataclass
class WorkerCounts:
    """Cumulative counts of one service's releases, kept by their owner (see the module doc)."""

    restarts: dict[tuple[str, str], int] = field(default_factory=dict)  # (release, cause) -> restarts
    cold_starts: dict[str, int] = field(default_factory=dict)  # release -> scale-ups from zero


class ReleaseSupervisor:
    def __init__(self, owner: ReleaseOwner, release: str, directory: str, config: ServiceConfig, log: NodeLog,
                 launch: Launch | None = None, *, zygote_factory: ZygoteFactory = start_zygote,
                 clock: Callable[[], float] | None = None, kill: Callable[[int, int], None] = os.kill,
                 counts: WorkerCounts | None = None) -> None:
        self.owner = owner
        self.counts = counts if counts is not None else WorkerCounts()
        self._restarting: set[int] = set()  # workers whose exit was fed to the policy: counted once their cause is known
        self.launch = launch or Launch()
        self.release = release
        self.directory = directory
        self.config = config
        self.log = log
        self.life: Lifecycle[ReleaseState] = Lifecycle(f"release {release}", ReleaseState.STARTING)
        self.policy = restart_policy(config)
        self.zygote: ZygoteHandle | None = None
        self.workers: dict[int, WorkerHandle] = {}  # the one worker table (the router's view follows it)
        self.target = config.worker_count
        self.scaler = Scaler(scaler_limits(config, owner.scale_override))
        self.budget: int | None = None
        self.restarts = 0
        self.live_since = 0.0
        self.pending_restarts = 0  # crashed workers whose replacement waits out the backoff
        self.last_exit = ""
        self.failure = ""
        self.loop = asyncio.get_running_loop()
        self.clock = clock or self.loop.time
        self.tasks = TaskGroup(f"release {release}", self._task_failed)
        self._timers: set[asyncio.TimerHandle] = set()
        self._zygote_factory = zygote_factory
        self._kill = kill
        self._housekeeping: asyncio.Task[None] | None = None
        self._oom = OomCounter()
        self._oom.watch("self")  # the node's memory cgroup; the zygote's is added once it runs
        self._tick = min(1.0, config.hang_timeout / 4)
        self._stopping = False  # _stop_processes began: a zygote that goes now is not replaced

    @property
    def name(self) -> str:
        return self.owner.name

    def _spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any] | None:
        """An owned task; none once the release stopped (its group is closed)."""
        return self.tasks.offer(coro, name)

    def _later(self, delay: float, callback: Callable[..., None], *args: object) -> None:
        """A timer owned by the release: cancelled on stop, so none acts on a stopped release."""
        if self.tasks.closed:
            return

        def fire() -> None:
            self._timers.discard(handle)
            callback(*args)

        handle = self.loop.call_later(delay, fire)
        self._timers.add(handle)

    def _task_failed(self, task: str, exc: BaseException) -> None:
        self.log.event("release.task_failed", self.name, release=self.release, task=task, error=repr(exc)[:300])

    # -- start ------------------------------------------------------------------------
    async def start(self, on_imported: Callable[[], None] | None = None, warm: int | None = None) -> None:
        """Import the code and warm ``target`` workers; raises ReleaseFailed on any failure.

        The warm workers are ready but take no traffic until ``promote`` (the shift)."""
        self._start_zygote()
        try:
            await asyncio.wait_for(asyncio.shield(self.zygote.ready), self.config.startup_timeout)
            self._oom.watch(self.zygote.pid)
            self.log.event("release.imported", self.name, release=self.release, zygote_pid=self.zygote.pid, kind=self.zygote.kind)
            if on_imported is not None:
                on_imported()
            if warm is not None:
                self.target = max(1, min(warm, self.scaler.limits.max_workers))
            workers = [self._start_worker() for _ in range(self.target)]
            await asyncio.wait_for(asyncio.gather(*(self._until_ready(w) for w in workers if w is not None)),
                                   self.config.startup_timeout)
        except asyncio.TimeoutError:
            await self._fail(f"not ready within startup_timeout={self.config.startup_timeout}s")
        except ReleaseFailed as exc:
            await self._fail(exc.reason, exc.traceback)

    def _start_zygote(self) -> None:
        out_node, out_child = socket.socketpair()
        self.zygote = self._zygote_factory(
            self.release, self.directory, self.config.entry, self.config.env, self.config.slots, self._tick,
            self.config.readiness, self._on_forked, self._on_exited, out_child.fileno(),
            sessions=[route.handler for route in self.config.session_routes().values()], launch=self.launch,
        )
        out_child.close()
        self._spawn(pump_output(out_node, self.log, self.name, f"{self.release} zygote"), "zygote output")

    def _watch_zygote(self) -> None:
        zygote = self.zygote
        assert zygote is not None
        zygote.gone.add_done_callback(lambda _: self._zygote_gone(zygote))

    def _zygote_gone(self, zygote: ZygoteHandle) -> None:
        """A live release lost its zygote (killed; its workers die with it, PR_SET_PDEATHSIG):
        start a new one; the workers' restarts then fork from it."""
        if self.life.state is not ReleaseState.LIVE or zygote is not self.zygote or self._stopping:
            return
        self.log.event("release.zygote_lost", self.name, release=self.release, zygote_pid=zygote.pid,
                       action="starting a new zygote")
        self._spawn(self._restart_zygote(), "zygote restart")

    async def _restart_zygote(self) -> None:
        delay = self.policy.on_crash(self.clock(), 0.0).delay
        await asyncio.sleep(delay)
        if self.life.state is not ReleaseState.LIVE or self._stopping:
            return
        try:
            self._start_zygote()
            assert self.zygote is not None
            await asyncio.wait_for(asyncio.shield(self.zygote.ready), self.config.startup_timeout)
        except (ReleaseFailed, asyncio.TimeoutError, OSError) as exc:  # OSError: no fork/spawn possible now
            self.log.event("release.zygote_failed", self.name, release=self.release, error=str(exc)[:300])
            if self.zygote is not None:
                await self.zygote.stop(1.0)  # a zygote too slow to import must not be left behind
                self._zygote_gone(self.zygote)  # try again, with the policy's backoff
            return
        self._oom.watch(self.zygote.pid)
        self._watch_zygote()
        self.log.event("release.zygote_restarted", self.name, release=self.release, zygote_pid=self.zygote.pid)
        for _ in range(max(0, self.target - self.live_count() - self.pending_restarts)):
            self._start_worker()

    async def run_hook(self, context: dict[str, object]) -> None:
        """Run the release's migration hook in a child of its zygote; ReleaseFailed if it fails."""
        assert self.zygote is not None
        entry = self.config.migrate
        self.log.event("release.migrating", self.name, release=self.release, hook=entry)
        try:
            await self.zygote.run_hook(entry, context, self.config.startup_timeout, lambda sock: self._spawn(
                pump_output(sock, self.log, self.name, f"{self.release} migrate"), "migrate output"))
        except ReleaseFailed as exc:
            await self._fail(exc.reason, exc.traceback)

    async def guard(self, check: Awaitable[object]) -> None:
        """Run a pre-shift check (the Sessions' migrate dry-run); its ReleaseFailed fails this release."""
        try:
            await check
        except ReleaseFailed as exc:
            await self._fail(exc.reason, exc.traceback)
        except asyncio.TimeoutError:
            await self._fail("the Sessions' migrate() dry-run did not answer in time")

    def promote(self) -> None:
        """The shift: this release is live; its workers take traffic and are restarted if they die."""
        self.life.to(ReleaseState.LIVE)
        self.live_since = self.clock()
        self._watch_zygote()
        self._housekeeping = self._spawn(self._housekeep(), "housekeeping")

    async def _fail(self, reason: str, traceback: str = "") -> None:
        self.failure = reason
        self.log.event("release.failed", self.name, release=self.release, reason=reason)
        if traceback:
            self.log.output(self.name, f"{self.release} zygote", traceback.rstrip())
        await self._stop_processes(timeout=2.0)
        self.life.to(ReleaseState.FAILED)
        raise ReleaseFailed(self.release, reason, traceback)

    async def _until_ready(self, worker: WorkerHandle) -> None:
        await worker.ready_waiter

    def _start_worker(self) -> WorkerHandle | None:
        """Fork a worker; None while the zygote is lost (its restart forks up to target)."""
        assert self.zygote is not None
        if self.zygote.lost():
            return None
        worker = WorkerHandle(
            next(_worker_ids), self.release, self.config.slots, self.clock(),
            self._on_ready, self._on_failed_start, self.owner.on_done, self._on_lost, clock=self.clock, kill=self._kill,
            on_enqueue=self.owner.on_enqueue,
        )
        worker.zygote = self.zygote
        worker.on_call = getattr(self.owner, "on_call", None)  # calls from its code (node/calls.py)
        self.workers[worker.id] = worker
        if self.owner.data_sockets:  # the native gateway's: the worker's end reaches it through the zygote
            worker.data, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            frames, logs = self.zygote.fork(worker.id, data=far)
        else:
            frames, logs = self.zygote.fork(worker.id)
        self._spawn(worker.connect(frames), f"worker {worker.id} frames")
        self._spawn(pump_output(logs, self.log, self.name, f"{self.release} worker {worker.id}"), f"worker {worker.id} output")
        return worker

    # -- events from the zygote and the workers ----------------------------------------------
    def _on_forked(self, worker_id: int, pid: int) -> None:
        worker = self.workers.get(worker_id)
        if worker is None:
            return
        worker.pid = pid
        if worker.state is WorkerState.FORKING:
            worker.life.to(WorkerState.STARTING)
        self.log.event("worker.started", self.name, release=self.release, worker=worker_id, pid=pid)

    def _on_ready(self, worker: WorkerHandle) -> None:
        if worker.state is WorkerState.FORKING:
            # The worker's own socket can outrun the zygote's "forked" message.
            worker.life.to(WorkerState.STARTING)
        if worker.state is not WorkerState.STARTING:
            return
        worker.life.to(WorkerState.READY)
        worker.last_tick = self.clock()
        waiter = worker.ready_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        self.log.event("worker.ready", self.name, release=self.release, worker=worker.id, pid=worker.pid,
                       ms=round((self.clock() - worker.started_at) * 1000, 1))
        self.owner.worker_ready(worker)
        self._retire_replaced()

    def _on_failed_start(self, worker: WorkerHandle, reason: str) -> None:
        worker.end(ExitReason.FAILED_START, reason)
        waiter = worker.ready_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ReleaseFailed(self.release, reason))

    def _on_lost(self, worker: WorkerHandle) -> None:
        """EOF on the worker's socket: it is dead (or as good as dead) right now."""
        was = worker.state
        if was is not WorkerState.EXITED:
            worker.life.to(WorkerState.EXITED)
        worker.lost_counts = (self.owner.inflight(worker.id), self.owner.served_by(worker.id))
        self.owner.worker_lost(worker)
        if was is WorkerState.DRAINING:
            # A drained worker closes its socket, then exits by itself: give it a moment.
            self._later(2.0, worker.signal, signal.SIGKILL)
        else:
            worker.signal(signal.SIGKILL)  # closed its socket but lives on: of no use to anyone
        waiter = worker.ready_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ReleaseFailed(self.release, worker.describe_end() or "a worker exited during startup"))
        # Only a live release restarts. A deliberate exit is never fed in; a hang is not deliberate: it counts.
        deliberate = worker.exit_reason.deliberate or self.life.state is not ReleaseState.LIVE
        # A worker that died with its zygote is not a crash of its own: the zygote's restart
        # (one backoff step for all of them) forks the workers again. Counted one by one,
        # five workers would make the release crashlooping and could roll a deploy back.
        if not deliberate and not (worker.zygote is not None and worker.zygote.lost()):
            now = self.clock()
            decision = self.policy.on_crash(now, now - worker.started_at)
            self.restarts += 1
            self._restarting.add(worker.id)
            if decision.crashlooping:
                self.log.event("release.crashlooping", self.name, release=self.release, restarts=self.restarts,
                               next_restart_s=decision.delay)
                self.owner.release_crashlooping(self)
            self.log.event("worker.restarting", self.name, release=self.release, replaces=worker.id, delay_s=decision.delay)
            self.pending_restarts += 1
            self._later(decision.delay, self._replace)
        if worker.exit_status is not None or not worker.pid:
            self._forget(worker)
        else:
            # The exit status comes from the zygote in a moment; log without it if it never does.
            self._later(1.0, self._forget, worker)

    def _on_exited(self, pid: int, status: int) -> None:
        # Scanned, not indexed: exits are rare, and a second table by pid is one more to keep in step.
        worker = next((w for w in self.workers.values() if w.pid == pid), None)
        if worker is None:
            return
        worker.exit_status = status
        cause = describe_exit(status)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL and worker.exit_reason is ExitReason.CRASH:
            if self._oom.moved():
                cause = "killed by the kernel's OOM killer (SIGKILL)"
        if worker.describe_end():
            cause += f" ({worker.describe_end()})"
        worker.exit_cause = cause
        if not worker.exited.done():
            worker.exited.set_result(None)
        if worker.lost:
            self._forget(worker)

    def _forget(self, worker: WorkerHandle) -> None:
        if not worker.exited.done():
            worker.exited.set_result(None)  # its exit status will not come (its zygote died with it): nothing to wait for
        if self.workers.pop(worker.id, None) is None:
            return
        cause = worker.exit_cause or "unknown (exit status not reported)"
        if worker.id in self._restarting:
            self._restarting.discard(worker.id)
            key = (self.release, restart_cause(worker))
            self.counts.restarts[key] = self.counts.restarts.get(key, 0) + 1
        if not worker.exit_reason.deliberate:
            self.last_exit = f"worker {worker.id} (pid {worker.pid}): {cause}"
        inflight, served = worker.lost_counts
        self.log.event("worker.exited", self.name, release=self.release, worker=worker.id, pid=worker.pid, cause=cause,
                       inflight=inflight, served=served)

    def _replace(self) -> None:
        self.pending_restarts -= 1
        if self.life.state is ReleaseState.LIVE and self.zygote is not None and not self.zygote.gone.done():
            if self.live_count() < self.target:
                self._start_worker()

    def live_count(self) -> int:
        return sum(1 for w in self.workers.values() if w.state in (WorkerState.FORKING, WorkerState.STARTING, WorkerState.READY)
                   and not w.replacing)

    # -- scaling ---------------------------------------------------------------------------------
    def autoscale(self, now: float, budget: int | None, inflight: int, queued: int, rejected: int) -> None:
        """Apply the scaler's decision: fork up to the need at once; drain one idle worker at a time."""
        if self.life.state is not ReleaseState.LIVE:
            return
        self.budget = budget
        # A replacement waiting out its restart backoff counts as present: the scaler must
        # not undo the backoff of a crashlooping release by forking at once.
        current = self.live_count() + self.pending_restarts
        draining = sum(1 for w in self.workers.values() if w.state is WorkerState.DRAINING)
        busy = sum(w.sample_busy(now, BUSY_INTERVAL) for w in self.workers.values() if w.state is WorkerState.READY)
        self.scaler.observe(now, inflight, queued, rejected, busy)
        decision = self.scaler.decide(now, current, draining, budget)
        self.target = decision.desired
        if decision.desired > current:
            if current == 0 and queued:
                self.counts.cold_starts[self.release] = self.counts.cold_starts.get(self.release, 0) + 1
            self.log.event("scale.up", self.name, release=self.release, workers=current, desired=decision.desired,
                           reason=decision.reason.value, demand=decision.demand, busy=decision.busy)
            for _ in range(decision.desired - current):
                self._start_worker()
        elif decision.desired < current:
            # Demand fell: only a starting or idle worker goes. Over the limits (a smaller
            # share of the node, a lowered max): the least busy one drains even if busy;
            # draining lets its requests finish, it never kills one.
            victim = self._idlest(allow_busy=decision.reason is Reason.OVER_LIMITS)
            if victim is not None:
                self.log.event("scale.down", self.name, release=self.release, workers=current, desired=decision.desired,
                               worker=victim.id, reason=decision.reason.value)
                self._spawn(self.drain_worker(victim, ExitReason.DRAINED, "scaled down"), f"drain worker {victim.id}")

    def wanted(self) -> int:
        """Workers this release asks of the node's share: its target, or its need when a share
        held it below that need (within its limits). Asking only the clamped target would make
        the share vanish on the next tick, then come back: a fork/drain cycle every tick."""
        limits, last = self.scaler.limits, self.scaler.last
        need = max(last.stable_need, last.panic_need) if last is not None else 0
        return max(limits.min_workers, min(limits.max_workers, max(self.target, need)))

    def wake(self) -> None:
        """A request is waiting and no worker can take it: decide now instead of at the next tick."""
        self.owner.autoscale(self.clock(), self.budget)

    def _idlest(self, allow_busy: bool = False) -> WorkerHandle | None:
        """A worker to scale down: one still starting, else an idle one, else (``allow_busy``)
        the least busy one."""
        inflight = self.owner.inflight
        candidates = [w for w in self.workers.values() if not w.replacing and
                      (w.state in (WorkerState.FORKING, WorkerState.STARTING) or
                       (w.state is WorkerState.READY and (allow_busy or not inflight(w.id))))]
        return max(candidates, key=lambda w: (w.state is not WorkerState.READY, -inflight(w.id), w.started_at), default=None)

    # -- housekeeping: hangs, recycling, stability ---------------------------------------------
    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING)
            self.step(self.clock())

    def step(self, now: float) -> None:
        """One housekeeping pass at ``now``: stability, hangs, recycling."""
        if self.policy.on_stable(now):
            self.log.event("release.healthy", self.name, release=self.release)
        config = self.config
        for worker in list(self.workers.values()):
            if worker.state is not WorkerState.READY or worker.exit_reason is not ExitReason.CRASH:
                continue  # not serving yet, or already being ended
            if now - worker.last_tick > config.hang_timeout:
                self._hung(worker, now - worker.last_tick)
            elif worker.replacing:
                continue
            elif config.max_requests and (served := self.owner.served_by(worker.id)) >= config.max_requests:
                self._recycle(worker, f"served {served} requests (max_requests={config.max_requests})")
            elif config.max_rss and worker.rss_mib() > config.max_rss:
                self._recycle(worker, f"RSS {worker.rss_mib():.0f} MiB over max_rss={config.max_rss} MiB")

    def _hung(self, worker: WorkerHandle, stuck: float) -> None:
        # No Tick: an ASGI worker's event loop is stuck, or a WSGI worker's threads all are.
        worker.end(ExitReason.HUNG, f"worker stuck (no tick) for {stuck:.1f}s")
        self.log.event("worker.hung", self.name, release=self.release, worker=worker.id, pid=worker.pid,
                       stuck_s=round(stuck, 1), action="dumping stacks, then kill")
        worker.signal(signal.SIGUSR1)  # faulthandler writes every thread's stack to the log
        self._later(HANG_DUMP_GRACE, worker.signal, signal.SIGKILL)

    def _recycle(self, worker: WorkerHandle, why: str) -> None:
        """Start the replacement first; the old worker drains once the new one is ready."""
        worker.replacing = True
        worker.recycle_reason = why
        self.log.event("worker.recycling", self.name, release=self.release, worker=worker.id, reason=why)
        self._start_worker()

    def _retire_replaced(self) -> None:
        ready = sum(1 for w in self.workers.values() if w.state is WorkerState.READY and not w.replacing)
        for worker in list(self.workers.values()):
            if ready < self.target:
                break
            if worker.replacing and worker.state is WorkerState.READY:
                self._spawn(self.drain_worker(worker, ExitReason.RECYCLED, worker.recycle_reason), f"drain worker {worker.id}")

    async def drain_worker(self, worker: WorkerHandle, reason: ExitReason, detail: str = "") -> None:
        """Stop routing to it, let its requests finish (bounded), then stop it."""
        if worker.state in (WorkerState.DRAINING, WorkerState.EXITED):
            return
        worker.life.to(WorkerState.DRAINING)
        worker.end(reason, detail)
        self.owner.worker_draining(worker)
        worker.stop()
        try:
            await asyncio.wait_for(asyncio.shield(worker.exited), self.config.drain_timeout + 5)
        except asyncio.TimeoutError:
            worker.signal(signal.SIGKILL)

    # -- stop -----------------------------------------------------------------------------------
    async def stop(self, timeout: float | None = None, on_drained: Callable[[], None] | None = None) -> None:
        """Drain every worker (bounded by the drain timeout), then stop the zygote."""
        if self.life.state in (ReleaseState.LIVE, ReleaseState.STARTING):
            self.life.to(ReleaseState.DRAINING)
        await self._stop_processes(self.config.drain_timeout if timeout is None else timeout, on_drained)
        if self.life.state is ReleaseState.DRAINING:
            self.life.to(ReleaseState.RETIRED)
            self.log.event("release.retired", self.name, release=self.release)

    async def _stop_processes(self, timeout: float, on_drained: Callable[[], None] | None = None) -> None:
        self._stopping = True
        if self._housekeeping is not None:
            self._housekeeping.cancel()
        workers = list(self.workers.values())
        for worker in workers:
            if worker.state in (WorkerState.STARTING, WorkerState.READY):
                worker.life.to(WorkerState.DRAINING)
                if worker.exit_reason is ExitReason.CRASH:
                    worker.end(ExitReason.STOPPED)
                self.owner.worker_draining(worker)
                worker.stop()
            elif worker.state is WorkerState.FORKING:
                worker.end(ExitReason.STOPPED)
        pending = [w.exited for w in workers if not w.exited.done() and w.pid]
        if pending:
            await asyncio.wait(pending, timeout=timeout)
        for worker in workers:
            if not worker.exited.done():
                if worker.exit_reason is ExitReason.CRASH:
                    worker.end(ExitReason.STOPPED)
                worker.signal(signal.SIGKILL)
        pending = [w.exited for w in workers if not w.exited.done() and w.pid]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        if on_drained is not None:
            on_drained()
        if self.zygote is not None:
            await self.zygote.stop()
        for timer in self._timers:
            timer.cancel()  # pending restarts, kills, and forgets: the release is stopped
        self._timers.clear()
        for worker in [w for w in self.workers.values() if w.lost]:
            self._forget(worker)  # its exit status will not come now: log it without
        await self.tasks.close()

    # -- reporting ------------------------------------------------------------------------------
    def _scaler_info(self) -> dict[str, object]:
        limits, last = self.scaler.limits, self.scaler.last
        info: dict[str, object] = {"min": limits.min_workers, "max": limits.max_workers, "budget": self.budget,
                                   "desired": self.target, "actual": self.live_count()}
        if last is not None:
            info.update(reason=last.reason.value, demand=last.demand, busy=last.busy, stable_need=last.stable_need,
                        panic_need=last.panic_need, panic=last.panic)
        return info

    def info(self) -> dict[str, object]:
        now = self.clock()
        return {
            "release": self.release, "state": self.life.state.value, "crashlooping": self.policy.crashlooping,
            "target": self.target, "scaler": self._scaler_info(), "restarts": self.restarts, "last_exit": self.last_exit, "failure": self.failure,
            "zygote_pid": self.zygote.pid if self.zygote else None,
            "env": self.launch.env_name, "python": self.launch.python, "user": self.launch.user,
            "workers": [{**w.info(now, self.owner.inflight(w.id), self.owner.served_by(w.id)), "env": self.launch.env_name}
                        for w in sorted(self.workers.values(), key=lambda w: w.id)],
        }
