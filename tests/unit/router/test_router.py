"""The router's pure core: placement, the bounded FIFO queue, deadlines, retries.

Time is a plain float passed as ``now``; nothing sleeps, nothing does I/O. The stateful
test drives random operation sequences against a small model and checks the router's
invariants after every step.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from anycore.router.core import Placed, Queued, Rejected, Router

from . import rust_router

BIG = 1 << 30

# Every test runs against both implementations: the Python core and its Rust port
# (native/src/router.rs, driven through `anycore-gateway --router-model`). The Rust side
# is skipped only when the binary is not built (`cargo build --release` in native/).
RUST = pytest.mark.skipif(not rust_router.built(), reason="anycore-gateway not built: cargo build --release in native/")
IMPLS = [pytest.param(Router, id="python"), pytest.param(rust_router.RustRouter, id="rust", marks=RUST)]


@pytest.fixture(params=IMPLS, scope="module")
def impl(request: pytest.FixtureRequest) -> Any:
    return request.param


def router(impl: Any, max_queue: int = 100, max_queue_bytes: int = BIG) -> Router[str]:
    return impl(max_queue=max_queue, max_queue_bytes=max_queue_bytes)


def fill(r: Router[str], worker: int, n: int, now: float = 0.0) -> list[str]:
    """Occupy ``n`` slots; asserts each lands on ``worker``."""
    items = []
    for i in range(n):
        item = f"fill-{worker}-{i}-{len(r.queue)}-{r.inflight}"
        assert r.submit(item, 1, now + 100, now) == Placed(worker)
        items.append(item)
    return items


# -- placement -----------------------------------------------------------------------------------

def test_placement_goes_to_least_loaded_accepting_worker_with_a_free_slot(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=4)
    r.add_worker(2, slots=4)
    r.workers[1].inflight = 3
    r.workers[2].inflight = 1
    assert r.submit("a", 10, 100.0, 0.0) == Placed(2)
    assert r.workers[2].inflight == 2
    assert r.submit("b", 10, 100.0, 0.0) == Placed(2)
    # now 3/4 each: either is least loaded; after that one has 4/4 and the other takes the next
    first = r.submit("c", 10, 100.0, 0.0)
    assert isinstance(first, Placed)
    other = 1 if first.worker == 2 else 2
    assert r.submit("d", 10, 100.0, 0.0) == Placed(other)
    assert all(w.inflight == w.slots for w in r.workers.values())
    assert r.submit("e", 10, 100.0, 0.0) == Queued(0)


def test_placement_compares_load_relative_to_slots(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=2)
    r.add_worker(2, slots=8)
    r.workers[1].inflight = 1  # 50 % busy
    r.workers[2].inflight = 3  # 37.5 % busy: less loaded though it runs more
    assert r.submit("a", 1, 100.0, 0.0) == Placed(2)


def test_equally_loaded_workers_take_turns(impl: Any) -> None:
    r = router(impl)
    for w in (1, 2, 3):
        r.add_worker(w, slots=100)
    placed = []
    for i in range(3):
        decision = r.submit(f"r{i}", 1, 100.0, 0.0)
        assert isinstance(decision, Placed)
        placed.append(decision.worker)
    assert sorted(placed) == [1, 2, 3]


def test_never_placed_on_a_draining_worker(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=8)
    r.add_worker(2, slots=8)
    r.workers[1].inflight = 7
    r.stop_accepting(2)  # idle but draining
    assert r.submit("a", 1, 100.0, 0.0) == Placed(1)
    assert r.submit("b", 1, 100.0, 0.0) == Queued(0)
    r.release(1)
    assert r.drain_queue() == [("b", 1)]
    assert r.workers[2].inflight == 0


def test_a_worker_added_not_accepting_takes_nothing_until_set_accepting(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=1, accepting=False)
    assert r.capacity == 0
    assert r.submit("a", 1, 100.0, 0.0) == Queued(0)
    assert r.drain_queue() == []
    r.set_accepting(1, True)
    assert r.drain_queue() == [("a", 1)]


def test_draining_worker_keeps_its_running_requests_until_released(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=2)
    fill(r, 1, 2)
    r.stop_accepting(1)
    assert r.workers[1].inflight == 2
    r.release(1)
    r.submit("x", 1, 100.0, 0.0)
    assert r.drain_queue() == []
    assert list(p.item for p in r.queue) == ["x"]


def test_the_router_counts_in_flight_and_served_and_the_total_outlives_its_workers(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=2)
    fill(r, 1, 2)
    r.add_worker(2, slots=2)
    assert r.submit("b", 1, 100.0, 0.0) == Placed(2)
    r.release(1)
    r.release(1)
    assert (r.served, r.served_by(1), r.inflight_of(1), r.inflight_of(2)) == (2, 2, 0, 1)
    r.remove_worker(1)
    r.remove_worker(2)  # died with "b" running: not served
    assert r.served == 2 and r.served_by(1) == 2  # still answered for its exit log
    assert (r.inflight_of(1), r.served_by(2), r.served_by(99)) == (0, 0, 0)


# -- queue ---------------------------------------------------------------------------------------

def test_queue_is_fifo_when_slots_free(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=2)
    fill(r, 1, 2)
    for i in range(5):
        assert r.submit(f"q{i}", 1, 100.0, float(i)) == Queued(i)
    r.release(1)
    assert r.drain_queue() == [("q0", 1)]
    r.release(1)
    r.release(1)
    assert r.drain_queue() == [("q1", 1), ("q2", 1)]
    r.add_worker(2, slots=5)
    assert r.drain_queue() == [("q3", 2), ("q4", 2)]
    assert not r.queue and r.queued_bytes == 0


def test_new_request_waits_behind_the_queue_even_if_a_slot_just_freed(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.submit("first", 1, 100.0, 0.0)
    r.release(1)  # the caller drains after release; a submit racing in must not jump the queue
    assert r.submit("second", 1, 100.0, 0.0) == Queued(1)
    assert r.drain_queue() == [("first", 1)]


def test_queue_full_by_count_is_rejected_with_retry_after(impl: Any) -> None:
    r = router(impl, max_queue=3)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    for i in range(3):
        assert r.submit(f"q{i}", 1, 100.0, 0.0) == Queued(i)
    decision = r.submit("over", 1, 100.0, 0.0)
    assert isinstance(decision, Rejected)
    assert decision.reason == "queue full"
    assert decision.retry_after >= 1
    assert r.rejected == 1
    assert len(r.queue) == 3


def test_queue_full_by_bytes_is_rejected_with_retry_after(impl: Any) -> None:
    r = router(impl, max_queue=100, max_queue_bytes=1000)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    assert r.submit("a", 600, 100.0, 0.0) == Queued(0)
    assert r.submit("b", 400, 100.0, 0.0) == Queued(1)  # exactly at the bound is allowed
    decision = r.submit("c", 1, 100.0, 0.0)
    assert isinstance(decision, Rejected) and decision.reason == "queue full" and decision.retry_after >= 1
    assert r.queued_bytes == 1000
    r.cancel("a")
    assert r.submit("c", 600, 100.0, 0.0) == Queued(1)


def test_retry_after_grows_with_the_estimated_wait(impl: Any) -> None:
    r = router(impl, max_queue=10)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.release(1, service_time=2.0)
    r.drain_queue()
    fill(r, 1, 1)
    for i in range(10):
        r.submit(f"q{i}", 1, 1e9, 0.0)
    decision = r.submit("over", 1, 1e9, 0.0)
    assert isinstance(decision, Rejected) and decision.reason == "queue full"
    # 11 ahead of it on one slot at 2 s each
    assert decision.retry_after >= 20


def test_deadline_that_cannot_be_met_is_rejected_at_once(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=2)
    fill(r, 1, 2)
    r.release(1, service_time=1.0)
    r.drain_queue()
    fill(r, 1, 1)
    # mean service 1 s, 2 slots: the n-th queued request waits about n / 2 s
    assert r.submit("q0", 1, 10.0, 0.0) == Queued(0)  # 0.5 s
    assert r.submit("q1", 1, 10.0, 0.0) == Queued(1)  # 1 s
    decision = r.submit("late", 1, 1.2, 0.0)  # would wait 1.5 s, has 1.2 s
    assert isinstance(decision, Rejected)
    assert decision.reason == "deadline cannot be met"
    assert decision.retry_after >= 1
    assert [p.item for p in r.queue] == ["q0", "q1"]
    assert r.submit("fits", 1, 1.6, 0.0) == Queued(2)


def test_without_a_service_time_estimate_nothing_is_rejected_for_its_deadline(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    assert r.submit("q", 1, 0.001, 0.0) == Queued(0)


def test_expire_returns_expired_items_in_order_and_they_are_never_placed(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.submit("a", 5, 10.0, 0.0)
    r.submit("b", 5, 30.0, 0.0)
    r.submit("c", 5, 11.0, 1.0)
    r.submit("d", 5, 50.0, 1.0)
    assert r.next_deadline() == 10.0
    assert r.expire(9.99) == []
    assert r.expire(11.0) == ["a", "c"]  # deadline <= now: expired
    assert r.expired == 2
    assert r.queued_bytes == 10
    r.release(1)
    r.add_worker(2, slots=10)
    placed = r.drain_queue()
    assert [item for item, _ in placed] == ["b", "d"]
    assert r.expire(1000.0) == []


def test_cancel_removes_a_queued_item(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.submit("a", 3, 100.0, 0.0)
    r.submit("b", 4, 100.0, 0.0)
    r.submit("c", 5, 100.0, 0.0)
    assert r.cancel("b") is True
    assert r.queued_bytes == 8
    assert r.cancel("b") is False
    assert r.cancel("never-submitted") is False
    r.release(1)
    r.add_worker(2, slots=5)
    assert [item for item, _ in r.drain_queue()] == ["a", "c"]
    assert r.cancel("a") is False  # placed: no longer queued


# -- retries -------------------------------------------------------------------------------------

def test_retried_request_goes_to_the_head_of_the_queue(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.submit("q0", 1, 110.0, 10.0)
    r.submit("q1", 1, 111.0, 11.0)
    assert r.submit("retry", 1, 105.0, 12.0, front=True) == Queued(0)
    assert r.next_deadline() == 105.0
    r.release(1)
    assert r.drain_queue() == [("retry", 1)]


def test_retried_request_is_placed_at_once_when_a_slot_is_free(impl: Any) -> None:
    r = router(impl)
    r.add_worker(1, slots=1)
    r.add_worker(2, slots=1, accepting=False)
    fill(r, 1, 1)
    r.submit("q0", 1, 100.0, 0.0)
    r.release(1)  # slot free, queue not yet drained
    assert r.submit("retry", 1, 90.0, 1.0, front=True) == Placed(1)


def test_retried_request_is_never_rejected(impl: Any) -> None:
    r = router(impl, max_queue=2, max_queue_bytes=10)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.release(1, service_time=100.0)
    r.drain_queue()
    fill(r, 1, 1)
    r.submit("q0", 5, 1e9, 0.0)
    r.submit("q1", 5, 1e9, 0.0)
    assert isinstance(r.submit("rejected", 1, 1e9, 0.0), Rejected)
    # full by count and bytes, and its deadline is hopeless: still queued, at the head
    assert r.submit("retry", 50, 1.0, 0.0, front=True) == Queued(0)
    assert [p.item for p in r.queue] == ["retry", "q0", "q1"]
    assert r.queued_bytes == 60
    assert r.rejected == 1


def test_several_retries_keep_their_arrival_order_ahead_of_the_queue(impl: Any) -> None:
    # A dead worker's requests are retried one after the other, oldest first (that is the
    # order they were dispatched in). They must leave the queue in that order, and the head
    # must stay the earliest deadline (next_deadline() arms the expiry timer from it).
    r = router(impl)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.submit("q0", 1, 120.0, 20.0)
    assert r.submit("old", 1, 100.0, 21.0, front=True) == Queued(0)
    assert r.submit("newer", 1, 105.0, 21.0, front=True) == Queued(1)
    assert [p.item for p in r.queue] == ["old", "newer", "q0"]
    assert r.next_deadline() == 100.0
    assert r.expire(100.0) == ["old"]
    assert r.next_deadline() == 105.0


# -- property tests ------------------------------------------------------------------------------

TIMEOUT = 10.0  # every request's deadline is its arrival + TIMEOUT, as in ServiceRuntime.submit


class RouterMachine(RuleBasedStateMachine):
    """Random sequences of everything the service runtime does to a router.

    The model tracks where each item is; the router must agree after every step.
    Items are ints (submission order); retries (front=True) are resubmissions of the
    requests a removed worker was running, with their original deadline, like
    ServiceRuntime.worker_lost.
    """

    impl: Any = Router

    @initialize(max_queue=st.integers(1, 6), max_queue_bytes=st.integers(1, 300))
    def setup(self, max_queue: int, max_queue_bytes: int) -> None:
        self.router: Router[int] = self.impl(max_queue=max_queue, max_queue_bytes=max_queue_bytes)
        self.now = 0.0
        self.next_item = 0
        self.next_worker = 0
        self.slots: dict[int, int] = {}
        self.accepting: dict[int, bool] = {}
        self.running: dict[int, list[int]] = {}  # worker -> items in flight there
        self.status: dict[int, str] = {}  # item -> placed|queued|rejected|expired|cancelled|done|lost
        self.size: dict[int, int] = {}
        self.deadline: dict[int, float] = {}
        self.front: set[int] = set()  # items queued by a retry

    # -- helpers
    def _free(self, w: int) -> int:
        return self.slots[w] - len(self.running[w]) if self.accepting[w] else 0

    def _check_least_loaded(self, w: int) -> None:
        assert w in self.slots, f"placed on unknown worker {w}"
        assert self.accepting[w], f"placed on non-accepting worker {w}"
        assert self._free(w) > 0, f"placed on full worker {w}"
        load = len(self.running[w]) / self.slots[w]
        for other in self.slots:
            if self._free(other) > 0:
                assert load <= len(self.running[other]) / self.slots[other], "not the least-loaded worker"

    def _queued_items(self) -> list[int]:
        return [p.item for p in self.router.queue]

    # -- workers
    @rule(slots=st.integers(1, 3), accepting=st.booleans())
    def add_worker(self, slots: int, accepting: bool) -> None:
        w = self.next_worker
        self.next_worker += 1
        self.router.add_worker(w, slots, accepting=accepting)
        self.slots[w] = slots
        self.accepting[w] = accepting
        self.running[w] = []

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def stop_accepting(self, data: st.DataObject) -> None:
        w = data.draw(st.sampled_from(sorted(self.slots)))
        self.router.stop_accepting(w)
        self.accepting[w] = False

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def set_accepting(self, data: st.DataObject) -> None:
        w = data.draw(st.sampled_from(sorted(self.slots)))
        self.router.set_accepting(w, True)
        self.accepting[w] = True

    @precondition(lambda self: self.slots)
    @rule(data=st.data())
    def remove_worker(self, data: st.DataObject) -> None:
        """The worker died: its running requests are lost until retried."""
        w = data.draw(st.sampled_from(sorted(self.slots)))
        self.router.remove_worker(w)
        for item in self.running.pop(w):
            self.status[item] = "lost"
        del self.slots[w], self.accepting[w]

    # -- requests
    @rule(size=st.integers(0, 120))
    def submit(self, size: int) -> None:
        item = self.next_item
        self.next_item += 1
        self.size[item] = size
        self.deadline[item] = self.now + TIMEOUT
        before = self._queued_items()
        queued_bytes = self.router.queued_bytes
        decision = self.router.submit(item, size, self.deadline[item], self.now)
        if isinstance(decision, Placed):
            assert not before, "a new request jumped the queue"
            self._check_least_loaded(decision.worker)
            self.running[decision.worker].append(item)
            self.status[item] = "placed"
        elif isinstance(decision, Queued):
            nonfront = [i for i in before if i not in self.front]
            assert len(nonfront) < self.router.max_queue
            assert queued_bytes + size <= self.router.max_queue_bytes
            assert decision.position == len(before)
            self.status[item] = "queued"
        else:
            assert isinstance(decision, Rejected)
            assert decision.retry_after >= 1
            assert decision.reason in ("queue full", "deadline cannot be met")
            if decision.reason == "queue full":
                assert len(before) >= self.router.max_queue or queued_bytes + size > self.router.max_queue_bytes
            self.status[item] = "rejected"

    @precondition(lambda self: any(s == "lost" for s in self.status.values()))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        lost = sorted(i for i, s in self.status.items() if s == "lost")
        item = data.draw(st.sampled_from(lost))
        decision = self.router.submit(item, self.size[item], self.deadline[item], self.now, front=True)
        assert not isinstance(decision, Rejected), f"a retry was rejected: {decision}"
        if isinstance(decision, Placed):
            self._check_least_loaded(decision.worker)
            self.running[decision.worker].append(item)
            self.status[item] = "placed"
        else:
            assert isinstance(decision, Queued)
            queue = self._queued_items()
            assert queue[decision.position] == item
            # ahead of every regular request, behind older retries only
            assert all(i in self.front for i in queue[: decision.position])
            self.status[item] = "queued"
            self.front.add(item)

    @precondition(lambda self: any(self.running.values()))
    @rule(data=st.data(), service_time=st.floats(0.0, 8.0))
    def release(self, data: st.DataObject, service_time: float) -> None:
        w = data.draw(st.sampled_from(sorted(w for w, items in self.running.items() if items)))
        item = self.running[w].pop(0)
        self.status[item] = "done"
        self.router.release(w, service_time)

    @rule()
    def drain_queue(self) -> None:
        before = self._queued_items()
        placed = self.router.drain_queue()
        assert [item for item, _ in placed] == before[: len(placed)], "not placed in queue order"
        for item, w in placed:
            assert self.status[item] == "queued", f"item {item} placed from the queue while {self.status[item]}"
            self._check_least_loaded(w)
            self.running[w].append(item)
            self.status[item] = "placed"
            self.front.discard(item)
        # nothing is left queued while an accepting worker has a free slot
        assert not self.router.queue or not any(self._free(w) > 0 for w in self.slots)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        assume(self.next_item > 0)
        item = data.draw(st.integers(0, self.next_item - 1))
        was_queued = self.status[item] == "queued"
        assert self.router.cancel(item) is was_queued
        if was_queued:
            self.status[item] = "cancelled"
            self.front.discard(item)

    @rule(dt=st.sampled_from([0.0, 0.5, 1.0, 2.5, 5.0, 10.0]))  # exact sums: deadline ties happen
    def expire(self, dt: float) -> None:
        self.now += dt
        due = [i for i in self._queued_items() if self.deadline[i] <= self.now]
        expired = self.router.expire(self.now)
        assert expired == due
        for item in expired:
            self.status[item] = "expired"
            self.front.discard(item)

    # -- invariants
    @invariant()
    def no_worker_runs_more_than_its_slots(self) -> None:
        assert set(self.router.workers) == set(self.slots)
        for w, worker in self.router.workers.items():
            assert 0 <= worker.inflight <= worker.slots
            assert worker.inflight == len(self.running[w])
            assert worker.accepting == self.accepting[w]

    @invariant()
    def queue_within_bounds(self) -> None:
        queue = list(self.router.queue)
        assert self.router.queued_bytes == sum(p.size for p in queue)
        regular = [p for p in queue if p.item not in self.front]
        # retries may go over the bounds (they are never rejected); everything else may not
        assert len(regular) <= self.router.max_queue
        assert sum(p.size for p in regular) <= self.router.max_queue_bytes
        if not self.front:
            assert len(queue) <= self.router.max_queue
            assert self.router.queued_bytes <= self.router.max_queue_bytes

    @invariant()
    def queue_is_fifo_and_head_is_earliest_deadline(self) -> None:
        queue = list(self.router.queue)
        regular = [p.item for p in queue if p.item not in self.front]
        assert regular == sorted(regular), "regular requests out of arrival order"
        deadlines = [p.deadline for p in queue]
        assert deadlines == sorted(deadlines), "queue not in deadline order"
        assert self.router.next_deadline() == (min(deadlines) if deadlines else None)

    @invariant()
    def every_item_accounted_for_exactly_once(self) -> None:
        queued = self._queued_items()
        assert len(queued) == len(set(queued)), "an item is queued twice"
        assert set(queued) == {i for i, s in self.status.items() if s == "queued"}
        running = [i for items in self.running.values() for i in items]
        assert len(running) == len(set(running))
        assert set(running) == {i for i, s in self.status.items() if s == "placed"}
        assert set(self.status) == set(range(self.next_item))
        assert self.router.rejected == sum(1 for s in self.status.values() if s == "rejected")
        assert self.router.expired == sum(1 for s in self.status.values() if s == "expired")


RouterMachine.TestCase.settings = settings(
    max_examples=100, stateful_step_count=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_router_invariants_hold_under_random_operations = RouterMachine.TestCase


class RustRouterMachine(RouterMachine):
    impl = rust_router.RustRouter


RustRouterMachine.TestCase.settings = RouterMachine.TestCase.settings
test_rust_router_invariants_hold_under_random_operations = RUST(RustRouterMachine.TestCase)


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 3), st.booleans()),
        st.tuples(st.just("stop"), st.integers(0, 7)),
        st.tuples(st.just("remove"), st.integers(0, 7)),
        st.tuples(st.just("submit"), st.integers(0, 100)),
        st.tuples(st.just("release"), st.integers(0, 7), st.floats(0.0, 5.0)),
        st.tuples(st.just("drain")),
        st.tuples(st.just("cancel"), st.integers(0, 60)),
        st.tuples(st.just("expire"), st.floats(0.0, 5.0)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(max_queue=st.integers(1, 5), max_queue_bytes=st.integers(1, 250), ops=OPS)
def test_without_retries_the_queue_never_exceeds_its_count_and_byte_bounds(
    impl: Any, max_queue: int, max_queue_bytes: int, ops: list[tuple[Any, ...]]
) -> None:
    r: Router[int] = impl(max_queue=max_queue, max_queue_bytes=max_queue_bytes)
    now = 0.0
    n = 0
    next_worker = 0
    for op in ops:
        kind = op[0]
        if kind == "add":
            r.add_worker(next_worker, op[1], accepting=op[2])
            next_worker += 1
        elif kind == "stop":
            r.stop_accepting(op[1])
        elif kind == "remove":
            r.remove_worker(op[1])
        elif kind == "submit":
            r.submit(n, op[1], now + TIMEOUT, now)
            n += 1
        elif kind == "release":
            if op[1] in r.workers and r.workers[op[1]].inflight > 0:
                r.release(op[1], op[2])
        elif kind == "drain":
            r.drain_queue()
            assert not r.queue or all(w.free == 0 for w in r.workers.values())
        elif kind == "cancel":
            r.cancel(op[1])
        elif kind == "expire":
            now += op[1]
            r.expire(now)
        assert len(r.queue) <= max_queue
        assert r.queued_bytes <= max_queue_bytes
        assert r.queued_bytes == sum(p.size for p in r.queue)
        for w in r.workers.values():
            assert 0 <= w.inflight <= w.slots


@pytest.mark.parametrize("front", [False, True])
def test_submit_position_counts_from_the_head(impl: Any, front: bool) -> None:
    r = router(impl)
    r.add_worker(1, slots=1)
    fill(r, 1, 1)
    r.submit("a", 1, 100.0, 0.0)
    decision = r.submit("b", 1, 50.0 if front else 100.0, 0.0, front=front)
    assert decision == Queued(0 if front else 1)
    assert [p.item for p in r.queue][decision.position] == "b"  # type: ignore[union-attr]


def test_can_place_and_free_follow_slots_and_the_queue(impl: Any) -> None:
    router: Router[str] = impl(max_queue=10, max_queue_bytes=1000)
    assert not router.can_place() and router.free == 0
    router.add_worker(1, 2)
    assert router.can_place() and router.free == 2
    router.submit("a", 1, 10.0, 0.0)
    router.submit("b", 1, 10.0, 0.0)
    assert not router.can_place() and router.free == 0
    router.submit("c", 1, 10.0, 0.0)  # queued
    router.release(1)
    assert router.free == 0  # the queued request takes the freed slot, not a peer
    router.drain_queue()
    router.release(1)
    assert router.can_place() and router.free == 1
