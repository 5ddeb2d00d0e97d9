"""The /metrics collector against a fake AdminView: every family is built from the view's
cumulative counts at scrape time, per-bucket counts become cumulative ``le`` buckets, and
the text parses with prometheus_client's own parser."""

from __future__ import annotations

import io
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from anycore.admin.metrics import METRICS, cumulative, exposition
from anycore.log import NodeLog
from anycore.stats import BUCKETS, Histogram, RequestStats


class FakeView:
    """ports.AdminView, from plain data."""

    def __init__(self, stats: RequestStats, snapshot: dict[str, Any]) -> None:
        self.node_id = "n1"
        self.log = NodeLog(io.StringIO())
        self.stats = stats
        self._snapshot = snapshot

    def snapshot(self) -> dict[str, Any]:
        return self._snapshot


def parse(text: bytes) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(text.decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset({"node": "n1", **labels}.items()))]


def worker(state: str, inflight: int = 0) -> dict[str, Any]:
    return {"id": 1, "state": state, "inflight": inflight}


SNAPSHOT: dict[str, Any] = {
    "node": "n1", "connections": 7,
    "services": [{
        "name": "shop", "queued": 3, "inflight": 4, "websockets": 2, "sessions_moved": 5, "sessions_recovered": 1,
        "live": {"release": "shop@b", "workers": [worker("ready", 2), worker("ready", 1), worker("starting")]},
        "draining": [{"release": "shop@a", "workers": [worker("draining", 1)]}],
        "worker_restarts": [{"release": "shop@a", "cause": "signal", "count": 2}, {"release": "shop@b", "cause": "hung", "count": 1}],
        "cold_starts": [{"release": "shop@b", "count": 3}],
    }],
    "deploys": {
        "outcomes": [{"service": "shop", "release": "shop@b", "outcome": "done", "count": 1},
                     {"service": "shop", "release": "shop@c", "outcome": "failed", "count": 2}],
        "phases": [{"service": "shop", "release": "shop@b", "phase": "warm",
                    "buckets": Histogram().counts[:12] + [1] + [0] * 6, "sum": 0.75, "count": 1}],
    },
    "cluster": {"spilled_to": [{"service": "shop", "peer": "n2", "count": 9}]},
    "jobs": {"thumbs": {"enqueued": 10, "started": 8, "succeeded": 5, "retried": 2, "dead": 1, "running": 1}},
}


def test_every_family_from_a_fake_view_with_the_right_values_and_labels() -> None:
    stats = RequestStats()
    for _ in range(3):
        stats.record("shop", "shop@b", 200, 0.003, 0.0002)
    stats.record("shop", "shop@b", 504, 30.5, 30.5)
    stats.record("shop", "", 503, 0.00005, None)  # refused before a release was chosen: no queue wait
    stats.reject("shop", "queue_full")
    stats.reject("shop", "queue_full")
    stats.reject("", "no_route")
    samples = parse(exposition(FakeView(stats, SNAPSHOT)))

    assert value(samples, "anycore_requests_total", service="shop", release="shop@b", status="200") == 3
    assert value(samples, "anycore_requests_total", service="shop", release="shop@b", status="504") == 1
    assert value(samples, "anycore_requests_total", service="shop", release="", status="503") == 1
    b = {"service": "shop", "release": "shop@b"}
    assert value(samples, "anycore_request_duration_seconds_count", **b) == 4
    assert abs(value(samples, "anycore_request_duration_seconds_sum", **b) - (3 * 0.003 + 30.5)) < 1e-9
    assert value(samples, "anycore_request_duration_seconds_bucket", le="0.0025", **b) == 0
    assert value(samples, "anycore_request_duration_seconds_bucket", le="0.005", **b) == 3  # cumulative from here on
    assert value(samples, "anycore_request_duration_seconds_bucket", le="30.0", **b) == 3
    assert value(samples, "anycore_request_duration_seconds_bucket", le="60.0", **b) == 4
    assert value(samples, "anycore_request_duration_seconds_bucket", le="+Inf", **b) == 4
    assert value(samples, "anycore_queue_wait_seconds_count", **b) == 4
    assert value(samples, "anycore_queue_wait_seconds_bucket", le="0.00025", **b) == 3
    assert value(samples, "anycore_queue_wait_seconds_count", service="shop", release="") == 0
    assert value(samples, "anycore_rejected_total", service="shop", reason="queue_full") == 2
    assert value(samples, "anycore_rejected_total", service="", reason="no_route") == 1

    assert value(samples, "anycore_queue_depth", service="shop") == 3
    assert value(samples, "anycore_inflight", service="shop", release="shop@b") == 3
    assert value(samples, "anycore_inflight", service="shop", release="shop@a") == 1
    assert value(samples, "anycore_workers", service="shop", release="shop@b", state="ready") == 2
    assert value(samples, "anycore_workers", service="shop", release="shop@b", state="starting") == 1
    assert value(samples, "anycore_workers", service="shop", release="shop@a", state="draining") == 1
    assert value(samples, "anycore_worker_restarts_total", service="shop", release="shop@a", cause="signal") == 2
    assert value(samples, "anycore_worker_restarts_total", service="shop", release="shop@b", cause="hung") == 1
    assert value(samples, "anycore_cold_starts_total", service="shop", release="shop@b") == 3
    assert value(samples, "anycore_deploys_total", service="shop", release="shop@b", outcome="done") == 1
    assert value(samples, "anycore_deploys_total", service="shop", release="shop@c", outcome="failed") == 2
    w = {"service": "shop", "release": "shop@b", "phase": "warm"}
    assert value(samples, "anycore_deploy_phase_seconds_bucket", le="0.5", **w) == 0
    assert value(samples, "anycore_deploy_phase_seconds_bucket", le="1.0", **w) == 1
    assert value(samples, "anycore_deploy_phase_seconds_sum", **w) == 0.75
    assert value(samples, "anycore_websockets_open", service="shop") == 2
    assert value(samples, "anycore_sessions_moved_total", service="shop") == 5
    assert value(samples, "anycore_sessions_recovered_total", service="shop") == 1
    assert value(samples, "anycore_spilled_total", service="shop", peer="n2") == 9
    assert value(samples, "anycore_gateway_connections") == 7
    for outcome, n in (("enqueued", 10), ("started", 8), ("succeeded", 5), ("retried", 2), ("dead", 1)):
        assert value(samples, "anycore_jobs_total", service="thumbs", outcome=outcome) == n
    assert value(samples, "anycore_jobs_running", service="thumbs") == 1


