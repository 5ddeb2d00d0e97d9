"""The last 15 minutes of a node, for the dashboard and ``anycore top``: rates and latency
per (service, release), sampled once a second, and a bounded timeline of node events.

``RequestStats`` only counts up (cumulative histograms and status counts). Once a second
``sample`` copies it and subtracts the previous copy: the difference is what happened in
that second, so req/s and errors/s are its counts over the elapsed time, and p50/p99 are
quantiles of the difference's duration histogram (``Histogram.minus``/``quantile``, the
same interpolation as PromQL's ``histogram_quantile``). Nothing of this runs in the
request path: the reader pays, once a second, whether or not anyone watches.

Every sample is a *tick* with a sequence number; every point and every event carries
the sequence it was recorded at, so a reader that remembers the last sequence it saw
asks ``since(seq)`` for exactly what is new — the server keeps no state per reader.

Bounds: ``KEEP`` seconds of points per series (a deque), series with no request for as
long are forgotten, ``EVENTS`` events. ``History`` is pure: the caller passes the
stats snapshot and the times (an injected clock in the executor, ``start_sampling``).
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

from anycore.stats import ReleaseStats

T = TypeVar("T")

KEEP = 900.0  # seconds of history: 15 minutes
EVENTS = 400  # events kept for the timeline
INTERVAL = 1.0  # seconds between samples

# What the timeline groups events by (the page colours them by kind). Anything not named
# here is "info"; a name ending in _failed/_error is an error whatever its prefix.
KINDS: dict[str, str] = {
    "deploy.phase": "deploy", "service.shifted": "deploy", "release.imported": "deploy",
    "release.healthy": "deploy", "release.retired": "deploy", "release.migrating": "deploy",
    "deploy.cluster_shift": "deploy", "release.env": "deploy", "session.notified": "deploy",
    "worker.exited": "crash", "worker.hung": "crash", "release.zygote_lost": "crash",
    "release.crashlooping": "crash", "request.quarantined": "crash", "release.failed": "crash",
    "deploy.cluster_abort": "crash", "session.lost": "crash",
    "scale.up": "scale", "scale.down": "scale", "scale.limits": "scale", "worker.recycling": "scale",
    "release.rollback": "rollback", "release.rollback_failed": "rollback",
    "cluster.peer_joined": "cluster", "cluster.peer_lost": "cluster", "cluster.peer_leaving": "cluster",
    "node.started": "node", "node.stopping": "node", "node.nats_disconnected": "crash",
    "node.nats_reconnected": "node", "service.stopping": "node", "service.stopped": "node",
}


DELIBERATE = ("(stopped", "(drained", "(recycled")  # how worker.exited's cause names an exit the node asked for


def kind_of(event: str, fields: dict[str, object] | None = None) -> str:
    if event == "worker.exited" and any(d in str((fields or {}).get("cause", "")) for d in DELIBERATE):
        return "info"  # drained, retired or recycled: the node ended it, nothing crashed
    if event == "deploy.phase" and (fields or {}).get("phase") == "failed":
        return "crash"  # a deploy that failed is read with the failures, not the progress
    if event in KINDS:
        return KINDS[event]
    if event.endswith(("_failed", "_error")):
        return "crash"
    return "info"


def _plain(value: object) -> object:
    """A field as JSON can carry it (fields are mostly str/int/float; anything else as text)."""
    return value if value is None or isinstance(value, (str, int, float, bool)) else str(value)


@dataclass
class Point:
    seq: int
    t: float  # unix time of the sample
    rps: float  # answers per second
    eps: float  # answers with a 5xx status per second
    p50: float | None  # seconds; None when nothing was answered in that second
    p99: float | None

    def json(self) -> list[object]:
        """Compact, for the page: [seq, t, rps, eps, p50, p99]."""
        return [self.seq, round(self.t, 3), round(self.rps, 2), round(self.eps, 2),
                None if self.p50 is None else round(self.p50, 6), None if self.p99 is None else round(self.p99, 6)]


@dataclass
class Series:
    service: str
    release: str  # "" for answers the node made before choosing a release (queue full, no route)
    points: deque[Point] = field(default_factory=deque)
    last_active: float = 0.0  # unix time of the last point with a request

    def trim(self, now: float) -> None:
        while self.points and self.points[0].t <= now - KEEP:
            self.points.popleft()


@dataclass
class Event:
    seq: int
    t: float
    event: str
    service: str
    fields: dict[str, object]

    def json(self) -> dict[str, object]:
        return {"seq": self.seq, "t": round(self.t, 3), "event": self.event, "kind": kind_of(self.event, self.fields),
                "service": self.service, "fields": self.fields}


@dataclass
class Load:
    """A service's queue depth and requests in flight, per tick (from the node's snapshot)."""

    points: deque[tuple[int, float, int, int]] = field(default_factory=deque)  # (seq, t, queued, inflight)


class History:
    def __init__(self) -> None:
        self.seq = 1  # the last tick's (or event's) sequence number; readers say 0 for "everything"
        self.series: dict[tuple[str, str], Series] = {}
        self.events: deque[Event] = deque(maxlen=EVENTS)
        self.load: dict[str, Load] = {}
        self._previous: dict[tuple[str, str], ReleaseStats] | None = None
        self._previous_at = 0.0  # monotonic time of _previous

    # -- writers ------------------------------------------------------------------------
    def sample(self, snapshot: dict[tuple[str, str], ReleaseStats], now: float, mono: float,
               load: dict[str, tuple[int, int]] | None = None) -> None:
        """One tick: ``snapshot`` is ``RequestStats.snapshot()`` taken at unix time ``now``
        (monotonic ``mono``); ``load`` is (queued, in flight) per service at that time. The
        first tick only sets the baseline."""
        previous, elapsed = self._previous, mono - self._previous_at
        self._previous, self._previous_at = snapshot, mono
        if previous is None or elapsed <= 0:
            return
        self.seq += 1
        for service, (queued, inflight) in (load or {}).items():
            points = self.load.setdefault(service, Load()).points
            points.append((self.seq, now, queued, inflight))
            while points and points[0][1] <= now - KEEP:
                points.popleft()
        for service in [s for s in self.load if s not in (load or {})]:
            del self.load[service]  # the service is gone from the node
        for key, stats in snapshot.items():
            before = previous.get(key)
            duration = stats.duration.minus(before.duration) if before else stats.duration
            statuses = stats.statuses if before is None else {
                s: n - before.statuses.get(s, 0) for s, n in stats.statuses.items()}
            errors = sum(n for s, n in statuses.items() if s >= 500)
            series = self.series.get(key)
            if series is None:
                if duration.count <= 0:
                    continue  # nothing new about a release we are not showing: not worth a series
                series = self.series[key] = Series(*key)
            if duration.count > 0:
                series.last_active = now
            series.points.append(Point(self.seq, now, duration.count / elapsed, errors / elapsed,
                                       duration.quantile(0.5), duration.quantile(0.99)))
            series.trim(now)
        for key in [k for k, s in self.series.items() if s.last_active <= now - KEEP]:
            del self.series[key]  # idle for the whole window: nothing left to draw

    def record(self, t: float, event: str, service: str, fields: dict[str, object]) -> None:
        """A ``NodeLog.watchers`` callback: one node event into the timeline. Access records
        (``request``, one per request with ``--access-log``) are not events: the plots count
        them, and in the timeline they would push the deploys and crashes out of its window."""
        if event == "request":
            return
        self.seq += 1
        self.events.append(Event(self.seq, t, event, service, {k: _plain(v) for k, v in fields.items() if v is not None}))

    # -- readers ------------------------------------------------------------------------
    def since(self, seq: int, max_events: int = EVENTS) -> dict[str, Any]:
        """What is newer than ``seq`` (0: everything): the points of each series, the last
        ``max_events`` events, and the sequence to ask from next time. Each deque is read
        from its new end back to ``seq``: a stream's frame costs what is new, not the window."""
        series = []
        for (service, release), s in sorted(self.series.items()):
            points = [p.json() for p in _newer(s.points, seq, lambda p: p.seq)]
            if points:
                series.append({"service": service, "release": release, "points": points})
        events = [e.json() for e in _newer(self.events, seq, lambda e: e.seq)][-max_events:]
        load = [{"service": service, "points": [[t, queued, inflight] for _, t, queued, inflight in
                                                _newer(lo.points, seq, lambda p: p[0])]}
                for service, lo in sorted(self.load.items())]
        return {"seq": self.seq, "series": series, "events": events, "load": load}

    def latest(self) -> list[dict[str, object]]:
        """The newest point of each series (what ``anycore top`` shows as current rates)."""
        out = []
        for (service, release), s in sorted(self.series.items()):
            if s.points:
                p = s.points[-1]
                out.append({"service": service, "release": release, "t": p.t, "rps": p.rps, "eps": p.eps,
                            "p50": p.p50, "p99": p.p99})
        return out


