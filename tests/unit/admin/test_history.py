"""The dashboard's history, pure: snapshots of real ``RequestStats`` at fake times."""

from __future__ import annotations

from anycore.admin.history import EVENTS, KEEP, History, kind_of
from anycore.stats import RequestStats
from tests.unit.clock import FakeClock


def tick(history: History, stats: RequestStats, clock: FakeClock, wall0: float = 1.7e9) -> None:
    history.sample(stats.snapshot(), wall0 + clock(), clock())


def test_rates_and_quantiles_come_from_the_last_second_only() -> None:
    stats, history, clock = RequestStats(), History(), FakeClock(0.0)
    for _ in range(50):
        stats.record("shop", "shop@a", 200, 0.3, 0.0)  # slow, before the baseline
    tick(history, stats, clock)
    assert history.series == {}  # the first sample is only the baseline
    for _ in range(90):
        stats.record("shop", "shop@a", 200, 0.002, 0.0)
    for _ in range(10):
        stats.record("shop", "shop@a", 503, 0.0002, None)
    clock.advance(2.0)
    tick(history, stats, clock)
    [point] = history.series[("shop", "shop@a")].points
    assert point.rps == 50.0 and point.eps == 5.0  # 100 and 10 answers over 2 s
    assert point.p50 is not None and 0.001 < point.p50 <= 0.0025  # the 0.3 s answers of before are not in it
    assert point.p99 is not None and point.p99 <= 0.0025


def test_an_idle_second_is_a_zero_point_and_an_unknown_idle_release_no_series() -> None:
    stats, history, clock = RequestStats(), History(), FakeClock(0.0)
    stats.record("shop", "shop@a", 200, 0.01, 0.0)
    tick(history, stats, clock)
    clock.advance(1.0)
    stats.record("shop", "shop@b", 200, 0.01, 0.0)
    tick(history, stats, clock)
    assert list(history.series) == [("shop", "shop@b")]  # shop@a had nothing new: not drawn
    clock.advance(1.0)
    tick(history, stats, clock)
    last = history.series[("shop", "shop@b")].points[-1]
    assert (last.rps, last.p50, last.p99) == (0.0, None, None)


def test_points_older_than_the_window_go_and_idle_series_are_forgotten() -> None:
    stats, history, clock = RequestStats(), History(), FakeClock(0.0)
    tick(history, stats, clock)
    clock.advance(1.0)
    stats.record("shop", "shop@a", 200, 0.01, 0.0)
    tick(history, stats, clock)
    for _ in range(int(KEEP) - 1):
        clock.advance(1.0)
        tick(history, stats, clock)
    points = history.series[("shop", "shop@a")].points
    assert len(points) == int(KEEP) and points[0].rps == 1.0
    clock.advance(1.0)
    tick(history, stats, clock)
    assert history.series == {}  # its one busy second aged out: nothing left to draw


def test_since_returns_only_what_is_new_and_events_are_bounded() -> None:
    stats, history, clock = RequestStats(), History(), FakeClock(0.0)
    tick(history, stats, clock)
    stats.record("shop", "shop@a", 200, 0.01, 0.0)
    clock.advance(1.0)
    tick(history, stats, clock)
    history.record(1.7e9, "deploy.phase", "shop", {"phase": "warm", "release": "shop@b", "error": None, "obj": object()})
    first = history.since(0)
    assert [s["release"] for s in first["series"]] == ["shop@a"] and len(first["series"][0]["points"]) == 1
    [event] = first["events"]
    assert event["kind"] == "deploy" and "error" not in event["fields"] and isinstance(event["fields"]["obj"], str)
    clock.advance(1.0)
    tick(history, stats, clock)
    later = history.since(first["seq"])
    assert later["events"] == [] and len(later["series"][0]["points"]) == 1 and later["seq"] > first["seq"]
    for i in range(EVENTS + 50):
        history.record(1.7e9 + i, "scale.up", "shop", {"workers": i})
    assert len(history.events) == EVENTS
    assert len(history.since(0, max_events=10)["events"]) == 10


def test_event_kinds() -> None:
    assert kind_of("worker.exited", {"cause": "killed by signal 9 (SIGKILL)"}) == "crash"
    assert kind_of("worker.exited", {"cause": "exited with code 0 (stopped: release retired)"}) == "info"
    assert kind_of("deploy.phase", {"phase": "warm"}) == "deploy"
    assert kind_of("deploy.phase", {"phase": "failed", "error": "ImportError"}) == "crash"
    assert kind_of("release.rollback") == "rollback"
    assert kind_of("scale.down") == "scale"
    assert kind_of("something.publish_failed") == "crash"
    assert kind_of("worker.ready") == "info"


def test_load_per_service_is_kept_per_tick_and_dropped_with_the_service() -> None:
    stats, history, clock = RequestStats(), History(), FakeClock(0.0)
    history.sample(stats.snapshot(), 1.7e9, clock(), {"shop": (0, 0)})
    clock.advance(1.0)
    history.sample(stats.snapshot(), 1.7e9 + 1, clock(), {"shop": (3, 8), "auth": (0, 1)})
    first = history.since(0)
    assert {l["service"]: l["points"] for l in first["load"]} == {"shop": [[1.7e9 + 1, 3, 8]], "auth": [[1.7e9 + 1, 0, 1]]}
    clock.advance(1.0)
    history.sample(stats.snapshot(), 1.7e9 + 2, clock(), {"shop": (0, 2)})
    later = history.since(first["seq"])
    assert later["load"] == [{"service": "shop", "points": [[1.7e9 + 2, 0, 2]]}]  # auth is gone from the node


def test_access_records_never_reach_the_timeline() -> None:
    history = History()
    history.record(1.0, "deploy.phase", "shop", {"phase": "shift"})
    for i in range(EVENTS + 10):
        history.record(2.0 + i, "request", "shop", {"status": 200, "path": "/"})
    events = history.since(0)["events"]
    assert [e["event"] for e in events] == ["deploy.phase"]
