"""The deploy state machine (anycore.release.deploy) with a fake clock.

FETCH -> IMPORT -> WARM -> MIGRATE -> SHIFT -> DRAIN -> RETIRE -> DONE: phases only move
forward (skipping is allowed), anything else raises IllegalTransition; each phase's
duration is recorded; every transition sends its listeners a snapshot.
"""

from __future__ import annotations

from typing import Any

import pytest

from anycore.errors import IllegalTransition
from anycore.release.deploy import BEFORE_SHIFT, ORDER, Deploy, Phase
from tests.unit import clock as _clock

FakeClock = _clock.FakeClock


def make(clock: FakeClock | None = None) -> tuple[Deploy, FakeClock, list[dict[str, Any]]]:
    clock = clock or FakeClock()
    events: list[dict[str, Any]] = []
    d = Deploy("d1", "shop", "shop@new", "shop@old", "/src/shop", clock=clock, wall=lambda: 1.7e9)
    d.listeners.append(events.append)
    return d, clock, events


FORWARD = ORDER[1:]  # every phase a deploy can enter, in order


def test_phases_move_forward_through_the_whole_order() -> None:
    d, clock, events = make()
    for phase in FORWARD:
        clock.advance(1.0)
        d.enter(phase)
        assert d.phase is phase
    assert d.finished
    assert [e["phase"] for e in events] == [p.value for p in FORWARD]


@pytest.mark.parametrize("skip", [Phase.MIGRATE, Phase.DRAIN, Phase.RETIRE])
def test_phases_may_be_skipped_forward(skip: Phase) -> None:
    d, _, events = make()
    for phase in FORWARD:
        if phase is not skip:
            d.enter(phase)
    assert d.phase is Phase.DONE
    assert skip.value not in [e["phase"] for e in events]


@pytest.mark.parametrize("frm", FORWARD[:-1])
def test_going_back_or_staying_raises_illegal_transition(frm: Phase) -> None:
    d, _, events = make()
    d.enter(frm)
    n = len(events)
    for target in ORDER[: ORDER.index(frm) + 1]:
        with pytest.raises(IllegalTransition):
            d.enter(target)
    assert d.phase is frm and len(events) == n  # nothing changed, nobody told


def test_fail_and_noop_cannot_be_entered_as_phases() -> None:
    d, _, _ = make()
    for target in (Phase.FAILED, Phase.NOOP):
        with pytest.raises(IllegalTransition):
            d.enter(target)
    assert d.phase is Phase.QUEUED


@pytest.mark.parametrize("end", ["done", "failed", "noop"])
def test_a_finished_deploy_accepts_no_transition(end: str) -> None:
    d, _, events = make()
    d.enter(Phase.FETCH)
    if end == "done":
        d.enter(Phase.DONE)
    elif end == "failed":
        d.fail("boom")
    else:
        d.noop("already live")
    assert d.finished
    n = len(events)
    for target in FORWARD:
        with pytest.raises(IllegalTransition):
            d.enter(target)
    with pytest.raises(IllegalTransition):
        d.fail("again")
    assert len(events) == n


@pytest.mark.parametrize("at", sorted(BEFORE_SHIFT - {Phase.QUEUED}, key=ORDER.index))
def test_fail_before_the_shift_records_the_error_and_the_old_release_was_never_replaced(at: Phase) -> None:
    d, clock, events = make()
    d.enter(at)
    clock.advance(2.5)
    d.fail("ModuleNotFoundError: No module named 'redis'", "Traceback ...")
    assert d.phase is Phase.FAILED and d.finished and not d.shifted
    assert d.timings[at.value] == 2.5  # the phase that failed is timed too
    last = events[-1]
    assert last["phase"] == "failed"
    assert last["error"] == "ModuleNotFoundError: No module named 'redis'"
    assert last["traceback"] == "Traceback ..."


def test_fail_from_queued_is_allowed() -> None:
    d, _, events = make()
    d.fail("the code store is unreachable")
    assert d.phase is Phase.FAILED and events[-1]["error"] == "the code store is unreachable"
    assert d.timings == {}


def test_shifted_is_true_from_the_shift_on() -> None:
    d, _, _ = make()
    for phase in FORWARD:
        d.enter(phase)
        assert d.shifted is (ORDER.index(phase) >= ORDER.index(Phase.SHIFT))


