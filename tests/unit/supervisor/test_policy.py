"""RestartPolicy: immediate first restart, capped exponential backoff, reset after a stable
uptime, crashlooping past the restart intensity. Time is a plain float; nothing sleeps."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anycore.supervisor.policy import RestartDecision, RestartPolicy


def policy(**kw: float) -> RestartPolicy:
    defaults = dict(base=0.1, cap=10.0, stable=30.0, intensity=100, period=60.0)
    defaults.update(kw)
    return RestartPolicy(**defaults)  # type: ignore[arg-type]


def test_first_restart_is_immediate() -> None:
    assert policy().on_crash(now=100.0, uptime=0.5) == RestartDecision(0.0, False)


def test_then_exponential_backoff_capped() -> None:
    p = policy(base=0.1, cap=1.0)
    delays = [p.on_crash(now=float(i), uptime=0.1).delay for i in range(8)]
    assert delays == pytest.approx([0.0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert not p.crashlooping


def test_backoff_resets_after_a_stable_uptime() -> None:
    p = policy(base=0.1, cap=10.0, stable=30.0)
    for i in range(4):
        p.on_crash(now=float(i), uptime=1.0)
    assert p.on_crash(now=4.0, uptime=1.0).delay == pytest.approx(0.8)
    # the replacement stayed up for the stable period before dying: treated as a first crash
    assert p.on_crash(now=40.0, uptime=30.0).delay == 0.0
    assert p.on_crash(now=41.0, uptime=1.0).delay == pytest.approx(0.1)


def test_uptime_just_below_stable_does_not_reset() -> None:
    p = policy(base=0.1, stable=30.0)
    p.on_crash(now=0.0, uptime=1.0)
    assert p.on_crash(now=40.0, uptime=29.99).delay == pytest.approx(0.1)


def test_on_stable_resets_the_backoff() -> None:
    p = policy(base=0.1, stable=30.0)
    for i in range(3):
        p.on_crash(now=float(i), uptime=1.0)
    assert p.on_stable(now=10.0) is False
    assert p.consecutive == 3
    assert p.on_stable(now=32.0) is False  # reset, but it was not crashlooping
    assert p.on_crash(now=33.0, uptime=1.0).delay == 0.0


def test_crashlooping_after_more_than_intensity_exits_within_period_at_capped_delay() -> None:
    p = policy(base=0.1, cap=5.0, intensity=3, period=10.0)
    decisions = [p.on_crash(now=float(i), uptime=0.1) for i in range(4)]
    assert [d.crashlooping for d in decisions] == [False, False, False, True]
    assert decisions[-1].delay == 5.0  # the cap, though the backoff alone would give 0.4
    assert p.crashlooping
    # restarts go on (so a fixed dependency heals it), at the capped delay
    assert p.on_crash(now=4.0, uptime=0.1) == RestartDecision(5.0, True)


def test_exactly_intensity_exits_within_period_is_not_crashlooping() -> None:
    p = policy(intensity=3, period=10.0)
    assert not any(p.on_crash(now=float(i), uptime=0.1).crashlooping for i in range(3))


def test_exits_older_than_the_period_do_not_count_towards_intensity() -> None:
    p = policy(intensity=3, period=10.0, stable=1000.0)
    # seven exits, but never more than three within one 10 s period
    for now in (0.0, 5.0, 9.0, 10.0, 15.0, 19.0, 20.0):
        assert p.on_crash(now=now, uptime=0.1).crashlooping is False


def test_on_stable_clears_crashlooping_after_the_stable_period() -> None:
    p = policy(cap=5.0, stable=30.0, intensity=2, period=60.0)
    for i in range(3):
        p.on_crash(now=float(i), uptime=0.1)
    assert p.crashlooping
    assert p.on_stable(now=2.0 + 29.9) is False
    assert p.crashlooping
    assert p.on_stable(now=2.0 + 30.0) is True  # just left crashlooping
    assert not p.crashlooping
    assert p.on_stable(now=100.0) is False  # reported once
    # healthy again: the next crash is a first crash
    assert p.on_crash(now=101.0, uptime=0.1) == RestartDecision(0.0, False)


def test_on_stable_before_any_crash_does_nothing() -> None:
    p = policy()
    assert p.on_stable(now=1e6) is False
    assert p.on_crash(now=1e6, uptime=0.0).delay == 0.0


def test_backoff_stays_capped_after_thousands_of_crashes() -> None:
    p = policy(base=0.1, cap=10.0, intensity=10**6, period=1e9, stable=1e9)
    delays = [p.on_crash(now=float(i), uptime=0.0).delay for i in range(1100)]
    assert delays[-1] == 10.0
    assert max(delays) == 10.0


@settings(max_examples=100, deadline=None)
@given(
    crashes=st.lists(st.tuples(st.floats(0.0, 50.0), st.floats(0.0, 60.0)), max_size=40),
    cap=st.floats(0.5, 20.0),
)
def test_delay_is_never_negative_nor_above_the_cap(crashes: list[tuple[float, float]], cap: float) -> None:
    p = policy(base=0.1, cap=cap, stable=30.0, intensity=5, period=60.0)
    now = 0.0
    for gap, uptime in crashes:
        now += gap
        decision = p.on_crash(now=now, uptime=uptime)
        assert 0.0 <= decision.delay <= cap
        assert decision.crashlooping == p.crashlooping
        if decision.crashlooping:
            assert decision.delay == cap
