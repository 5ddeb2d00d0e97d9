"""A service on this node: its router (pure) wired to its live release's workers.

This is the executor around ``router.core.Router``: it turns the router's decisions into
frames, timers and answers, and feeds back what happens (a slot freed, a worker ready,
draining or dead). Deadlines: a queued request is expired by one timer armed at the
earliest queued deadline (504, never reaching a worker); running requests are checked on
every node tick (``sweep``, 0.25 s): past the deadline they get 504 (if the response has not
started) and a Cancel to the worker, without a timer object per request.

When a worker dies, each of its in-flight requests is retried once at the head of the
queue if it is safe (GET/HEAD/OPTIONS, nothing sent, no body consumed); otherwise it gets
a 502 saying what happened. A request that crashed two workers is quarantined: answered
502, recorded, and identical requests (method, path, query) are refused for
``QUARANTINE_TTL`` seconds so one poison request cannot take down the fleet.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any, Callable

from anycore import wire
from anycore.config import ServiceConfig
from anycore.errors import AnycoreError
from anycore.gateway.websocket import drain_delay
from anycore.lifecycle import Lifecycle, ServiceState
from anycore.log import NodeLog
from anycore.node.sessions import SessionPlacer, SessionRoutes
from anycore.router.core import Placed, Queued, Rejected, Router
from anycore.router.crash import retryable
from anycore.supervisor.launch import Launch
from anycore.supervisor.release import ReleaseSupervisor

if TYPE_CHECKING:
    from anycore.gateway.exchange import Exchange
    from anycore.gateway.websocket import WebSocketSession
    from anycore.supervisor.worker import WorkerHandle

QUARANTINE_TTL = 300.0
STOPPED_RETRY_AFTER = 5


class ServiceRuntime:
    def __init__(self, name: str, directory: str, config: ServiceConfig, release: str, log: NodeLog,
                 server: tuple[str, int] | None = None) -> None:
        self.name = name
        self.directory = directory
        self.config = config
        self.release_id = release
        self.log = log
        self.server = server
        self.life: Lifecycle[ServiceState] = Lifecycle(f"service {name}", ServiceState.RUNNING)
        self.router: Router[Exchange] = Router(config.max_queue, config.max_queue_bytes)
        self.release: ReleaseSupervisor | None = None
        self.draining: set[ReleaseSupervisor] = set()
        self.previous: tuple[str, str, ServiceConfig] | None = None  # (release, directory, config)
        self.launch: Launch | None = None  # interpreter, user and variables of the live release
        self.on_crashloop: Callable[[ServiceRuntime, str], None] | None = None
        self.rolled_back = ""
        self.scale_override: tuple[int, int] | None = None  # `anycore scale` limits, kept across deploys
        self._rejected_seen = 0
        self.failed: list[dict[str, Any]] = []
        self.workers: dict[int, WorkerHandle] = {}
        self.quarantine: dict[tuple[str, bytes, bytes], float] = {}
        self.quarantined = 0
        self.served = 0
        self.buffering = 0  # bytes reserved by requests whose body is being buffered (not yet placed)
        self.loop = asyncio.get_running_loop()
        self._expiry: asyncio.TimerHandle | None = None
        self.on_queued: Callable[[ServiceRuntime], None] | None = None  # the cluster: try a peer's free slot
        self.session_routes = SessionRoutes(config)
        self.sessions = SessionPlacer(self)

    # -- what the gateway (ports.RequestSink) and the supervisor (ports.ReleaseOwner) ask ----
    @property
    def routes(self) -> list[str]:
        return self.config.routes

    @property
    def max_body(self) -> int:
        return self.config.max_body

    def inflight(self, worker_id: int) -> int:
        slots = self.router.workers.get(worker_id)
        return slots.inflight if slots is not None else 0

    def served_by(self, worker_id: int) -> int:
        slots = self.router.workers.get(worker_id)
        return slots.served if slots is not None else 0

    # -- lifecycle ------------------------------------------------------------------------
    #
    # ``release`` is the live release (None while stopped); ``draining`` holds old releases
    # finishing their in-flight requests after a shift, any number at once. ``directory``,
    # ``config`` and ``release_id`` describe the release that is (or was last) live, which
    # is what ``start`` brings back.

    def new_release(self, release: str, directory: str, config: ServiceConfig, launch: Launch | None = None) -> ReleaseSupervisor:
        return ReleaseSupervisor(self, release, directory, config, self.log, launch)

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
        self.router.max_queue, self.router.max_queue_bytes = config.max_queue, config.max_queue_bytes
        self.session_routes = SessionRoutes(config)
        new.promote()
        if self.life.state is ServiceState.STOPPED:
            self.life.to(ServiceState.RUNNING)
        for worker in new.workers.values():
            if worker.id in self.router.workers:
                self.router.set_accepting(worker.id, True)
        self.log.event("service.shifted", self.name, release=new.release, previous=old.release if old else None,
                       workers=len(new.workers))
        self._drain_queue()
        return old

    def notify_clients(self, new: ReleaseSupervisor, old: ReleaseSupervisor) -> None:
        self.sessions.spawn(self.sessions.notify(new, old))

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
        # Queued requests were accepted: they are served before the workers go.
        bound = self.loop.time() + (self.config.drain_timeout if timeout is None else timeout)
        while self.router.queue and self.router.capacity and self.loop.time() < bound:
            await asyncio.sleep(0.02)
        releases = [r for r in (self.release, *self.draining) if r is not None]
        self.release = None
        if releases:
            self.log.event("service.stopping", self.name, release=self.release_id, inflight=self.router.inflight,
                           queued=len(self.router.queue))
            await asyncio.gather(*(r.stop(timeout) for r in releases))
            self.draining.clear()
        for exchange in [p.item for p in self.router.queue]:
            self.router.cancel(exchange)
            exchange.fail(503, "service stopped", f"service {self.name} was stopped — `anycore start {self.name}`",
                          STOPPED_RETRY_AFTER)
        self.log.event("service.stopped", self.name)

    def autoscale(self, now: float, budget: int | None) -> None:
        if self.release is None or self.life.state is ServiceState.STOPPED:
            return
        rejected, self._rejected_seen = self.router.rejected - self._rejected_seen, self.router.rejected
        # Open WebSockets are demand too: never scale to zero under a connected client.
        sockets = any(w.sockets for w in self.workers.values())
        self.release.autoscale(now, budget, max(self.router.inflight, int(sockets)), len(self.router.queue), rejected)

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
        since = self.loop.time() - release.live_since
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
    def submit(self, exchange: "Exchange", path: str) -> None:
        exchange.service = self
        exchange.path = path
        if self.life.state is ServiceState.STOPPED:
            exchange.fail(503, "service stopped", f"service {self.name} is stopped — `anycore start {self.name}`",
                          STOPPED_RETRY_AFTER)
            return
        if exchange.content_length is not None and exchange.content_length > self.config.max_body:
            exchange.fail(413, "payload too large",
                          f"request body of {exchange.content_length} bytes exceeds max_body={self.config.max_body}")
            return
        key = (exchange.method, exchange.raw_path, exchange.query)
        if key in self.quarantine:
            if self.quarantine[key] > self.loop.time():
                exchange.fail(502, "quarantined",
                              f"an identical request crashed two workers of {self.release_id}; it is refused for "
                              f"{QUARANTINE_TTL:.0f}s — fix the handler and deploy")
                return
            del self.quarantine[key]
        config = self.config
        exchange.buffer_limit, exchange.body_timeout = config.request_buffer, config.body_timeout
        exchange.pause_at = max(exchange.pause_at, config.request_buffer)
        if not exchange.body_done and exchange.buffered < config.request_buffer:
            # Request buffering: the body (up to request_buffer) is read before the request
            # takes a slot. Reserved against the queue's byte budget, so that buffering
            # clients cannot hold more than max_queue_bytes of the node either.
            reserve = min(exchange.content_length or config.request_buffer, config.request_buffer)
            if self.buffering + self.router.queued_bytes + reserve > config.max_queue_bytes:
                exchange.fail(503, "overloaded", f"service {self.name}: request bodies being received fill "
                              f"max_queue_bytes={config.max_queue_bytes}; retry", 1)
                return
            exchange.reserved, exchange.waiting = reserve, True
            self.buffering += reserve
            return
        now = self.loop.time()
        exchange.deadline = now + config.timeout
        self._place(exchange, now, front=False)

    def place_buffered(self, exchange: "Exchange") -> None:
        """A waiting request's body is complete (or request_buffer of it is here): place it.
        Its deadline starts now: the upload's own pace is bounded by body_timeout."""
        self.unreserve(exchange)
        if self.life.state is ServiceState.STOPPED:
            exchange.fail(503, "service stopped", f"service {self.name} is stopped — `anycore start {self.name}`",
                          STOPPED_RETRY_AFTER)
            return
        now = self.loop.time()
        exchange.deadline = now + self.config.timeout
        self._place(exchange, now, front=False)

    def unreserve(self, exchange: "Exchange") -> None:
        self.buffering -= exchange.reserved
        exchange.reserved, exchange.waiting = 0, False

    def _place(self, exchange: "Exchange", now: float, front: bool) -> None:
        decision = self.router.submit(exchange, exchange.size, exchange.deadline, now, front=front)
        if type(decision) is Placed:
            self._dispatch(exchange, decision.worker, now)
        elif type(decision) is Queued:
            self._arm_expiry()
            if self.on_queued is not None:
                self.on_queued(self)
            if self.release is not None and not self.router.any_accepting:
                self.release.wake()  # scaled to zero (or all busy starting): fork now, not at the next tick
        elif type(decision) is Rejected:
            exchange.fail(503, "overloaded", f"service {self.name}: {decision.reason}; retry after {decision.retry_after}s",
                          decision.retry_after)

    def accept_remote(self, exchange: "Exchange") -> bool:
        """A peer's claim: run ``exchange`` here only if a slot is free right now (never queue it)."""
        if self.life.state is ServiceState.STOPPED or self.release is None or not self.router.can_place():
            return False
        exchange.service = self
        self._place(exchange, self.loop.time(), front=False)
        return True

    def requeue(self, exchange: "Exchange") -> None:
        """A request back from a peer (refused claim, or the peer was lost before it started)."""
        exchange.worker, exchange.release, exchange.node = None, "", ""
        self._place(exchange, self.loop.time(), front=True)

    def _dispatch(self, exchange: "Exchange", worker_id: int, now: float) -> None:
        worker = self.workers[worker_id]
        frame = exchange.request_frame(exchange.path, self.server)
        worker.start_request(exchange, frame)
        exchange.on_dispatched(worker, now)

    def _drain_queue(self) -> None:
        placed = self.router.drain_queue()
        if placed:
            now = self.loop.time()
            for exchange, worker_id in placed:
                self._dispatch(exchange, worker_id, now)
        self._arm_expiry()

    def _arm_expiry(self) -> None:
        """Keep one timer at (or before) the head's deadline. Queued deadlines only grow
        along the queue, so a timer already armed is never late: when it fires early it
        expires nothing and re-arms for the new head. No timer churn per request."""
        if self._expiry is None:
            deadline = self.router.next_deadline()
            if deadline is not None:
                self._expiry = self.loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        self._expiry = None
        for exchange in self.router.expire(self.loop.time()):
            exchange.fail(504, "deadline passed while queued",
                          f"no worker of {self.name} became free within timeout={self.config.timeout}s")
        self._arm_expiry()

    def sweep(self, now: float) -> None:
        """Called every node tick: running requests past their deadline get 504 and a Cancel."""
        for worker in list(self.workers.values()):
            for exchange in list(worker.exchanges.values()):
                if exchange.deadline <= now and not exchange.response_complete:
                    self._deadline_passed(exchange)

    def _deadline_passed(self, exchange: "Exchange") -> None:
        if exchange.worker is not None and not exchange.response_complete:
            exchange.worker.send(wire.Cancel(exchange.id))
            exchange.fail(504, "deadline passed", f"the request ran past timeout={self.config.timeout}s and was cancelled")

    def client_gone(self, exchange: "Exchange") -> None:
        if exchange.waiting:
            self.unreserve(exchange)
        elif self.router.cancel(exchange):
            self._arm_expiry()
        elif exchange.worker is not None and exchange.id in exchange.worker.exchanges:
            exchange.worker.send(wire.Cancel(exchange.id))

    # -- events from workers --------------------------------------------------------------------
    def on_done(self, worker: "WorkerHandle", exchange: "Exchange", error: str | None) -> None:
        now = self.loop.time()
        self.router.release(worker.id, now - exchange.dispatched_at)
        self.served += 1
        if not exchange.response_complete:
            if exchange.response_started:
                exchange.fail(500, "incomplete response", error or "the app stopped mid-response")
            elif error != "cancelled":
                exchange.fail(500, "no response", error or "the app returned without a response")
        self._drain_queue()

    def worker_ready(self, worker: "WorkerHandle") -> None:
        """A worker finished its startup; it takes traffic only if its release is live."""
        self.workers[worker.id] = worker
        live = self.release is not None and worker.release == self.release.release and self.release.live_since > 0
        self.router.add_worker(worker.id, worker.slots, accepting=live and self.life.state is ServiceState.RUNNING)
        self._drain_queue()
        self.sessions.worker_ready()

    def worker_draining(self, worker: "WorkerHandle") -> None:
        """Stop routing to it; its Sessions move to a live worker, its ASGI WebSockets close
        with 1012 at the end of the drain timeout."""
        self.router.stop_accepting(worker.id)
        if self.release is not None and self.life.state is ServiceState.RUNNING:
            self.sessions.evacuate(worker)
        for session in list(worker.sockets.values()):
            if session.held is None:
                session.close_later(drain_delay(self.config.drain_timeout), 1012)

    # -- WebSockets --------------------------------------------------------------------------
    def open_websocket(self, session: "WebSocketSession", frame: wire.WsOpen) -> None:
        """Place a WebSocket on the least-loaded accepting worker (it takes no slot)."""
        if self.life.state is ServiceState.STOPPED or self.release is None:
            session.reject(503, f"service {self.name} is stopped\n")
            return
        session.service = self
        frame = self.session_routes.match(frame) or frame
        if not self.sessions.open(session, frame):
            self.release.wake()
            session.reject(503, f"service {self.name} has no worker ready; retry\n")

    def websocket_gone(self, session: "WebSocketSession") -> None:
        if session.worker is not None:
            session.worker.sockets.pop(session.id, None)
            self.sessions.gone(session, session.worker)

    def worker_lost(self, worker: "WorkerHandle") -> None:
        live = self.release is not None and self.life.state is ServiceState.RUNNING
        recover = []
        for session in list(worker.sockets.values()):
            if session.handler and live and not session.closed:
                if session.held is None:
                    recover.append(session)
                else:
                    session.detach()  # already moving: its move falls back to the checkpoint
            else:
                session.worker_gone(draining=worker.killed_by_us.startswith(("drained", "stopped", "recycled")))
        self.sessions.recover(recover)
        worker.sockets.clear()
        self.router.remove_worker(worker.id)
        self.workers.pop(worker.id, None)
        lost = list(worker.exchanges.values())
        worker.exchanges.clear()
        now = self.loop.time()
        for exchange in lost:
            # Blame is shared among the requests the dead worker was running: a request
            # alone on two crashed workers is the likely cause; a bystander is not.
            exchange.crashes += 1 / len(lost)
            exchange.worker = None
            if exchange.response_complete or exchange.conn.closed:
                continue
            if exchange.crashes >= 2 - 1e-9:
                self.quarantined += 1
                self.quarantine[(exchange.method, exchange.raw_path, exchange.query)] = now + QUARANTINE_TTL
                self.log.event("request.quarantined", self.name, method=exchange.method,
                               path=exchange.raw_path.decode("latin-1"), crashed_workers=round(exchange.crashes))
                exchange.fail(502, "quarantined", "this request crashed two workers; it will not be retried — "
                              "see `anycore logs` for the crash")
            elif retryable(exchange.method, exchange.response_started, exchange.body_forwarded, exchange.attempts):
                self.log.event("request.retried", self.name, method=exchange.method,
                               path=exchange.raw_path.decode("latin-1"), dead_worker=worker.id)
                exchange.release = ""
                self._place(exchange, now, front=True)
            else:
                exchange.fail(502, "worker died",
                              f"the worker running this {exchange.method} request died "
                              f"({'response already started' if exchange.response_started else 'unsafe to retry: not GET/HEAD/OPTIONS or body consumed'}); "
                              "the request may or may not have taken effect")
        self._drain_queue()

    # -- reporting -------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        release = self.release.info() if self.release is not None else None
        return {
            "name": self.name, "state": self.life.state.value, "release": self.release_id,
            "draining": [r.info() for r in self.draining], "failed": self.failed, "rolled_back": self.rolled_back,
            "directory": self.directory, "routes": self.config.routes, "slots": self.config.slots,
            "queued": len(self.router.queue), "queued_bytes": self.router.queued_bytes,
            "buffering_bytes": self.buffering,
            "inflight": self.router.inflight, "served": self.served, "rejected": self.router.rejected,
            "expired": self.router.expired, "quarantined": self.quarantined, "live": release,
            "websockets": sum(len(w.sockets) for w in self.workers.values()),
            "sessions_moved": self.sessions.moved, "sessions_recovered": self.sessions.recovered,
        }
