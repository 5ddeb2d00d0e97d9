"""The scaler (anycore.scaler.core) over recorded load traces, with a fake clock.

Issue 5's acceptance: run with a fake clock over ramp, burst, sawtooth and idle traces,
the scaler shows no oscillation (no scale-down within ``scale_down_delay`` after a
scale-up) and bounded steps.

``simulate`` plays a trace through ``Scaler.observe``/``decide`` every 0.25 s of fake time
and plays the executor: a scale-up is instant; a scale-down removes one worker, which
then drains for ``drain_time`` seconds (passed to ``decide`` as ``draining``). The trace
is the number of concurrent requests the clients want; what does not fit the workers'
slots waits in a bounded queue and the rest is rejected, as the router would do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from anycore.scaler.core import Decision, Limits, Scaler, share

DT = 0.25


@dataclass
class Step:
    now: float
    demand: int
    before: int  # workers before the decision
    after: int  # workers after the executor acted
    decision: Decision


@dataclass
class Run:
    limits: Limits
    steps: list[Step] = field(default_factory=list)

    @property
    def ups(self) -> list[Step]:
        return [s for s in self.steps if s.after > s.before]

    @property
    def downs(self) -> list[Step]:
        return [s for s in self.steps if s.after < s.before]

    def count_at(self, t: float) -> int:
        return [s.after for s in self.steps if s.now <= t][-1]


def simulate(limits: Limits, trace: Callable[[float], float], duration: float, *, start: int = 1,
             drain_time: float = 1.0, max_queue: int = 20, cpu_bound: bool = False) -> Run:
    """``cpu_bound``: each request in flight keeps a worker's core busy (busy cores =
    min(in flight, workers)), as the release supervisor would measure it; else none."""
    scaler = Scaler(limits)
    run = Run(limits)
    current = start
    drains: list[float] = []  # when each draining worker is gone
    for i in range(int(duration / DT) + 1):
        now = i * DT
        drains = [t for t in drains if t > now]
        demand = max(0, round(trace(now)))
        inflight = min(demand, current * limits.slots)
        queued = min(demand - inflight, max_queue)
        rejected = demand - inflight - queued
        scaler.observe(now, inflight, queued, rejected, float(min(inflight, current)) if cpu_bound else 0.0)
        decision = scaler.decide(now, current, draining=len(drains))
        before = current
        if decision.desired > current:
            current = decision.desired
        elif decision.desired < current:
            current -= 1
            drains.append(now + drain_time)
        run.steps.append(Step(now, demand, before, current, decision))
    return run


def need(limits: Limits, demand: float) -> int:
    return math.ceil(demand / (limits.slots * limits.target_utilization) - 1e-9) if demand > 0 else 0


def assert_no_oscillation_and_bounded_steps(run: Run, cpu_bound: bool = False) -> None:
    lim = run.limits
    last_up = -math.inf
    for s in run.steps:
        d = s.decision
        assert lim.min_workers <= d.desired <= lim.max_workers, s
        assert lim.min_workers <= s.after <= lim.max_workers, s
        if s.after > s.before:
            last_up = s.now
            # straight up to the estimated need, never beyond it
            assert d.desired == min(lim.max_workers, max(lim.min_workers, d.panic_need, d.stable_need)), s
        if d.desired < s.before:
            assert d.desired == s.before - 1, f"a scale-down of more than one worker: {s}"
            assert s.now - last_up >= lim.scale_down_delay, f"scale-down {s.now - last_up:.2f}s after a scale-up: {s}"
    # and never more workers than the highest need any sample asked for (CPU-bound: a
    # worker per request at most)
    peak = max(max(need(lim, s.demand), s.demand if cpu_bound else 0) for s in run.steps)
    assert max(s.after for s in run.steps) <= max(lim.min_workers, min(lim.max_workers, peak), run.steps[0].before)


# -- traces -------------------------------------------------------------------------------------

def ramp(t: float) -> float:  # 0 -> 40 over 60 s, then held
    return min(40.0, 40.0 * t / 60.0)


def burst(t: float) -> float:  # 100 for 5 s, from t = 10 s
    return 100.0 if 10.0 <= t < 15.0 else 0.0


def sawtooth(t: float) -> float:  # 0..30, period 20 s, for 120 s
    return 30.0 * ((t % 20.0) / 20.0) if t < 120.0 else 0.0


def idle(t: float) -> float:
    return 0.0


LIMITS = Limits(min_workers=1, max_workers=32, slots=8, target_utilization=0.7,
                scale_down_delay=30.0, keep_warm=60.0, stable_window=30.0, panic_window=3.0)


def test_ramp_scales_up_monotonically_to_the_need_without_oscillating() -> None:
    run = simulate(LIMITS, ramp, 90.0)
    assert_no_oscillation_and_bounded_steps(run)
    assert not run.downs  # the load only grows: no worker goes away
    assert run.steps[-1].after == need(LIMITS, 40)  # 40 / (8 * 0.7) -> 8
    # it kept up: every tick has the workers the demand seen on that tick needs
    for s in run.steps:
        assert s.after >= min(LIMITS.max_workers, need(LIMITS, s.demand)), s


def test_burst_goes_straight_to_the_need_on_the_first_tick_then_shrinks_one_at_a_time() -> None:
    run = simulate(LIMITS, burst, 150.0)
    assert_no_oscillation_and_bounded_steps(run)
    first = next(s for s in run.steps if s.demand > 0)
    assert first.after == need(LIMITS, 100) == 18  # straight up, not one worker per tick
    assert len(run.ups) == 1
    downs = run.downs
    assert downs and downs[0].now >= first.now + LIMITS.scale_down_delay
    assert all(s.before - s.after == 1 for s in downs)
    # one drain at a time: the next scale-down waits for the previous drain to finish
    assert all(b.now - a.now >= 1.0 for a, b in zip(downs, downs[1:]))
    assert run.steps[-1].after == LIMITS.min_workers


def test_burst_above_max_is_held_at_max() -> None:
    lim = Limits(min_workers=1, max_workers=6, slots=8, scale_down_delay=10.0, keep_warm=20.0)
    run = simulate(lim, burst, 60.0)
    assert_no_oscillation_and_bounded_steps(run)
    first = next(s for s in run.steps if s.demand > 0)
    assert first.after == 6
    assert max(s.after for s in run.steps) == 6


def test_sawtooth_never_scales_down_within_the_delay_and_steps_stay_bounded() -> None:
    run = simulate(LIMITS, sawtooth, 180.0)
    assert_no_oscillation_and_bounded_steps(run)
    assert run.ups and run.downs
    # the peaks every 20 s do not each cause a scale-up/scale-down cycle: with a 30 s
    # delay there is at most one down-then-up reversal per delay period
    reversals = sum(1 for a, b in zip(run.downs, run.ups[1:]) if b.now > a.now)
    assert reversals <= 180.0 / LIMITS.scale_down_delay
    assert max(s.after for s in run.steps) <= need(LIMITS, 30)


def test_idle_with_min_one_never_goes_below_one_nor_above() -> None:
    run = simulate(LIMITS, idle, 200.0)
    assert_no_oscillation_and_bounded_steps(run)
    assert {s.after for s in run.steps} == {1}


def test_idle_after_load_with_min_zero_reaches_zero_only_after_keep_warm() -> None:
    lim = Limits(min_workers=0, max_workers=8, slots=8, scale_down_delay=30.0, keep_warm=60.0)
    load_end = 10.0
    run = simulate(lim, lambda t: 12.0 if t < load_end else 0.0, 150.0)
    assert_no_oscillation_and_bounded_steps(run)
    last_demand = max(s.now for s in run.steps if s.demand > 0)
    zero = [s.now for s in run.steps if s.after == 0]
    assert zero, "never scaled to zero"
    assert zero[0] >= last_demand + lim.keep_warm
    assert run.steps[-1].after == 0
    # the last worker was kept warm in between
    assert all(s.after >= 1 for s in run.steps if s.now < last_demand + lim.keep_warm)


def test_from_zero_the_first_request_wakes_a_worker_on_the_same_tick() -> None:
    lim = Limits(min_workers=0, max_workers=8, slots=8, scale_down_delay=30.0, keep_warm=60.0)
    run = simulate(lim, lambda t: 1.0 if t >= 20.0 else 0.0, 30.0, start=0)
    assert_no_oscillation_and_bounded_steps(run)
    assert run.count_at(19.75) == 0
    assert run.count_at(20.0) == 1


@settings(max_examples=60, deadline=None)
@given(
    demands=st.lists(st.integers(0, 120), min_size=1, max_size=40),
    hold=st.integers(1, 40),  # each demand value lasts hold * 0.25 s
    min_workers=st.integers(0, 3),
    extra=st.integers(0, 12),
    delay=st.sampled_from([0.0, 2.0, 10.0, 30.0]),
    keep_warm=st.sampled_from([0.0, 5.0, 60.0]),
    drain_time=st.sampled_from([0.25, 1.0, 5.0]),
    cpu_bound=st.booleans(),
)
def test_any_trace_stays_in_bounds_and_never_scales_down_soon_after_up(
    demands: list[int], hold: int, min_workers: int, extra: int, delay: float, keep_warm: float, drain_time: float,
    cpu_bound: bool,
) -> None:
    lim = Limits(min_workers=min_workers, max_workers=max(1, min_workers + extra), slots=4,
                 scale_down_delay=delay, keep_warm=keep_warm, stable_window=10.0, panic_window=2.0)
    span = hold * DT

    def trace(t: float) -> float:
        return float(demands[min(len(demands) - 1, int(t / span))])

    run = simulate(lim, trace, span * len(demands) + 20.0, start=max(1, min_workers), drain_time=drain_time,
                   cpu_bound=cpu_bound)
    assert_no_oscillation_and_bounded_steps(run, cpu_bound)


# -- busy cores: the CPU a release's workers use -------------------------------------------------

CPU_LIMITS = Limits(min_workers=1, max_workers=8, slots=8, target_utilization=0.7,
                    scale_down_delay=10.0, keep_warm=60.0, stable_window=10.0, panic_window=2.0)


def test_cpu_bound_requests_that_fit_one_workers_slots_get_a_core_each() -> None:
    # 4 requests that compute: by slots one worker holds them (4 < 8 x 0.7), sharing one core.
    run = simulate(CPU_LIMITS, lambda t: 4.0, 30.0, cpu_bound=True)
    assert run.count_at(30.0) == 4
    assert_no_oscillation_and_bounded_steps(run, cpu_bound=True)
    first = run.ups[0].decision
    assert first.busy == 1.0 and first.demand == 4.0  # the input that asked, as `anycore ps` shows it


def test_the_same_requests_awaiting_io_stay_on_one_worker() -> None:
    run = simulate(CPU_LIMITS, lambda t: 4.0, 30.0, cpu_bound=False)
    assert not run.ups and run.count_at(30.0) == 1


def test_busy_cores_never_ask_for_more_workers_than_requests_nor_any_without_demand() -> None:
    scaler = Scaler(CPU_LIMITS)
    scaler.observe(0.0, 2, 0, 0, busy=3.0)  # three cores busy with two requests (threads of the app)
    assert scaler.decide(0.0, 1).desired == 2
    idle = Scaler(CPU_LIMITS)
    idle.observe(0.0, 0, 0, 0, busy=1.0)  # a worker computing with no request in flight: no need of more
    assert idle.decide(0.0, 1).desired == 1


def test_when_the_computing_ends_the_workers_shrink_back_one_at_a_time_after_the_delay() -> None:
    run = simulate(CPU_LIMITS, lambda t: 4.0 if t < 20.0 else 0.0, 120.0, cpu_bound=True)
    assert run.count_at(19.0) == 4 and run.count_at(120.0) == 1
    assert_no_oscillation_and_bounded_steps(run, cpu_bound=True)


# -- share: max-min fairness of the node's cores ----------------------------------------------------

def test_share_gives_everyone_what_they_want_when_it_fits() -> None:
    assert share(8, {"a": (1, 3), "b": (0, 2), "c": (1, 1)}) == {"a": 3, "b": 2, "c": 1}


def test_share_splits_evenly_and_a_small_want_is_met_in_full() -> None:
    assert share(8, {"a": (1, 10), "b": (1, 10)}) == {"a": 4, "b": 4}
    assert share(9, {"small": (0, 2), "a": (0, 10), "b": (0, 10)}) == {"small": 2, "a": 4, "b": 3} or \
        share(9, {"small": (0, 2), "a": (0, 10), "b": (0, 10)}) == {"small": 2, "a": 3, "b": 4}


def test_share_never_goes_below_a_minimum() -> None:
    grant = share(4, {"a": (3, 10), "b": (0, 10)})
    assert grant["a"] >= 3 and sum(grant.values()) <= 4
    assert share(2, {"a": (2, 5), "b": (2, 5)}) == {"a": 2, "b": 2}  # mins above the budget still hold


def test_share_does_not_give_extra_to_a_large_minimum_while_another_is_short() -> None:
    """Max-min fair with floors: "b" holds its minimum of 4; the other 4 workers go to "a",
    which wants 3 — not 2 each, which would leave "a" short while "b" gets 6."""
    assert share(8, {"a": (0, 3), "b": (4, 10)}) == {"a": 3, "b": 5}
    assert share(8, {"a": (0, 4), "b": (4, 10)}) == {"a": 4, "b": 4}


wants_st = st.dictionaries(
    st.sampled_from("abcdef"),
    st.tuples(st.integers(0, 4), st.integers(0, 24)),
    min_size=1, max_size=6,
)


@settings(max_examples=300, deadline=None)
@given(budget=st.integers(0, 40), wants=wants_st)
def test_share_is_max_min_fair(budget: int, wants: dict[str, tuple[int, int]]) -> None:
    grant = share(budget, wants)
    assert set(grant) == set(wants)
    mins_fit = sum(m for m, _ in wants.values()) <= budget
    for name, (minimum, wanted) in wants.items():
        assert grant[name] >= minimum  # never below its minimum
        assert grant[name] <= max(minimum, wanted)  # never more than it asked
    if not mins_fit:
        return
    total = sum(grant.values())
    assert total <= budget
    short = [n for n, (m, w) in wants.items() if grant[n] < w]
    if short:
        assert total == budget  # nothing is left idle while someone wants more
    # nobody who wants more has fewer than another's extra above its own minimum (+1 for rounding)
    for i in short:
        for j, (mj, _) in wants.items():
            assert grant[j] <= max(mj, grant[i] + 1), (i, j, grant)
    # a service wanting no more than an even split gets all it wants (when every
    # minimum fits in an even split too)
    even = budget / len(wants)
    if all(m <= even for m, _ in wants.values()):
        for name, (minimum, wanted) in wants.items():
            if wanted <= even:
                assert grant[name] == max(minimum, wanted), (name, grant)
