"""L2 — a service on this node: the facade the node, the gateway and the cluster talk to.

``ServiceRuntime`` is what the gateway hands requests to (``ports.RequestSink``) and what
a release supervisor reports to (``ports.ReleaseOwner``). It joins small parts, each with
one job, and keeps the service's lifecycle (releases shifted in, drained, stopped) itself:

- ``node.placement.Placement``: the executor around the pure router — placing, queueing,
  deadlines (504 queued via one expiry timer, 504 + Cancel running via ``sweep``);
- ``node.crashes.Crashes``: a dead worker's requests judged by ``router.crash`` — retried
  once, quarantined, or answered 502 — and the quarantine table;
- ``node.sockets.SocketHost``: WebSockets and Sessions, placed, moved on a drain,
  recovered on a death;
- ``dataplane`` (``node.native.NativeGateway``, None under the Python gateway): the native
  gateway, told of each worker ready, draining or lost and of each shift; it places the
  requests itself, and its Stats set the router's counts (``external_queued``: its queue).

One owner per fact: the worker table is the release supervisors' (``workers`` of the live,
draining and stopping releases; looked up by id, never copied here), request accounting
(in flight, served) is the router's. Every ``now`` comes from the injected ``clock``
(default: the loop's); the timers stay on the loop.

Refusals are counted in the node's ``RequestStats`` (``reject(service, reason)``, one
dict update) where they are decided: here (stopped, too large), in the placement (queue
full, deadline) and in the crash handling (quarantined). Restarts and cold starts are the
release supervisors', in the ``WorkerCounts`` this runtime keeps across its releases.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator

from anycore import wire
from anycore.config import ServiceConfig
from anycore.errors import AnycoreError
from anycore.lifecycle import Lifecycle, ServiceState
from anycore.log import NodeLog
from anycore.node.crashes import QUARANTINE_TTL, Crashes
from anycore.node.placement import Placement
from anycore.node.sessions import SessionPlacer
from anycore.node.sockets import SocketHost
from anycore.ports import DataPlane
from anycore.router.core import Router
from anycore.router.crash import MAX_ATTEMPTS
from anycore.stats import RequestStats
from anycore.supervisor.launch import Launch
from anycore.supervisor.release import ReleaseSupervisor, WorkerCounts

if TYPE_CHECKING:
    from anycore.gateway.exchange import Exchange
    from anycore.gateway.websocket import WebSocketSession
    from anycore.supervisor.worker import WorkerHandle

__all__ = ["QUARANTINE_TTL", "STOPPED_RETRY_AFTER", "ServiceRuntime"]
STOPPED_RETRY_AFTER = 5


class ServiceRuntime:
    def __init__(self, name: str, directory: str, config: ServiceConfig, release: str, log: NodeLog,
                 server: tuple[str, int] | None = None, *, clock: Callable[[], float] | None = None,
                 stats: RequestStats | None = None) -> None:
        self.name = name
        self.stats = stats if stats is not None else RequestStats()  # the node's one aggregate (anycore.stats)
        self.counts = WorkerCounts()  # restarts and cold starts of every release of this service
        self.directory = directory
        self.config = config
        self.release_id = release
        self.log = log
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.clock: Callable[[], float] = clock or self.loop.time
        self.life: Lifecycle[ServiceState] = Lifecycle(f"service {name}", ServiceState.RUNNING)
        self.release: ReleaseSupervisor | None = None
        self.draining: set[ReleaseSupervisor] = set()
        self._stopping: list[ReleaseSupervisor] = []  # releases being stopped by ``stop`` (neither live nor draining)
        self.previous: tuple[str, str, ServiceConfig] | None = None  # (release, directory, config)
        self.launch: Launch | None = None  # interpreter, user and variables of the live release
        self.on_crashloop: Callable[[ServiceRuntime, str], None] | None = None
        self.rolled_back = ""
        self.scale_override: tuple[int, int] | None = None  # `anycore scale` limits, kept across deploys
        self._rejected_seen = 0
        self.failed: list[dict[str, Any]] = []
        self.on_queued: Callable[[ServiceRuntime], None] | None = None  # the cluster: try a peer's free slot
        # Calls made by this service's workers to other services (node/calls.py; the node sets it).
        self.on_call: Callable[[Any, wire.Frame | None], None] | None = None
        self.on_enqueue_job: Callable[[Any, wire.Enqueue], None] | None = None  # node.jobs: a worker's anycore.enqueue
        self.on_slot_free: Callable[[ServiceRuntime], None] | None = None  # node.jobs: pull a job for a freed slot
        self.dataplane: DataPlane | None = None  # the native gateway (set before the first release)
        self.external_queued = 0  # requests queued in the native gateway, from its Stats
        self.external_buffering = 0  # bytes its request bodies being read hold, from its Stats
        self.spill: Any = None  # node.spill.NativeSpill: a peer's claim takes a slot through the native gateway
        self._reserved: set[int] = set()  # ids of peers' requests running here on a slot the gateway reserved
        self.placement = Placement(name, config, self.clock, self.worker, server, self._queued, log, self.stats)
        self.router: Router[Exchange] = self.placement.router
        self.crashes = Crashes(name, log, lambda: self.release_id, self.stats)
        self.sockets = SocketHost(self, config)
        self.sessions: SessionPlacer = self.sockets.sessions

    # -- what the gateway (ports.RequestSink) and the supervisor (ports.ReleaseOwner) ask ----
    @property
    def routes(self) -> list[str]:
        return self.config.routes

    @property
    def max_body(self) -> int:
        return self.config.max_body

    @property
    def data_sockets(self) -> bool:
        """Whether workers get a data socket: under the native gateway."""
        return self.dataplane is not None

    @property
    def queued(self) -> int:
        return len(self.router.queue) + self.external_queued

    def inflight(self, worker_id: int) -> int:
        return self.router.inflight_of(worker_id)

    def served_by(self, worker_id: int) -> int:
        return self.router.served_by(worker_id)

    @property
    def served(self) -> int:
        return self.router.served

    @property
    def buffering(self) -> int:
        return self.placement.buffering + self.external_buffering

    @property
    def quarantined(self) -> int:
        return self.crashes.quarantined

    # -- the worker table (the release supervisors') ------------------------------------------
    def _releases(self) -> Iterator[ReleaseSupervisor]:
        if self.release is not None:
            yield self.release
        yield from self.draining
        yield from self._stopping

    def worker(self, worker_id: int) -> "WorkerHandle | None":
        """The worker with this id, in the live, a draining or a stopping release."""
        live = self.release
        if live is not None and (found := live.workers.get(worker_id)) is not None:
            return found
        for release in self._releases():
            if (found := release.workers.get(worker_id)) is not None:
                return found
        return None

    def all_workers(self) -> Iterator["WorkerHandle"]:
        for release in self._releases():
            yield from release.workers.values()

    def accepting_workers(self) -> list["WorkerHandle"]:
        """The workers taking new traffic (for WebSocket placement)."""
        return [w for slots in self.router.workers.values() if slots.accepting and (w := self.worker(slots.id)) is not None]

    # -- lifecycle ------------------------------------------------------------------------
    #
    # ``release`` is the live release (None while stopped); ``draining`` holds old releases
    # finishing their in-flight requests after a shift, any number at once. ``directory``,
    # ``config`` and ``release_id`` describe the release that is (or was last) live, which
    # is what ``start`` brings back.

    def new_release(self, release: str, directory: str, config: ServiceConfig, launch: Launch | None = None) -> ReleaseSupervisor:
        return ReleaseSupervisor(self, release, directory, config, self.log, launch, counts=self.counts)

    async def start(self) -> None:
        """Turn on the last live release again (raises ReleaseFailed)."""
        release = self.new_release(self.release_id, self.directory, self.config, self.launch)
        await release.start()
        self.shift(release, self.directory, self.config)

    def shift(self, new: ReleaseSupervisor, directory: str, config: ServiceConfig) -> ReleaseSupervisor | None:
        """New requests go to ``new`` from now on; returns the previous live release, to drain."""
        old = self.release
        if old is not None:
            self.previous = (old.release, self.directory, self.config)
            self.draining.add(old)
            for worker in old.workers.values():
                self.router.stop_accepting(worker.id)
        self.release, self.release_id, self.directory, self.config = new, new.release, directory, config
        self.launch = new.launch
        self.placement.configure(config)
        self.sockets.configure(config)
        new.promote()
        if self.life.state is ServiceState.STOPPED:
            self.life.to(ServiceState.RUNNING)
        for worker in new.workers.values():
            if worker.id in self.router.workers:
                self.router.set_accepting(worker.id, True)
        def shifted() -> None:  # the shift's instant: under the native gateway, once it applied it
            self.log.event("service.shifted", self.name, release=new.release, previous=old.release if old else None,
                           workers=len(new.workers))

        if self.dataplane is not None:
            self.dataplane.shifted(self, list(old.workers.values()) if old is not None else [], shifted)
        else:
            shifted()
        self.placement.drain_queue()
        return old

    def notify_clients(self, new: ReleaseSupervisor, old: ReleaseSupervisor) -> None:
        self.sessions.tasks.offer(self.sessions.notify(new, old), "notify clients")

    async def retire(self, old: ReleaseSupervisor, on_drained: Callable[[], None] | None = None) -> None:
        """Let an old release finish its in-flight requests (bounded by drain_timeout), then stop it."""
        try:
            await old.stop(on_drained=on_drained)
        finally:
            self.draining.discard(old)

    async def stop(self, timeout: float | None = None) -> None:
        """Turn off: new requests get 503, queued and in-flight ones finish (bounded)."""
        if self.life.state is ServiceState.RUNNING:
            self.life.to(ServiceState.STOPPED)
            if self.dataplane is not None:
                self.dataplane.service_changed(self)  # 503 "stopped" from now on
        # Queued requests were accepted: they are served before the workers go.
        bound = self.clock() + (self.config.drain_timeout if timeout is None else timeout)
        while self.router.queue and self.router.capacity and self.clock() < bound:
            await asyncio.sleep(0.02)
        live, self.release = self.release, None
        releases = [r for r in (live, *self.draining) if r is not None]
        if releases:
            self.log.event("service.stopping", self.name, release=self.release_id, inflight=self.router.inflight,
                           queued=len(self.router.queue))
            self._stopping = [live] if live is not None else []  # its workers are still looked up while they drain
            try:
                await asyncio.gather(*(r.stop(timeout) for r in releases))
            finally:
                self._stopping = []
            self.draining.clear()
        for exchange in [p.item for p in self.router.queue]:
            self.router.cancel(exchange)
            self.stats.reject(self.name, "stopped")
            exchange.fail(503, "service stopped", f"service {self.name} was stopped — `anycore start {self.name}`",
                          STOPPED_RETRY_AFTER)
        # Nothing of the stopped service runs on: a session move under way ends now (its
        # client was closed with 1012, its move abandoned); a later start begins with none.
        if self.sessions.tasks:
            await asyncio.wait(list(self.sessions.tasks.tasks), timeout=1.0)
        self.sessions.tasks.cancel()
        self.placement.close()
        self.log.event("service.stopped", self.name)

    def autoscale(self, now: float, budget: int | None) -> None:
        if self.release is None or self.life.state is ServiceState.STOPPED:
            return
        rejected, self._rejected_seen = self.router.rejected - self._rejected_seen, self.router.rejected
        # Open WebSockets are demand too: never scale to zero under a connected client.
        sockets = any(w.sockets for w in self.all_workers())
        self.release.autoscale(now, budget, max(self.router.inflight, int(sockets)), self.queued, rejected)

    def set_limits(self, low: int | None, high: int | None) -> tuple[int, int]:
        """`anycore scale`: new worker limits for the live release and later ones; no restart."""
        if self.release is None:
            raise AnycoreError(f"service {self.name} is stopped — `anycore start {self.name}` first")
        limits = self.release.scaler.limits
        low = limits.min_workers if low is None else low
        high = limits.max_workers if high is None else high
        if low < 0 or high < 1 or low > high:
            raise AnycoreError(f"invalid limits min={low} max={high}: need 0 <= min <= max and max >= 1")
        self.scale_override = (low, high)
        self.release.scaler.limits = dataclasses.replace(limits, min_workers=low, max_workers=high)
        self.log.event("scale.limits", self.name, release=self.release_id, min=low, max=high)
        return low, high

    def release_crashlooping(self, release: ReleaseSupervisor) -> None:
        """A live release crashloops: roll back if it was shifted in within ``rollback_window``."""
        if release is not self.release or self.previous is None or self.on_crashloop is None:
            return
        since = self.clock() - release.live_since
        if since <= self.config.rollback_window:
            self.rolled_back = (f"{release.release} crashlooped {since:.1f}s after its shift "
                                f"(rollback_window={self.config.rollback_window:.0f}s); rolled back to {self.previous[0]}")
            self.log.event("release.rollback", self.name, release=release.release, to=self.previous[0],
                           reason="crashlooping after shift", seconds_after_shift=round(since, 1))
            self.on_crashloop(self, self.previous[0])

    def record_failure(self, release: str, reason: str) -> None:
        self.failed.append({"release": release, "reason": reason, "at": time.time()})
        del self.failed[:-5]

    # -- requests from the gateway -----------------------------------------------------------
    def _refuse_stopped(self, exchange: "Exchange") -> bool:
        if self.life.state is not ServiceState.STOPPED:
            return False
        self.stats.reject(self.name, "stopped")
        exchange.fail(503, "service stopped", f"service {self.name} is stopped — `anycore start {self.name}`",
                      STOPPED_RETRY_AFTER)
        return True

    def submit(self, exchange: "Exchange", path: str) -> None:
        """A parsed request routed here. (A ``100 Continue`` is the gateway's to send.)"""
        exchange.service = self
        exchange.path = path
        if self._refuse_stopped(exchange):
            return
        if exchange.content_length is not None and exchange.content_length > self.config.max_body:
            self.stats.reject(self.name, "too_large")
            exchange.fail(413, "payload too large",
                          f"request body of {exchange.content_length} bytes exceeds max_body={self.config.max_body}")
            return
        if self.crashes.quarantine and self.crashes.refuses(exchange, self.clock()):  # the table is nearly always empty
            return
        self.placement.admit(exchange)

    def place_buffered(self, exchange: "Exchange") -> None:
        """A waiting request's body is complete (or request_buffer of it is here): place it.
        Its deadline starts now: the upload's own pace is bounded by body_timeout."""
        self.placement.unreserve(exchange)
        if not self._refuse_stopped(exchange):
            self.placement.start_deadline(exchange)

    def unreserve(self, exchange: "Exchange") -> None:
        self.placement.unreserve(exchange)

    def _queued(self) -> None:
        if self.on_queued is not None:
            self.on_queued(self)
        if self.release is not None and not self.router.any_accepting:
            self.release.wake()  # scaled to zero (or all busy starting): fork now, not at the next tick

    async def accept_remote(self, exchange: "Exchange") -> bool:
        """A peer's claim: run ``exchange`` here only if a slot is free right now (never queue it).
        Under the native gateway its router holds the slots: one is reserved there first."""
        if self.life.state is ServiceState.STOPPED or self.release is None:
            return False
        if self.dataplane is None:
            if not self.router.can_place():
                return False
            exchange.service = self
            self.placement.place(exchange, self.clock(), front=False)
            return True
        if self.spill is None:
            return False
        worker_id = await self.spill.reserve(self.name)
        if worker_id is None:
            return False
        if self.life.state is ServiceState.STOPPED or self.worker(worker_id) is None:
            self.spill.unreserve(worker_id)  # stopped, or the worker went, during the round trip
            return False
        exchange.service = self
        self._reserved.add(exchange.id)
        self.placement.place_reserved(exchange, worker_id, self.clock())
        return True

    def submit_job(self, exchange: "Exchange", deadline: float) -> None:
        """A job pulled from the work queue (``node.jobs``): placed like a request on the live
        release, with the job's own deadline (``job_timeout``)."""
        exchange.service = self
        if self._refuse_stopped(exchange):
            return
        exchange.deadline = deadline
        self.placement.place(exchange, self.clock(), front=False)

    def requeue(self, exchange: "Exchange") -> None:
        """A request back from a peer (refused claim, or the peer was lost before it started)."""
        exchange.worker, exchange.release, exchange.node = None, "", ""
        self.placement.place(exchange, self.clock(), front=True)

    def sweep(self, now: float) -> None:
        """Called every node tick: running requests past their deadline get 504 and a Cancel."""
        self.placement.sweep(now, [e for w in self.all_workers() for e in list(w.exchanges.values())])

    def client_gone(self, exchange: "Exchange") -> None:
        self.placement.cancel(exchange)

    # -- events from workers --------------------------------------------------------------------
    def on_done(self, worker: "WorkerHandle", exchange: "Exchange", error: str | None) -> None:
        self.placement.done(worker, exchange, error)
        if self._reserved and exchange.id in self._reserved:
            self._reserved.discard(exchange.id)
            if self.spill is not None:
                self.spill.unreserve(worker.id)
        if self.on_slot_free is not None:
            self.on_slot_free(self)

    def on_enqueue(self, worker: "WorkerHandle", frame: wire.Enqueue) -> None:
        if self.on_enqueue_job is not None:
            self.on_enqueue_job(worker, frame)
        else:
            worker.send(wire.Enqueued(frame.id, "", "this node runs no job queue"))

    def worker_ready(self, worker: "WorkerHandle") -> None:
        """A worker finished its startup; it takes traffic only if its release is live."""
        live = self.release is not None and worker.release == self.release.release and self.release.live_since > 0
        self.router.add_worker(worker.id, worker.slots, accepting=live and self.life.state is ServiceState.RUNNING)
        if self.dataplane is not None:
            self.dataplane.add_worker(self, worker)
        self.placement.drain_queue()
        self.sessions.worker_ready()
        if self.on_slot_free is not None:
            self.on_slot_free(self)

    def _serving(self) -> bool:
        return self.release is not None and self.life.state is ServiceState.RUNNING

    def worker_draining(self, worker: "WorkerHandle") -> None:
        """Stop routing to it; its Sessions move to a live worker, its ASGI WebSockets close
        with 1012 at the end of the drain timeout."""
        self.router.stop_accepting(worker.id)
        if self.dataplane is not None:
            self.dataplane.draining(worker)
        self.sockets.worker_draining(worker, self._serving(), self.config.drain_timeout)

    def worker_lost(self, worker: "WorkerHandle") -> None:
        """One pass per concern: its sockets, its router entry, then its requests' verdicts."""
        self.sockets.worker_lost(worker, self._serving())
        self.router.remove_worker(worker.id)
        if self.dataplane is not None:
            self.dataplane.remove_worker(worker)
        lost = list(worker.exchanges.values())
        worker.exchanges.clear()
        for exchange in lost:
            if exchange.id in self._reserved:
                # Its reserved slot went with the worker; a retry here would hold no slot of the
                # gateway's, so the peer's request is answered by the crash rule without one.
                self._reserved.discard(exchange.id)
                exchange.attempts = max(exchange.attempts, MAX_ATTEMPTS)
        now = self.clock()
        self.crashes.apply(worker.id, lost, now, lambda exchange: self.placement.place(exchange, now, front=True))
        self.placement.drain_queue()

    # -- WebSockets --------------------------------------------------------------------------
    def open_websocket(self, session: "WebSocketSession", frame: wire.WsOpen) -> None:
        """Place a WebSocket on the least-loaded accepting worker (it takes no slot)."""
        if self.life.state is ServiceState.STOPPED or self.release is None:
            session.reject(503, f"service {self.name} is stopped\n")
            return
        session.service = self
        if not self.sockets.open(session, frame):
            self.release.wake()
            session.reject(503, f"service {self.name} has no worker ready; retry\n")

    def websocket_gone(self, session: "WebSocketSession") -> None:
        self.sockets.gone(session)

    # -- reporting -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        release = self.release.info() if self.release is not None else None
        return {
            "name": self.name, "state": self.life.state.value, "release": self.release_id,
            "draining": [r.info() for r in self.draining], "failed": self.failed, "rolled_back": self.rolled_back,
            "directory": self.directory, "routes": self.config.routes, "slots": self.config.slots,
            "queued": self.queued, "queued_bytes": self.router.queued_bytes,
            "buffering_bytes": self.buffering,
            "inflight": self.router.inflight, "served": self.served, "rejected": self.router.rejected,
            "expired": self.router.expired, "quarantined": self.quarantined, "live": release,
            "websockets": sum(len(w.sockets) for w in self.all_workers()),
            "sessions_moved": self.sessions.moved, "sessions_recovered": self.sessions.recovered,
            "worker_restarts": [{"release": release, "cause": cause, "count": n}
                                for (release, cause), n in sorted(self.counts.restarts.items())],
            "cold_starts": [{"release": release, "count": n} for release, n in sorted(self.counts.cold_starts.items())],
        }
