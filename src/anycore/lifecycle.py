"""L0 — explicit lifecycles: an Enum of states and a table of legal transitions per lifecycle.

A worker:  FORKING -> STARTING -> READY -> DRAINING -> EXITED
           (any state but EXITED may go straight to EXITED: a crash)
A release: STARTING -> LIVE -> DRAINING -> RETIRED, STARTING -> FAILED
A service: RUNNING <-> STOPPED

READY covers both idle and serving: whether a worker is serving is derived from its
in-flight count, so it is not a separate state that could disagree with it.
"""

from __future__ import annotations

import enum
from typing import Generic, TypeVar

from anycore.errors import IllegalTransition


class WorkerState(enum.Enum):
    FORKING = "forking"
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    EXITED = "exited"


class ReleaseState(enum.Enum):
    STARTING = "starting"
    LIVE = "live"
    DRAINING = "draining"
    RETIRED = "retired"
    FAILED = "failed"


class ServiceState(enum.Enum):
    RUNNING = "running"
    STOPPED = "stopped"


class ExitReason(enum.Enum):
    """Why the node ended a worker, if it did; ``CRASH`` when it did not (the default).

    ``deliberate`` is the one question every caller asks: a deliberate exit is never fed to
    the restart policy, never counted as a crash (so it cannot trigger an auto-rollback),
    and its WebSockets close with 1012 (service restart) rather than 1011. A new member
    has to say which it is here, in one place.
    """
    CRASH = "crash"              # exited, or was killed, without the node asking
    FAILED_START = "failed start"  # the app's startup (lifespan, readiness) failed
    HUNG = "hung"                # its event loop (or its WSGI threads) stopped ticking
    RECYCLED = "recycled"        # max_requests / max_rss: replaced, then drained
    DRAINED = "drained"          # scaled down
    STOPPED = "stopped"          # its release was stopped or retired

    @property
    def deliberate(self) -> bool:
        return self in _DELIBERATE


_DELIBERATE = frozenset({ExitReason.RECYCLED, ExitReason.DRAINED, ExitReason.STOPPED})


W = WorkerState
R = ReleaseState
TRANSITIONS: dict[enum.Enum, frozenset[enum.Enum]] = {
    W.FORKING: frozenset({W.STARTING, W.EXITED}),
    W.STARTING: frozenset({W.READY, W.DRAINING, W.EXITED}),
    W.READY: frozenset({W.DRAINING, W.EXITED}),
    W.DRAINING: frozenset({W.EXITED}),
    W.EXITED: frozenset(),
    R.STARTING: frozenset({R.LIVE, R.FAILED, R.DRAINING}),
    R.LIVE: frozenset({R.DRAINING}),
    R.DRAINING: frozenset({R.RETIRED}),
    R.RETIRED: frozenset(),
    R.FAILED: frozenset(),
    ServiceState.RUNNING: frozenset({ServiceState.STOPPED}),
    ServiceState.STOPPED: frozenset({ServiceState.RUNNING}),
}

S = TypeVar("S", bound=enum.Enum)


class Lifecycle(Generic[S]):
    """Holds one state; ``to()`` moves it along the table or raises IllegalTransition."""

    __slots__ = ("what", "state")

    def __init__(self, what: str, initial: S) -> None:
        self.what = what
        self.state = initial

    def to(self, target: S) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransition(self.what, self.state.value, target.value)
        self.state = target

    def __eq__(self, other: object) -> bool:
        return self.state is other

    def __hash__(self) -> int:
        return hash(self.state)
