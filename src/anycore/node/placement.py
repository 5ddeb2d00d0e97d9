"""L2 — the placement executor: a service's ``router.core.Router`` turned into frames and deadlines.

The router decides (place, queue, reject, expire) and reads no clock; this module performs
its decisions: it starts a placed request on its worker (``Channel.start_request``), answers
a rejected one (503 + Retry-After), and keeps the deadlines. Every ``now`` comes from the
injected clock; the one timer lives on the event loop.

Deadlines. A queued request is expired by one timer armed at (or before) the earliest
queued deadline: 504, it never reaches a worker. Arrivals only grow the deadlines along the
queue, so a timer already armed is not late for them; when it fires early it expires
nothing and re-arms for the new head — no timer churn per request. A retry put in front of
the queue has an earlier deadline than the head the timer was armed for: then (only) the
timer is re-armed. Running requests are checked on
every node tick (``sweep``): past the deadline they get 504 (if the response has not
started) and a Cancel to the worker, without a timer object per request. Each 504 is a
node log line (``request.timed_out``) naming the request's id.

Request buffering. The body (up to ``request_buffer``) is read before the request takes a
slot. While it is read the request holds a reservation (``buffering``) against the
queue's byte budget, so buffering clients cannot hold more than ``max_queue_bytes`` of the
node either.

What this module does not know: which workers exist (``lookup`` turns a router worker id
into its channel — the release supervisors own the worker table), crashes
(``node.crashes``) and WebSockets (``node.sockets``).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Callable, Iterable

from anycore import wire
from anycore.config import ServiceConfig
from anycore.log import NodeLog
from anycore.ports import Channel
from anycore.router.core import Placed, Queued, Rejected, Router
from anycore.stats import RequestStats

if TYPE_CHECKING:
    from anycore.gateway.exchange import Exchange

QUEUE_FULL = "queue full"  # router.core's Rejected reason; the other one is the deadline estimate


class Placement:
    def __init__(self, name: str, config: ServiceConfig, clock: Callable[[], float],
                 lookup: Callable[[int], Channel | None], server: tuple[str, int] | None,
                 on_queued: Callable[[], None], log: NodeLog | None = None, stats: RequestStats | None = None) -> None:
        self.name = name
        self.log = log  # a line per deadline 504, naming the request id
        self.stats = stats if stats is not None else RequestStats()  # refusals counted as decided
        self.config = config
        self.clock = clock
        self.server = server
        self.router: Router[Exchange] = Router(config.max_queue, config.max_queue_bytes)
        self.buffering = 0  # bytes reserved by requests whose body is being buffered (not yet placed)
        self.loop = asyncio.get_running_loop()
        self._lookup = lookup
        self._on_queued = on_queued
        self._expiry: asyncio.TimerHandle | None = None
        self._expiry_at = 0.0  # the (clock) deadline the timer was armed for

    def configure(self, config: ServiceConfig) -> None:
        """A new live release: its limits apply to the requests from now on."""
        self.config = config
        self.router.max_queue, self.router.max_queue_bytes = config.max_queue, config.max_queue_bytes

    # -- admission ---------------------------------------------------------------------------
    def admit(self, exchange: "Exchange") -> None:
        """Place an admitted request, or reserve its body's buffer first (see above)."""
        config = self.config
        exchange.buffer_limit, exchange.body_timeout = config.request_buffer, config.body_timeout
        exchange.pause_at = max(exchange.pause_at, config.request_buffer)
        if not exchange.body_done and exchange.buffered < config.request_buffer:
            reserve = min(exchange.content_length or config.request_buffer, config.request_buffer)
            if self.buffering + self.router.queued_bytes + reserve > config.max_queue_bytes:
                self.stats.reject(self.name, "queue_full")
                exchange.fail(503, "overloaded", f"service {self.name}: request bodies being received fill "
                              f"max_queue_bytes={config.max_queue_bytes}; retry", 1)
                return
            exchange.reserved, exchange.waiting = reserve, True
            self.buffering += reserve
            return
        now = self.clock()  # as start_deadline, inlined: this is every small request's path
        exchange.deadline = now + config.timeout
        self.place(exchange, now, front=False)

    def start_deadline(self, exchange: "Exchange") -> None:
        """The request is whole (or request_buffer of it is here): its deadline starts now."""
        now = self.clock()
        exchange.deadline = now + self.config.timeout
        self.place(exchange, now, front=False)

    def unreserve(self, exchange: "Exchange") -> None:
        self.buffering -= exchange.reserved
        exchange.reserved, exchange.waiting = 0, False

    # -- placing ----------------------------------------------------------------------------
    def place(self, exchange: "Exchange", now: float, front: bool) -> None:
        decision = self.router.submit(exchange, exchange.size, exchange.deadline, now, front=front)
        if type(decision) is Placed:
            self._dispatch(exchange, decision.worker, now)
        elif type(decision) is Queued:
            self._arm_expiry()
            self._on_queued()
        elif type(decision) is Rejected:
            self.stats.reject(self.name, "queue_full" if decision.reason == QUEUE_FULL else "deadline")
            exchange.fail(503, "overloaded", f"service {self.name}: {decision.reason}; retry after {decision.retry_after}s",
                          decision.retry_after)

    def place_reserved(self, exchange: "Exchange", worker_id: int, now: float) -> None:
        """Start ``exchange`` on ``worker_id``, whose slot the native gateway reserved for it
        (a peer's claim): this router only mirrors the gateway's counts until its next Stats."""
        slots = self.router.workers.get(worker_id)
        if slots is not None:
            slots.inflight += 1
        self._dispatch(exchange, worker_id, now)

    def _dispatch(self, exchange: "Exchange", worker_id: int, now: float) -> None:
        worker = self._lookup(worker_id)
        if worker is None:  # the router outlived its worker's table entry: forget it, place again
            self.router.remove_worker(worker_id)
            self.place(exchange, now, front=True)
            return
        frame = exchange.request_frame(exchange.path, self.server)
        frame.remaining = exchange.deadline - now  # the worker's calls inherit what is left (worker/calls.py)
        worker.start_request(exchange, frame)
        exchange.on_dispatched(worker, now)

    def drain_queue(self) -> None:
        """Give freed slots to the head of the queue."""
        placed = self.router.drain_queue()
        if placed:
            now = self.clock()
            for exchange, worker_id in placed:
                self._dispatch(exchange, worker_id, now)
        self._arm_expiry()

    def done(self, worker: Channel, exchange: "Exchange", error: str | None) -> None:
        """A request finished on ``worker``: free its slot, answer it if the app did not."""
        self.router.release(worker.id, self.clock() - exchange.dispatched_at)
        if not exchange.response_complete:
            if exchange.response_started:
                exchange.fail(500, "incomplete response", error or "the app stopped mid-response")
            elif error != "cancelled":
                exchange.fail(500, "no response", error or "the app returned without a response")
        self.drain_queue()

    def cancel(self, exchange: "Exchange") -> None:
        """Its client went away: unreserve, unqueue, or tell its worker."""
        if exchange.waiting:
            self.unreserve(exchange)
        elif self.router.cancel(exchange):
            self._arm_expiry()
        elif exchange.worker is not None and exchange.id in exchange.worker.exchanges:
            exchange.worker.send(wire.Cancel(exchange.id))

    # -- deadlines ---------------------------------------------------------------------------
    def _arm_expiry(self) -> None:
        deadline = self.router.next_deadline()
        if deadline is None:
            return
        if self._expiry is not None:
            if deadline >= self._expiry_at:
                return  # armed at or before the head's deadline: early at worst, never late
            self._expiry.cancel()  # a retry put in front has an earlier deadline than the old head's
        self._expiry_at = deadline
        self._expiry = self.loop.call_later(max(0.0, deadline - self.clock()), self._expire)

    def close(self) -> None:
        """The service stopped: no timer outlives it (``start`` arms a new one when needed)."""
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None

    def _expire(self) -> None:
        self._expiry = None
        for exchange in self.router.expire(self.clock()):
            self.stats.reject(self.name, "deadline")
            self._timed_out(exchange, "queued")
            exchange.fail(504, "deadline passed while queued",
                          f"no worker of {self.name} became free within timeout={self.config.timeout}s")
        self._arm_expiry()

    def sweep(self, now: float, running: Iterable["Exchange"]) -> None:
        """Running requests past their deadline get 504 and a Cancel to their worker."""
        for exchange in running:
            if exchange.deadline <= now and not exchange.response_complete and exchange.worker is not None:
                exchange.worker.send(wire.Cancel(exchange.id))
                self._timed_out(exchange, "running")
                exchange.fail(504, "deadline passed",
                              f"the request ran past timeout={self.config.timeout}s and was cancelled")

    def _timed_out(self, exchange: "Exchange", where: str) -> None:
        """At most max_queue/timeout queued and slots/timeout running ones a second: bounded."""
        if self.log is not None:
            self.log.event("request.timed_out", self.name, method=exchange.method,
                           path=exchange.raw_path.decode("latin-1"), status=504, where=where,
                           timeout_s=self.config.timeout, release=exchange.release or None,
                           request_id=exchange.request_id or None)