@pytest.mark.parametrize("at", [Phase.SHIFT, Phase.DRAIN, Phase.RETIRE])
def test_fail_after_the_shift_is_accepted_and_ends_the_deploy(at: Phase) -> None:
    """What the code does today: ``fail`` is legal from any unfinished phase, also after
    the shift (the deployer calls it if anything raises after entering SHIFT), and the
    deploy ends FAILED with its error. (The module docstring only draws FAILED from the
    phases before SHIFT.)"""
    d, clock, events = make()
    d.enter(at)
    assert d.shifted
    clock.advance(1.0)
    d.fail("store write failed")
    assert d.phase is Phase.FAILED and d.finished
    assert d.timings[at.value] == 1.0
    assert events[-1]["phase"] == "failed" and events[-1]["error"] == "store write failed"


def test_timings_are_recorded_per_phase_with_the_fake_clock() -> None:
    clock = FakeClock(50.0)
    d, _, events = make(clock)
    spent = {Phase.FETCH: 0.5, Phase.IMPORT: 1.25, Phase.WARM: 3.0, Phase.SHIFT: 0.01, Phase.DRAIN: 7.5, Phase.RETIRE: 0.2}
    clock.advance(4.0)  # time spent queued is not a phase
    for phase, seconds in spent.items():
        d.enter(phase)
        clock.advance(seconds)
    d.enter(Phase.DONE)
    assert d.timings == {p.value: s for p, s in spent.items()}
    assert "queued" not in d.timings and "migrate" not in d.timings
    assert events[-1]["timings"] == d.timings
    assert events[-1]["elapsed"] == pytest.approx(4.0 + sum(spent.values()))
    assert events[-1]["started_at"] == 1.7e9


def test_listeners_get_one_snapshot_per_transition_and_snapshots_do_not_change_later() -> None:
    d, clock, events = make()
    second: list[dict[str, Any]] = []
    d.listeners.append(second.append)
    d.enter(Phase.FETCH, "from the code store")
    clock.advance(1.0)
    d.enter(Phase.IMPORT)
    clock.advance(1.0)
    d.enter(Phase.WARM, "2 workers")
    assert events == second
    assert [(e["phase"], e["detail"]) for e in events] == [("fetch", "from the code store"), ("import", ""), ("warm", "2 workers")]
    first = events[0]
    assert first["timings"] == {}  # a copy taken at the time, not the live dict
    assert events[2]["timings"] == {"fetch": 1.0, "import": 1.0}
    assert {k: first[k] for k in ("id", "service", "release", "previous", "source")} == {
        "id": "d1", "service": "shop", "release": "shop@new", "previous": "shop@old", "source": "/src/shop",
    }


def test_noop_finishes_without_phases() -> None:
    d, _, events = make()
    d.noop("shop@new is already live; nothing changed")
    assert d.phase is Phase.NOOP and d.finished
    assert events[-1]["phase"] == "noop" and events[-1]["detail"].startswith("shop@new is already live")


def test_the_deployers_drain_phase_counts_in_flight_requests_through_the_service() -> None:
    """The old release's in-flight count comes from its owner (the router's one count, via
    ``service.inflight(worker_id)``), not from the worker handles: they keep no count."""
    import asyncio
    from types import SimpleNamespace

    from anycore.log import NodeLog
    from anycore.node.deployer import Deployer

    old = SimpleNamespace(release="shop@old", workers={1: SimpleNamespace(id=1), 2: SimpleNamespace(id=2)},
                          launch=SimpleNamespace(env_hash=""))
    retired: list[Any] = []

    class Service:
        release_id, release = "shop@old", old

        def inflight(self, worker_id: int) -> int:
            return {1: 2, 2: 1}[worker_id]

        async def retire(self, release: Any, on_drained: Any) -> None:
            retired.append(release)
            on_drained()

    host = SimpleNamespace(services={"shop": Service()}, log=NodeLog())
    record = SimpleNamespace(id="shop@new", service="shop")

    async def run() -> list[dict[str, Any]]:
        deployer = Deployer(host, store=None)  # type: ignore[arg-type]

        async def prepared(deploy: Deploy, record: Any, gate: Any, migrate: bool) -> Any:
            deploy.enter(Phase.SHIFT)
            return old

        deployer._prepare_and_shift = prepared  # type: ignore[method-assign]  # the phases before the drain, elsewhere
        events: list[dict[str, Any]] = []
        deployer.listeners.append(events.append)
        deploy = deployer.start(record, "test")  # type: ignore[arg-type]
        await asyncio.wait_for(deploy.task, 5)
        assert deploy.phase is Phase.DONE, deploy.error
        return events

    events = asyncio.run(run())
    assert ("drain", "shop@old: 3 in flight") in [(e["phase"], e["detail"]) for e in events]
    assert retired == [old]
