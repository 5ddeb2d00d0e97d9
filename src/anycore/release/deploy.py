"""The deploy state machine: the phases a release goes through to replace another.

    FETCH -> ENV -> IMPORT -> WARM -> MIGRATE -> SHIFT -> DRAIN -> RETIRE -> DONE
    (ENV only for a release that declares dependencies: its environment is built or reused)
    (any phase before SHIFT) -> FAILED        the old release serves as before
    (a phase after SHIFT)    -> FAILED        the new release is live; only the old one's
                                              retirement went wrong
    (NOOP: the release is already live)

Everything before SHIFT is preparation that changes nothing users see; SHIFT is the one
instant where new requests start going to the new release; DRAIN and RETIRE only let the
old release finish. A ``Deploy`` records each phase with its start time and duration and
produces the progress events the CLI prints; the executor (``node/deployer.py``) does the
work and calls ``enter``/``fail``/``finish``.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from anycore.errors import IllegalTransition


class Phase(enum.Enum):
    QUEUED = "queued"
    FETCH = "fetch"
    ENV = "env"
    IMPORT = "import"
    WARM = "warm"
    MIGRATE = "migrate"
    SHIFT = "shift"
    DRAIN = "drain"
    RETIRE = "retire"
    DONE = "done"
    FAILED = "failed"
    NOOP = "noop"


ORDER = [Phase.QUEUED, Phase.FETCH, Phase.ENV, Phase.IMPORT, Phase.WARM, Phase.MIGRATE, Phase.SHIFT, Phase.DRAIN, Phase.RETIRE, Phase.DONE]
BEFORE_SHIFT = frozenset(ORDER[: ORDER.index(Phase.SHIFT)])
TERMINAL = frozenset({Phase.DONE, Phase.FAILED, Phase.NOOP})


@dataclass
class Deploy:
    id: str
    service: str
    release: str
    previous: str
    source: str
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    phase: Phase = Phase.QUEUED
    started: float = 0.0
    started_wall: float = 0.0
    phase_started: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    error: str = ""
    traceback: str = ""
    detail: str = ""
    listeners: list[Callable[[dict[str, Any]], None]] = field(default_factory=list)
    task: Any = None  # the executor's task, so a caller can await the whole deploy
    aborting: bool = False  # an abort cancelled the task (before the shift): not a failure of the release

    def __post_init__(self) -> None:
        self.started = self.phase_started = self.clock()
        self.started_wall = self.wall()

    @property
    def shifted(self) -> bool:
        return self.phase not in BEFORE_SHIFT and self.phase is not Phase.FAILED

    @property
    def finished(self) -> bool:
        return self.phase in TERMINAL

    def enter(self, phase: Phase, detail: str = "") -> None:
        """Move to the next phase (phases may be skipped forward, never backward)."""
        if self.finished or phase in (Phase.FAILED, Phase.NOOP) or ORDER.index(phase) <= ORDER.index(self.phase):
            raise IllegalTransition(f"deploy {self.id}", self.phase.value, phase.value)
        self._close_phase()
        self.phase = phase
        self.detail = detail
        self._emit()

    def fail(self, error: str, traceback: str = "") -> None:
        if self.finished:
            raise IllegalTransition(f"deploy {self.id}", self.phase.value, Phase.FAILED.value)
        self._close_phase()
        self.error = error
        self.traceback = traceback
        self.phase = Phase.FAILED
        self._emit()

    def note(self, detail: str) -> None:
        """More about the current phase, as an event (e.g. the cluster's shift window)."""
        self.detail = detail
        self._emit()

    def noop(self, why: str) -> None:
        self.detail = why
        self.phase = Phase.NOOP
        self._emit()

    def _close_phase(self) -> None:
        now = self.clock()
        if self.phase is not Phase.QUEUED:
            self.timings[self.phase.value] = round(now - self.phase_started, 4)
        self.phase_started = now

    def _emit(self) -> None:
        event = self.snapshot()
        for listener in self.listeners:
            listener(event)

    def snapshot(self) -> dict[str, Any]:
        return {
            "id": self.id, "service": self.service, "release": self.release, "previous": self.previous,
            "source": self.source, "phase": self.phase.value, "detail": self.detail, "timings": dict(self.timings),
            "error": self.error, "traceback": self.traceback, "started_at": self.started_wall,
            "elapsed": round(self.clock() - self.started, 4),
        }
