"""L0 — the router's pure core: slot-aware placement and a bounded FIFO queue with deadlines.

How it works. Each ready worker advertises ``slots``, the number of requests it may run
at once. ``submit`` places a request on the least-loaded accepting worker that has a free
slot; when none has one, the request waits in one FIFO queue per service. When a slot
frees (``release``), the head of the queue takes it. Nothing here does I/O or reads a
clock: the caller passes ``now`` and performs the returned placements.

Invariants (property-tested in tests/unit/router):
- a worker never holds more requests than its slots;
- the queue never holds more than ``max_queue`` requests nor more than
  ``max_queue_bytes`` bytes;
- a request is never queued while some accepting worker has a free slot.

Fast rejection. A request is refused at once (503 + Retry-After) when the queue is full,
or when the estimated wait (requests ahead / total slots * mean service time) already
exceeds its deadline; a queued request whose deadline passes is expired (504) without
ever reaching a worker.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Generic, Hashable, TypeVar

T = TypeVar("T", bound=Hashable)
GONE_KEPT = 256  # removed workers whose served count is still answered


@dataclass
class WorkerSlots:
    id: int
    slots: int
    inflight: int = 0
    accepting: bool = True
    served: int = 0

    @property
    def free(self) -> int:
        return self.slots - self.inflight if self.accepting else 0


@dataclass
class Pending(Generic[T]):
    item: T
    size: int
    deadline: float
    enqueued_at: float


@dataclass(frozen=True)
class Placed:
    worker: int


@dataclass(frozen=True)
class Queued:
    position: int


@dataclass(frozen=True)
class Rejected:
    reason: str
    retry_after: int


Decision = Placed | Queued | Rejected


@dataclass
class Router(Generic[T]):
    max_queue: int
    max_queue_bytes: int
    workers: dict[int, WorkerSlots] = field(default_factory=dict)
    queue: deque[Pending[T]] = field(default_factory=deque)
    queued_bytes: int = 0
    mean_service: float = 0.0  # EWMA of seconds per request, for the deadline estimate
    rejected: int = 0
    expired: int = 0
    served: int = 0  # requests finished, over every worker this router ever had (the service's total)
    _rr: int = 0
    _order: list[WorkerSlots] = field(default_factory=list)  # cached list of workers; reset when they change
    _gone: dict[int, int] = field(default_factory=dict)  # served by recently removed workers (for their exit log)

    # -- workers -----------------------------------------------------------------
    def add_worker(self, worker_id: int, slots: int, accepting: bool = True) -> None:
        self.workers[worker_id] = WorkerSlots(worker_id, slots, accepting=accepting)
        self._order = []

    def set_accepting(self, worker_id: int, accepting: bool) -> None:
        """A warm worker of a new release starts taking requests at the shift."""
        if worker_id in self.workers:
            self.workers[worker_id].accepting = accepting

    def stop_accepting(self, worker_id: int) -> None:
        """Draining or gone: no new request goes there; running ones keep their slot."""
        if worker_id in self.workers:
            self.workers[worker_id].accepting = False

    def remove_worker(self, worker_id: int) -> None:
        gone = self.workers.pop(worker_id, None)
        if gone is not None:
            self._gone[worker_id] = gone.served
            if len(self._gone) > GONE_KEPT:
                del self._gone[next(iter(self._gone))]
        self._order = []

    def inflight_of(self, worker_id: int) -> int:
        worker = self.workers.get(worker_id)
        return worker.inflight if worker is not None else 0

    def served_by(self, worker_id: int) -> int:
        """Requests ``worker_id`` finished; still known for a while after it was removed."""
        worker = self.workers.get(worker_id)
        return worker.served if worker is not None else self._gone.get(worker_id, 0)

    @property
    def any_accepting(self) -> bool:
        return any(w.accepting for w in self.workers.values())

    @property
    def capacity(self) -> int:
        return sum(w.slots for w in self.workers.values() if w.accepting)

    @property
    def inflight(self) -> int:
        return sum(w.inflight for w in self.workers.values())

    @property
    def free(self) -> int:
        """Free accepting slots; 0 while anything is queued (a queued request takes the next one)."""
        return 0 if self.queue else sum(w.free for w in self.workers.values())

    def can_place(self) -> bool:
        """Would ``submit`` place a request right now (not queue it)? For a peer's claim."""
        return not self.queue and any(w.free > 0 for w in self.workers.values())

    # -- requests ------------------------------------------------------------------
    def submit(self, item: T, size: int, deadline: float, now: float, front: bool = False) -> Decision:
        """Place ``item`` or queue it; ``front`` puts a retried request ahead of the queue."""
        worker = self._least_loaded() if front or not self.queue else None  # FIFO: nobody jumps the queue
        if worker is not None:
            worker.inflight += 1
            return Placed(worker.id)
        if len(self.queue) >= self.max_queue or self.queued_bytes + size > self.max_queue_bytes:
            if not front:
                self.rejected += 1
                return Rejected("queue full", self._retry_after(len(self.queue)))
        wait = self._estimated_wait(len(self.queue) + 1)
        if not front and wait is not None and now + wait > deadline:
            self.rejected += 1
            return Rejected("deadline cannot be met", self._retry_after(len(self.queue)))
        pending = Pending(item, size, deadline, now)
        if front:
            # A retry arrived before every regular request queued, but a dead worker's
            # requests are retried one after another, oldest first: each goes behind the
            # retries with an earlier deadline only, so retries keep their order and the
            # head stays the earliest deadline (next_deadline).
            position = 0
            for queued in self.queue:
                if queued.deadline >= deadline:
                    break
                position += 1
            self.queue.insert(position, pending)
        else:
            position = len(self.queue)
            self.queue.append(pending)
        self.queued_bytes += size
        return Queued(position)

    def release(self, worker_id: int, service_time: float | None = None) -> None:
        """A request finished on ``worker_id``: its slot is free. Call ``drain_queue`` next."""
        worker = self.workers.get(worker_id)
        if worker is not None:
            worker.inflight -= 1
            worker.served += 1
        self.served += 1
        if service_time is not None:
            self.mean_service = service_time if not self.mean_service else 0.9 * self.mean_service + 0.1 * service_time

    def drain_queue(self) -> list[tuple[T, int]]:
        """Give free slots to the head of the queue, in order. Returns (item, worker) pairs."""
        placed: list[tuple[T, int]] = []
        while self.queue:
            worker = self._least_loaded()
            if worker is None:
                break
            pending = self.queue.popleft()
            self.queued_bytes -= pending.size
            worker.inflight += 1
            placed.append((pending.item, worker.id))
        return placed

    def cancel(self, item: T) -> bool:
        """Remove a queued request (its client went away). False if it was not queued."""
        for pending in self.queue:
            if pending.item == item:
                self.queue.remove(pending)
                self.queued_bytes -= pending.size
                return True
        return False

    def expire(self, now: float) -> list[T]:
        """Remove and return queued requests whose deadline has passed."""
        expired = [p for p in self.queue if p.deadline <= now]
        for pending in expired:
            self.queue.remove(pending)
            self.queued_bytes -= pending.size
        self.expired += len(expired)
        return [p.item for p in expired]

    def next_deadline(self) -> float | None:
        """The head's deadline. Deadlines are arrival + the service timeout, so FIFO order is
        deadline order, and a retry put in front arrived earlier than everyone behind it
        (the executor re-arms its timer for it). O(1) on the hot path."""
        return self.queue[0].deadline if self.queue else None

    # -- internals -------------------------------------------------------------------
    def _least_loaded(self) -> WorkerSlots | None:
        best: WorkerSlots | None = None
        workers = self._order or list(self.workers.values())
        self._order = workers
        n = len(workers)
        # Rotate the start so that equally loaded workers take turns.
        self._rr = (self._rr + 1) % n if n else 0
        for i in range(n):
            worker = workers[(self._rr + i) % n]
            if worker.free > 0 and (best is None or worker.inflight * best.slots < best.inflight * worker.slots):
                best = worker
        return best

    def _estimated_wait(self, ahead: int) -> float | None:
        capacity = self.capacity
        if not capacity or not self.mean_service:
            return None
        return ahead / capacity * self.mean_service

    def _retry_after(self, ahead: int) -> int:
        wait = self._estimated_wait(ahead + 1) or 1.0
        return max(1, math.ceil(wait))
