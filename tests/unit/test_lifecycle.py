"""Lifecycles: legal transitions move the state; an illegal one raises IllegalTransition
naming the lifecycle and both states, and leaves the state unchanged."""

from __future__ import annotations

import enum

import pytest

from anycore.errors import AnycoreError, IllegalTransition
from anycore.lifecycle import TRANSITIONS, Lifecycle, ReleaseState, ServiceState, WorkerState

W, R, S = WorkerState, ReleaseState, ServiceState


@pytest.mark.parametrize(
    "initial, path",
    [
        (W.FORKING, [W.STARTING, W.READY, W.DRAINING, W.EXITED]),
        (W.FORKING, [W.EXITED]),
        (W.STARTING, [W.EXITED]),
        (W.STARTING, [W.DRAINING, W.EXITED]),
        (W.READY, [W.EXITED]),
        (R.STARTING, [R.LIVE, R.DRAINING, R.RETIRED]),
        (R.STARTING, [R.FAILED]),
        (R.STARTING, [R.DRAINING, R.RETIRED]),
        (S.RUNNING, [S.STOPPED, S.RUNNING, S.STOPPED]),
    ],
)
def test_legal_transitions_move_the_state(initial: enum.Enum, path: list[enum.Enum]) -> None:
    life = Lifecycle("thing", initial)
    for target in path:
        life.to(target)
        assert life.state is target
        assert life == target


@pytest.mark.parametrize(
    "initial, target",
    [
        (W.READY, W.STARTING),
        (W.DRAINING, W.READY),
        (W.EXITED, W.STARTING),
        (W.FORKING, W.READY),
        (R.LIVE, R.STARTING),
        (R.RETIRED, R.LIVE),
        (R.FAILED, R.LIVE),
        (R.LIVE, R.FAILED),
        (S.RUNNING, S.RUNNING),
    ],
)
def test_illegal_transition_raises_naming_the_states(initial: enum.Enum, target: enum.Enum) -> None:
    life = Lifecycle("worker 7 of hello@abc123", initial)
    with pytest.raises(IllegalTransition) as info:
        life.to(target)
    message = str(info.value)
    assert "worker 7 of hello@abc123" in message
    assert f"{initial.value} -> {target.value}" in message
    assert life.state is initial
    assert isinstance(info.value, AnycoreError)


def test_transitions_never_cross_lifecycles() -> None:
    life = Lifecycle("release", R.STARTING)
    with pytest.raises(IllegalTransition):
        life.to(W.STARTING)  # type: ignore[arg-type]
    with pytest.raises(IllegalTransition):
        life.to(S.STOPPED)  # type: ignore[arg-type]


def test_every_state_has_a_row_and_terminal_states_have_no_exit() -> None:
    for state in [*W, *R, *S]:
        assert state in TRANSITIONS
        assert all(type(target) is type(state) for target in TRANSITIONS[state])
    for terminal in (W.EXITED, R.RETIRED, R.FAILED):
        assert TRANSITIONS[terminal] == frozenset()
    # any worker state but EXITED may crash straight to EXITED
    assert all(W.EXITED in TRANSITIONS[s] for s in W if s is not W.EXITED)
