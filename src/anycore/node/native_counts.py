"""L2 — what the native gateway counted, turned into the node's counters.

The gateway sends ``Stats`` per service every tick with *cumulative* counts since it
started: answers by (release, status), the duration and queue-wait histograms, the
rejections by reason, the connections' own refusals. The node's ``RequestStats`` (read by
``/metrics``, the dashboard and ``anycore top``) and ``ps``'s ``gateway_errors`` are the
same aggregates the Python gateway fills one request at a time. ``GatewayCounts`` keeps,
per service, the counts it has already added, and adds only the difference; a count lower
than the one seen means a new gateway counting from zero (``restarted`` forgets them all
when the node restarts its gateway). Pure: no I/O, fed ``dataplane.Stats`` values.
"""

from __future__ import annotations

from anycore import dataplane
from anycore.stats import BUCKETS, Histogram, ReleaseStats, RequestStats


class GatewayCounts:
    def __init__(self) -> None:
        self.errors: dict[int, int] = {}  # answers >= 400 by status, over every service
        self._errors: dict[str, dict[int, int]] = {}  # per service, from its last Stats
        self._counted: dict[str, _Counted] = {}  # per service: the gateway's counts already added

    def restarted(self) -> None:
        """A new gateway counts from zero."""
        self._counted.clear()

    def count_errors(self, stats: dataplane.Stats) -> None:
        """``errors`` (the dashboard's gateway errors): every answer >= 400 by status, as the
        Python gateway counts them — each service's, the unrouted ones, and the connections'
        own refusals (``refused``, in service ""'s Stats only). Counts are cumulative per
        service: its last Stats replaces them."""
        errors = self._errors[stats.service] = {}
        for _, status, count in stats.statuses:
            if status >= 400:
                errors[status] = errors.get(status, 0) + count
        for status, count in stats.refused:
            errors[status] = errors.get(status, 0) + count
        self.errors = {}
        for per_service in self._errors.values():
            for status, count in per_service.items():
                self.errors[status] = self.errors.get(status, 0) + count

    def add_requests(self, aggregate: RequestStats, stats: dataplane.Stats) -> None:
        """Add what the gateway counted since its last Stats to the node's RequestStats (so
        /metrics, the dashboard and ``anycore top`` read the same aggregate as under the
        Python gateway). The gateway's counts are cumulative since it started: a count
        lower than the one seen means a new gateway (counted from zero again)."""
        seen = self._counted.setdefault(stats.service, _Counted())
        for release, status, count in stats.statuses:
            delta = _delta(count, seen.statuses.get((release, status), 0))
            seen.statuses[(release, status)] = count
            if delta:
                mine = aggregate.releases.setdefault((stats.service, release), ReleaseStats())
                mine.statuses[status] = mine.statuses.get(status, 0) + delta
        for release, duration, duration_sum, queue_wait, queue_sum in stats.histograms:
            if len(duration) != len(BUCKETS) or len(queue_wait) != len(BUCKETS):
                continue  # another bucket layout: not ours to add
            mine = aggregate.releases.setdefault((stats.service, release), ReleaseStats())
            for name, counts, total, histogram in (("duration", duration, duration_sum, mine.duration),
                                                   ("queue_wait", queue_wait, queue_sum, mine.queue_wait)):
                before = seen.histograms.get((release, name))
                if before is None or sum(counts) < before.count:
                    before = Histogram()
                for i, (now, then) in enumerate(zip(counts, before.counts)):
                    histogram.counts[i] += now - then
                histogram.count += sum(counts) - before.count
                histogram.total += total - before.total
                seen.histograms[(release, name)] = Histogram(list(counts), total, sum(counts))
        for reason, count in stats.rejected:
            delta = _delta(count, seen.rejected.get(reason, 0))
            seen.rejected[reason] = count
            if delta:
                key = (stats.service, reason)
                aggregate.rejected[key] = aggregate.rejected.get(key, 0) + delta


class _Counted:
    """One service's cumulative counts from the gateway, as last added to RequestStats."""

    def __init__(self) -> None:
        self.statuses: dict[tuple[str, int], int] = {}
        self.histograms: dict[tuple[str, str], Histogram] = {}
        self.rejected: dict[str, int] = {}


def _delta(now: int, then: int) -> int:
    return now - then if now >= then else now  # lower: a new gateway counting from zero