def _newer(items: deque[T], seq: int, key: Callable[[T], int]) -> list[T]:
    """The items of ``items`` (in sequence order) whose sequence is above ``seq``, oldest first."""
    newer: list[T] = []
    for item in reversed(items):
        if key(item) <= seq:
            break
        newer.append(item)
    newer.reverse()
    return newer


class Sampler:
    """The executor: samples ``stats()`` and the node's snapshot (for queue depth and in
    flight per service) every ``INTERVAL`` on the running loop and tells
    waiting readers (the dashboard's event streams) after each tick. It is a loop timer,
    not a task: nothing to cancel but the handle, and ``close`` does that."""

    def __init__(self, history: History, stats: Callable[[], dict[tuple[str, str], ReleaseStats]],
                 snapshot: Callable[[], dict[str, Any]], wall: Callable[[], float], interval: float = INTERVAL) -> None:
        self.history = history
        self.stats = stats
        self.snapshot = snapshot
        self.last: dict[str, Any] | None = None  # the node's snapshot at the last tick (what streams send)
        self.wall = wall
        self.interval = interval
        self.ticked = asyncio.Event()  # set and replaced after every tick (see ``next_tick``)
        self._handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._handle is None:
            self._loop = loop
            self.ticked = asyncio.Event()
            self._tick()

    def _tick(self) -> None:
        assert self._loop is not None
        # Re-armed first: a sample that raised (a bug) must not end the history for good.
        self._handle = self._loop.call_at(self._loop.time() + self.interval, self._tick)
        try:
            self.last = self.snapshot()
            load = {s["name"]: (int(s.get("queued", 0)), int(s.get("inflight", 0))) for s in self.last.get("services", [])}
            self.history.sample(self.stats(), self.wall(), self._loop.time(), load)
        finally:
            ticked, self.ticked = self.ticked, asyncio.Event()
            ticked.set()

    async def next_tick(self, timeout: float) -> None:
        """Wait for the next sample, at most ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self.ticked.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