def test_every_listed_family_is_exposed_with_its_type_and_help() -> None:
    families = {f.name: f for f in text_string_to_metric_families(exposition(FakeView(RequestStats(), SNAPSHOT)).decode())}
    for name, (kind, _, help_text) in METRICS.items():
        base = name.removesuffix("_total") if kind == "counter" else name
        assert families[base].type == kind and families[base].documentation == help_text


def test_a_node_with_nothing_yet_still_answers_and_counts_do_not_go_down_between_scrapes() -> None:
    stats = RequestStats()
    view = FakeView(stats, {"node": "n1", "connections": 0, "services": [], "deploys": None, "cluster": None})
    assert value(parse(exposition(view)), "anycore_gateway_connections") == 0
    stats.record("shop", "shop@a", 200, 0.01, 0.0)
    first = value(parse(exposition(view)), "anycore_requests_total", service="shop", release="shop@a", status="200")
    stats.record("shop", "shop@a", 200, 0.01, 0.0)
    assert value(parse(exposition(view)), "anycore_requests_total", service="shop", release="shop@a", status="200") == first + 1


def test_cumulative_buckets_end_with_inf_and_the_count() -> None:
    histogram = Histogram()
    for seconds in (0.00001, 0.002, 0.002, 100.0):
        histogram.observe(seconds)
    buckets = cumulative(histogram)
    assert len(buckets) == len(BUCKETS) and buckets[-1] == ("+Inf", 4.0)
    assert [n for _, n in buckets] == sorted(n for _, n in buckets)
    assert dict(buckets)["0.0001"] == 1 and dict(buckets)["0.0025"] == 3 and dict(buckets)["60.0"] == 3


def test_record_counts_exactly_as_histogram_observe() -> None:
    """``RequestStats.record`` inlines ``Histogram.observe`` (it runs per request): same counts."""
    stats, duration, queued = RequestStats(), Histogram(), Histogram()
    values = [0.0, 0.0001, 0.00011, 0.003, 0.5, 59.9, 60.0, 61.0, 1e9]
    for v in values:
        stats.record("s", "r", 200, v, v / 2)
        duration.observe(v)
        queued.observe(v / 2)
    stats.record("s", "r", 503, 0.001, None)
    duration.observe(0.001)
    got = stats.releases[("s", "r")]
    assert got.duration == duration and got.queue_wait == queued and got.statuses == {200: len(values), 503: 1}
