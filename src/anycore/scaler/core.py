"""The scaler: how many workers a release should have on this node. A pure decision.

Inputs, sampled on every tick and on every wake-up (a request arriving with no worker):
the demand, which is requests in flight + queued + rejected since the last sample (a
rejected request was demand we could not hold), and the busy cores: the CPU the release's
ready workers used over the last second or so, in cores (a worker's loop is one). From the
samples the scaler keeps two averages, in the Knative style: a *stable* window
(``stable_window`` s) and a short *panic* window (``panic_window`` s). The estimated need
is the larger of ``ceil(demand / (slots * target))`` and ``ceil(busy / target)``, the
second never above the demand itself (a worker more than there are requests serves none).

Why both. Slots alone count concurrency, as Knative does: right for a service that awaits
I/O, blind to one that computes. Four CPU-bound requests fit one worker's 8 slots, so by
slots alone they share one core while the others idle; their worker's busy core asks
for a second. The CPU term only ever raises the need, so an I/O-bound service scales as
before.

Rules:
- Up: straight to the need of the panic window when it exceeds the current count (a burst
  is served at once, not one worker per tick), else to the need of the stable window.
- Panic mode: while the panic window asks for twice the current count or more, and for one
  stable window after, the count never goes down.
- Down: only after ``scale_down_delay`` s without a scale-up, one worker at a time (each
  drain must finish before the next is decided: the executor reports ``draining``), and
  to zero only after ``keep_warm`` s without any demand.
- Always within [min_workers, max_workers], and within the node's fair share (``budget``).

``share`` divides a node's cores among services that compete: max-min fairness (each gets
what it asks if it can; what is left is split evenly among those who want more), never
below a service's ``min_workers``.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Limits:
    min_workers: int
    max_workers: int
    slots: int
    target_utilization: float = 0.7
    scale_down_delay: float = 30.0
    keep_warm: float = 60.0
    stable_window: float = 30.0
    panic_window: float = 3.0


class Reason(enum.Enum):
    """Why the scaler decided what it did: compared by identity, shown by value."""
    DEMAND = "demand above capacity"
    OVER_LIMITS = "over the limits"
    UNDER_MIN = "under min_workers"
    PANIC = "panic mode: holding"
    DRAINING = "waiting for a drain to finish"
    COOLDOWN = "scale-down delay after a scale-up"
    SCALING_DOWN = "scaling down by one"
    KEEP_WARM = "keeping the last worker warm"
    STEADY = "steady"


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: Reason
    stable_need: int
    panic_need: int
    demand: float
    panic: bool
    busy: float = 0.0  # cores the workers used (panic window), an input shown with the demand


@dataclass
class Scaler:
    limits: Limits
    samples: deque[tuple[float, float, float]] = field(default_factory=deque)  # (time, demand, busy cores)
    last_up: float = -math.inf
    last_demand: float = -math.inf  # last time demand was above zero
    panic_until: float = -math.inf
    last: Decision | None = None

    def observe(self, now: float, inflight: int, queued: int, rejected: int, busy: float = 0.0) -> None:
        """One sample; ``busy``: the cores the ready workers used lately (0 when unknown)."""
        demand = float(inflight + queued + rejected)
        if self.last_demand == -math.inf:
            self.last_demand = now  # keep_warm counts from the release's start, not from the epoch
        self.samples.append((now, demand, max(0.0, busy)))
        if demand > 0:
            self.last_demand = now
        horizon = now - max(self.limits.stable_window, self.limits.panic_window)
        while self.samples and self.samples[0][0] < horizon:
            self.samples.popleft()

    def _average(self, now: float, window: float, index: int = 1) -> float:
        values = [sample[index] for sample in self.samples if sample[0] >= now - window]
        return sum(values) / len(values) if values else 0.0

    def _need(self, demand: float, busy: float) -> int:
        if demand <= 0:
            return 0
        target = self.limits.target_utilization
        by_slots = math.ceil(demand / (self.limits.slots * target) - 1e-9)
        by_cpu = min(math.ceil(busy / target - 1e-9), math.ceil(demand - 1e-9))
        return max(by_slots, by_cpu)

    def decide(self, now: float, current: int, draining: int = 0, budget: int | None = None) -> Decision:
        """Desired worker count given ``current`` ready-or-starting workers (``draining`` leaving)."""
        lim = self.limits
        stable = self._average(now, lim.stable_window)
        panic_demand = self._average(now, lim.panic_window)
        # The latest sample counts fully in the panic window: a burst is seen on its first tick.
        if self.samples:
            panic_demand = max(panic_demand, self.samples[-1][1])
        stable_busy, panic_busy = self._average(now, lim.stable_window, 2), self._average(now, lim.panic_window, 2)
        stable_need, panic_need = self._need(stable, stable_busy), self._need(panic_demand, panic_busy)
        ceiling = lim.max_workers if budget is None else max(lim.min_workers, min(lim.max_workers, budget))
        clamp = lambda n: max(lim.min_workers, min(ceiling, n))  # noqa: E731

        if current and panic_need >= 2 * current:
            self.panic_until = now + lim.stable_window
        panic = now < self.panic_until
        if panic_need > current or stable_need > current:
            desired, reason = clamp(max(panic_need, stable_need)), Reason.DEMAND
            if desired > current:
                self.last_up = now
        elif current != clamp(current):  # over max (or the share), or under a min raised by `anycore scale`
            desired, reason = clamp(current), Reason.OVER_LIMITS if current > clamp(current) else Reason.UNDER_MIN
        elif panic:
            desired, reason = current, Reason.PANIC
        elif draining:
            desired, reason = current, Reason.DRAINING
        elif now - self.last_up < lim.scale_down_delay:
            desired, reason = current, Reason.COOLDOWN
        elif stable_need < current:
            target = clamp(max(stable_need, 1 if now - self.last_demand < lim.keep_warm else 0))
            desired = current - 1 if target < current else current
            reason = Reason.SCALING_DOWN if desired < current else (Reason.KEEP_WARM if current == 1 else Reason.STEADY)
        else:
            desired, reason = clamp(current), Reason.STEADY
        self.last = Decision(desired, reason, stable_need, panic_need, round(panic_demand, 2), panic, round(panic_busy, 2))
        return self.last


def share(budget: int, wants: dict[str, tuple[int, int]]) -> dict[str, int]:
    """Max-min fair split of ``budget`` workers; ``wants[name] = (minimum, wanted)``."""
    grant = {name: minimum for name, (minimum, _) in wants.items()}
    left = budget - sum(grant.values())
    # Water-filling: each worker left goes to the service that wants more and has fewest
    # (ties by name), so nobody gets more than its minimum while another that wants more
    # has less. Splitting the rest evenly regardless of minimums would not be: budget 4,
    # a=(0, 2), b=(2, 3) gave a=1, b=3.
    while left > 0:
        hungry = [name for name, (_, wanted) in wants.items() if wanted > grant[name]]
        if not hungry:
            break
        name = min(hungry, key=lambda n: (grant[n], n))
        grant[name] += 1
        left -= 1
    return grant
