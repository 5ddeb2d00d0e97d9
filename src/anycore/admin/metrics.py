"""L1 — ``/metrics``: the node in the Prometheus text format, built at scrape time.

Nothing here runs per request. The request path pays for one ``RequestStats.record`` (and
a ``reject`` per refusal) and the control plane keeps its own plain counters (restarts by
cause in the release supervisor, deploy outcomes in the deployer, spill-over per peer in
the cluster agent...). At each scrape, ``NodeCollector.collect`` reads those cumulative
counts — ``view.stats`` and ``view.snapshot()`` (what ``anycore ps --json`` shows) — and
turns them into metric families: per-bucket histogram counts become Prometheus'
cumulative ``le`` buckets, gauges are read off the node's state as it is now. So a scrape
costs O(services × releases × buckets), however many requests were served, and a node
nobody scrapes pays nothing for its metrics.

Names follow DESIGN.md's vocabulary, prefixed ``anycore_``; every series carries ``node``
and, where it is about one, ``service`` and ``release``. A counter never goes down while
the node runs; a release's request counts stay after it retired (``RequestStats`` keeps
them), so ``rate()`` across a deploy sees no reset. ``METRICS`` lists every family with
its labels and help: the README's table is made from the same list.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from anycore.admin.routes import AdminRequest, AdminResponse, Routes
from anycore.ports import AdminView
from anycore.stats import BUCKETS, Histogram

# name -> (type, labels besides ``node``, help)
METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "anycore_requests_total": ("counter", ("service", "release", "status"),
                               "HTTP answers finished, by status; release \"\" for answers the node made before choosing one"),
    "anycore_request_duration_seconds": ("histogram", ("service", "release"), "request arrival to last response byte"),
    "anycore_queue_wait_seconds": ("histogram", ("service", "release"),
                                   "request arrival to its placement on a slot (local or a peer's)"),
    "anycore_rejected_total": ("counter", ("service", "reason"),
                               "requests refused without running: queue_full, deadline, stopped, quarantined, too_large, no_route, starting"),
    "anycore_queue_depth": ("gauge", ("service",), "requests waiting for a slot now"),
    "anycore_inflight": ("gauge", ("service", "release"), "requests running on this node's workers now"),
    "anycore_workers": ("gauge", ("service", "release", "state"), "workers by lifecycle state"),
    "anycore_worker_restarts_total": ("counter", ("service", "release", "cause"),
                                      "workers restarted after an unexpected exit: signal, exit, oom, hung, unknown"),
    "anycore_cold_starts_total": ("counter", ("service", "release"),
                                  "scale-ups from zero workers because a request was waiting"),
    "anycore_deploys_total": ("counter", ("service", "release", "outcome"), "deploys ended: done, failed, aborted, noop"),
    "anycore_deploy_phase_seconds": ("histogram", ("service", "release", "phase"), "time spent in each deploy phase"),
    "anycore_websockets_open": ("gauge", ("service",), "WebSockets (and Sessions) open now"),
    "anycore_sessions_moved_total": ("counter", ("service",), "Sessions moved to another worker with their state"),
    "anycore_sessions_recovered_total": ("counter", ("service",), "Sessions recovered after their worker died"),
    "anycore_spilled_total": ("counter", ("service", "peer"), "requests sent to a peer node's free slot"),
    "anycore_gateway_connections": ("gauge", (), "client connections open on the gateway now"),
    "anycore_jobs_total": ("counter", ("service", "outcome"),
                           "durable jobs on this node: enqueued (stored by JetStream), started, succeeded, retried, dead"),
    "anycore_jobs_running": ("gauge", ("service",), "durable jobs running on this node's workers now"),
}
JOB_OUTCOMES = ("enqueued", "started", "succeeded", "retried", "dead")


def _family(name: str) -> Metric:
    kind, labels, help_text = METRICS[name]
    base = name.removesuffix("_total") if kind == "counter" else name
    factory = {"counter": CounterMetricFamily, "gauge": GaugeMetricFamily, "histogram": HistogramMetricFamily}[kind]
    return factory(base, help_text, labels=[*labels, "node"])  # type: ignore[no-any-return]


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def cumulative(histogram: Histogram) -> list[tuple[str, float]]:
    """Per-bucket counts -> Prometheus buckets: each ``le`` counts every observation at or below it."""
    out, seen = [], 0
    for bound, n in zip(BUCKETS, histogram.counts):
        seen += n
        out.append((_le(bound), float(seen)))
    return out


class NodeCollector(Collector):
    """A custom collector: every family is built from the view at each ``collect``."""

    def __init__(self, view: AdminView) -> None:
        self.view = view

    def collect(self) -> Iterable[Metric]:
        node = self.view.node_id
        snapshot = self.view.snapshot()
        families = {name: _family(name) for name in METRICS}
        self._requests(families, node)
        for service in snapshot.get("services", []):
            self._service(families, node, service)
        self._deploys(families, node, snapshot.get("deploys") or {})
        cluster = snapshot.get("cluster") or {}
        for entry in cluster.get("spilled_to", []):
            families["anycore_spilled_total"].add_metric([entry["service"], entry["peer"], node], entry["count"])
        families["anycore_gateway_connections"].add_metric([node], snapshot.get("connections", 0))
        for service, counts in sorted((snapshot.get("jobs") or {}).items()):
            for outcome in JOB_OUTCOMES:
                families["anycore_jobs_total"].add_metric([service, outcome, node], counts.get(outcome, 0))
            families["anycore_jobs_running"].add_metric([service, node], counts.get("running", 0))
        return families.values()

    def _requests(self, families: dict[str, Metric], node: str) -> None:
        stats = self.view.stats
        for (service, release), counts in list(stats.releases.items()):
            for status, n in sorted(counts.statuses.items()):
                families["anycore_requests_total"].add_metric([service, release, str(status), node], n)
            for name, histogram in (("anycore_request_duration_seconds", counts.duration),
                                    ("anycore_queue_wait_seconds", counts.queue_wait)):
                families[name].add_metric([service, release, node], cumulative(histogram), histogram.total)  # type: ignore[attr-defined]
        for (service, reason), n in sorted(stats.rejected.items()):
            families["anycore_rejected_total"].add_metric([service, reason, node], n)

    def _service(self, families: dict[str, Metric], node: str, service: dict[str, Any]) -> None:
        name = service["name"]
        families["anycore_queue_depth"].add_metric([name, node], service.get("queued", 0))
        families["anycore_websockets_open"].add_metric([name, node], service.get("websockets", 0))
        families["anycore_sessions_moved_total"].add_metric([name, node], service.get("sessions_moved", 0))
        families["anycore_sessions_recovered_total"].add_metric([name, node], service.get("sessions_recovered", 0))
        for release in _releases(service):
            by_state: dict[str, int] = {}
            inflight = 0
            for worker in release.get("workers", []):
                by_state[worker["state"]] = by_state.get(worker["state"], 0) + 1
                inflight += worker.get("inflight", 0)
            for state, n in sorted(by_state.items()):
                families["anycore_workers"].add_metric([name, release["release"], state, node], n)
            families["anycore_inflight"].add_metric([name, release["release"], node], inflight)
        for entry in service.get("worker_restarts", []):
            families["anycore_worker_restarts_total"].add_metric([name, entry["release"], entry["cause"], node], entry["count"])
        for entry in service.get("cold_starts", []):
            families["anycore_cold_starts_total"].add_metric([name, entry["release"], node], entry["count"])

    def _deploys(self, families: dict[str, Metric], node: str, deploys: dict[str, Any]) -> None:
        for entry in deploys.get("outcomes", []):
            families["anycore_deploys_total"].add_metric([entry["service"], entry["release"], entry["outcome"], node],
                                                         entry["count"])
        for entry in deploys.get("phases", []):
            histogram = Histogram(list(entry["buckets"]), entry["sum"], entry["count"])
            families["anycore_deploy_phase_seconds"].add_metric(  # type: ignore[attr-defined]
                [entry["service"], entry["release"], entry["phase"], node], cumulative(histogram), histogram.total)


def _releases(service: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if service.get("live"):
        yield service["live"]
    yield from service.get("draining", [])


def exposition(view: AdminView) -> bytes:
    """The text a scrape gets (a fresh registry per call: nothing is kept between scrapes)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(view))
    return generate_latest(registry)


def routes(view: AdminView) -> Routes:
    async def metrics(request: AdminRequest) -> AdminResponse:
        return AdminResponse(200, CONTENT_TYPE_LATEST, exposition(view))

    return {"/metrics": metrics}
