"""L0 — restart policy, as data and a pure decision (after OTP's supervisor).

A release's workers are *permanent* children: an unexpected exit is always followed by a
restart. The first restart is immediate; each further one within the stable period
doubles the delay (``base * 2**(n-1)``, capped). A worker that stays up for ``stable``
seconds resets the backoff. When more than ``intensity`` exits happen within ``period``
seconds, the release is *crashlooping*: restarts go on at the capped delay (so a fixed
dependency heals it) and ``ps`` shows why; it becomes healthy again after a stable period.
Deliberate exits (``ExitReason.deliberate``: recycle, drain, stop) are not crashes and are
never fed in here. ``intensity``, ``period`` and ``cap`` come from the service's config
(``restart_intensity``, ``restart_period``, ``restart_backoff_cap``); the defaults are theirs.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class RestartDecision:
    delay: float
    crashlooping: bool


@dataclass
class RestartPolicy:
    base: float = 0.1
    cap: float = 10.0
    stable: float = 30.0
    intensity: int = 5
    period: float = 60.0
    consecutive: int = 0
    crashlooping: bool = False
    exits: deque[float] = field(default_factory=deque)
    last_exit: float | None = None

    def on_crash(self, now: float, uptime: float) -> RestartDecision:
        """A worker died unexpectedly after ``uptime`` seconds: when to start its replacement."""
        if uptime >= self.stable:
            self.consecutive = 0
        self.exits.append(now)
        while self.exits and self.exits[0] <= now - self.period:
            self.exits.popleft()
        if len(self.exits) > self.intensity:
            self.crashlooping = True
        # Bounded exponent: a crashloop of 1000+ exits would overflow a float (OverflowError).
        delay = 0.0 if self.consecutive == 0 else min(self.cap, self.base * 2.0 ** min(self.consecutive - 1, 1000))
        if self.crashlooping:
            delay = self.cap
        self.consecutive += 1
        self.last_exit = now
        return RestartDecision(delay, self.crashlooping)

    def on_stable(self, now: float) -> bool:
        """Called periodically; True when the release just left the crashlooping state."""
        if self.last_exit is not None and now - self.last_exit >= self.stable:
            self.consecutive = 0
            self.exits.clear()
            if self.crashlooping:
                self.crashlooping = False
                return True
        return False
