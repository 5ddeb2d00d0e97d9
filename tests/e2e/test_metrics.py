"""/metrics on a real node (issue 14, "Acceptance"): after a known mix of requests — 200s,
a 503 from a full queue, 504s (one running past its deadline, one expired in the queue),
a 413, a worker killed with ``kill -9``, a deploy — every counter and histogram moved by
exactly the right amount, per release, as parsed by prometheus_client's own parser; and a
second service scaled to zero meanwhile counts one cold start on its next request. The
node's admin listener is bound to 0.0.0.0 here, so every scrape needs the node's token:
without it, 401. One node for all of it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import HELLO, make_service, wait_for
from tests.e2e.planes import gateway  # noqa: F401 (a fixture)

APP = """
import os, time

VERSION = {version!r}
RELEASE = {release!r}  # /block holds its worker's loop until this file exists (at most 20 s)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/block":
        end = time.monotonic() + 20
        while not os.path.exists(RELEASE) and time.monotonic() < end:
            time.sleep(0.01)  # blocks the worker's loop: its one slot stays taken past the deadline
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"x-pid", str(os.getpid()).encode())]}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""
CONFIG = "workers = 1\nslots = 1\nmax_queue = 1\ntimeout = 3.0\nmax_body = 100\n"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class Scraper:
    def __init__(self, port: int, token: str, node: str) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.auth = {"authorization": f"Bearer {token}"}
        self.node = node

    def samples(self) -> Samples:
        reply = httpx.get(self.url, headers=self.auth, timeout=10)
        assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain; version=")
        out: Samples = {}
        for family in text_string_to_metric_families(reply.text):
            for sample in family.samples:
                labels = dict(sample.labels)
                assert labels.pop("node") == self.node
                out[(sample.name, frozenset(labels.items()))] = sample.value
        return out


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def answers(samples: Samples, **labels: str) -> float:
    """Every ``anycore_requests_total`` sample with these labels (and any status), summed."""
    return sum(v for (name, have), v in samples.items()
               if name == "anycore_requests_total" and frozenset(labels.items()) <= have)


def scrape_after(scrape: Scraper, base: Samples, total: int, **labels: str) -> Samples:
    """A scrape once ``total`` more answers with ``labels`` are counted. The Python gateway
    counts as it answers; the native one reports its counts to the node in Stats (every
    100 ms while something changed), each message a consistent snapshot of one service:
    once the answers are in, its rejections and histograms are too."""
    def counted() -> Samples | None:
        samples = scrape.samples()
        return samples if answers(samples, **labels) - answers(base, **labels) >= total else None
    return wait_for(counted, what=f"{total} more answers counted")


def test_metrics_after_a_known_mix_per_release_and_the_token_off_loopback(nodes, tmp_path: Path, gateway) -> None:
    release = tmp_path / "release-block"
    app = make_service(tmp_path, "shop", APP.format(version="one", release=str(release)), CONFIG)
    # A second service that scales to zero while the rest runs: its first request later is a cold start.
    lazy = make_service(tmp_path, "lazy", HELLO, 'routes = ["/lazy"]\nmin_workers = 0\nmax_workers = 1\n'
                        "keep_warm = 0.5\nscale_down_delay = 0.5\n")
    node = nodes.start(app, lazy, args=("--admin", "0.0.0.0:0", *gateway["args"]), env=gateway["env"])
    port = int(node.record["admin"].rsplit(":", 1)[1])
    assert node.record["admin"] == f"http://0.0.0.0:{port}"
    assert f"admin listener on http://0.0.0.0:{port}" in node.output and "Authorization: Bearer" in node.output
    token = (node.home / "token").read_text().strip()

    # Off loopback: no token, a wrong token -> 401 with the reason; the token -> 200.
    refused = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert refused.status_code == 401 and "Authorization: Bearer" in refused.text
    assert httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"authorization": "Bearer nope"}).status_code == 401
    scrape = Scraper(port, token, node.record["node_id"])
    one = node.service("shop")["release"]
    before = scrape.samples()
    assert get(before, "anycore_deploys_total", service="shop", release=one, outcome="done") == 1
    assert get(before, "anycore_workers", service="shop", release=one, state="ready") == 1

    # 200s.
    with httpx.Client(base_url=node.url) as client:
        for _ in range(5):
            assert client.get("/").text == "one"
        wait_for(lambda: get(scrape.samples(), "anycore_gateway_connections") >= 1,  # this client's keep-alive connection
                 what="the open connection counted")
        assert client.post("/", content=b"x" * 101).status_code == 413  # past max_body: refused, release ""

    # One slot, a queue of one: /block holds the slot past its deadline (504 while running),
    # the next request waits in the queue until its deadline (504, never ran), the one after
    # finds the queue full (503 at once).
    with ThreadPoolExecutor(2) as pool:
        blocked = pool.submit(httpx.get, node.url + "/block", timeout=10)
        wait_for(lambda: node.service("shop")["inflight"] == 1, what="/block on the slot")
        waiting = pool.submit(httpx.get, node.url + "/", timeout=10)
        wait_for(lambda: node.service("shop")["queued"] == 1, what="a request in the queue")
        full = httpx.get(node.url + "/", timeout=10)
        assert full.status_code == 503
        assert waiting.result().status_code == 504 and blocked.result().status_code == 504
        release.touch()  # the blocked handler ends; its late answer is not written
    wait_for(lambda: node.service("shop")["inflight"] == 0, what="the blocked worker to finish")

    # kill -9 of the worker: one restart, cause "signal"; its replacement serves.
    victim = node.ready_workers("shop")[0]["pid"]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: get(scrape.samples(), "anycore_worker_restarts_total", service="shop", release=one, cause="signal") == 1,
             what="the restart counted with its cause")
    wait_for(lambda: [w for w in node.ready_workers("shop") if w["pid"] != victim], what="the replacement worker")

    mid = scrape_after(scrape, before, 9, service="shop")
    d = lambda name, **labels: get(mid, name, **labels) - get(before, name, **labels)  # noqa: E731
    r1 = {"service": "shop", "release": one}
    none = {"service": "shop", "release": ""}
    assert d("anycore_requests_total", status="200", **r1) == 5
    assert d("anycore_requests_total", status="504", **r1) == 1  # /block, answered by the sweep: it ran on `one`
    assert d("anycore_requests_total", status="504", **none) == 1  # expired in the queue: no release chose it
    assert d("anycore_requests_total", status="503", **none) == 1
    assert d("anycore_requests_total", status="413", **none) == 1
    assert d("anycore_request_duration_seconds_count", **r1) == 6
    assert d("anycore_request_duration_seconds_count", **none) == 3
    assert d("anycore_queue_wait_seconds_count", **r1) == 6 and d("anycore_queue_wait_seconds_count", **none) == 0
    assert d("anycore_request_duration_seconds_bucket", le="0.5", **r1) == 5  # the five 200s; /block took > 3 s
    assert d("anycore_request_duration_seconds_bucket", le="+Inf", **r1) == 6
    assert 3.0 <= d("anycore_request_duration_seconds_sum", **r1) < 10.0
    assert d("anycore_request_duration_seconds_bucket", le="0.5", **none) == 2  # 413, 503 at once; the queued 504 took 3 s
    assert d("anycore_rejected_total", service="shop", reason="queue_full") == 1
    assert d("anycore_rejected_total", service="shop", reason="deadline") == 1
    assert d("anycore_rejected_total", service="shop", reason="too_large") == 1
    assert get(mid, "anycore_queue_depth", service="shop") == 0 and get(mid, "anycore_inflight", **r1) == 0

    # A deploy: deploys_total and one observation per phase for the new release; requests per release.
    make_service(tmp_path, "shop", APP.format(version="two", release=str(release)), CONFIG)
    result = node.cli("deploy", str(app))
    assert result.returncode == 0, result.stderr
    two = node.service("shop")["release"]
    assert two != one
    with httpx.Client(base_url=node.url) as client:
        for _ in range(3):
            assert client.get("/").text == "two"
    deploy = next(d for d in node.ps()["deploys"]["phases"] if d["release"] == two and d["phase"] == "warm")
    r2 = {"service": "shop", "release": two}
    after = scrape_after(scrape, mid, 3, **r2)
    assert get(after, "anycore_deploys_total", outcome="done", **r2) == 1
    assert get(after, "anycore_deploys_total", outcome="done", **r1) == 1  # the first deploy's count stays
    phases = {dict(labels)["phase"] for name, labels in after if name == "anycore_deploy_phase_seconds_count"
              and dict(labels)["release"] == two}
    assert {"fetch", "import", "warm", "shift", "drain", "retire"} <= phases
    for phase in phases:
        assert get(after, "anycore_deploy_phase_seconds_count", phase=phase, **r2) == 1
    assert get(after, "anycore_deploy_phase_seconds_sum", phase="warm", **r2) == deploy["sum"] > 0
    assert get(after, "anycore_requests_total", status="200", **r2) == 3
    assert get(after, "anycore_request_duration_seconds_count", **r2) == 3
    for name in ("anycore_requests_total", "anycore_request_duration_seconds_count"):  # `one` kept its counts
        for status in ("200", "504"):
            labels = {"status": status} if name == "anycore_requests_total" else {}
            assert get(after, name, **labels, **r1) == get(mid, name, **labels, **r1)
    assert get(after, "anycore_worker_restarts_total", cause="signal", **r1) == 1  # outlives its retired release
    wait_for(lambda: get(scrape.samples(), "anycore_workers", state="ready", **r2) == 1, what="the new release's worker")
    assert not [k for k in scrape.samples() if k[0] == "anycore_workers" and dict(k[1])["release"] == one]

    # Cold start: `lazy` went to zero workers; a request forks one, counted once.
    lazy_release = node.service("lazy")["release"]
    wait_for(lambda: not node.workers("lazy"), timeout=30, what="lazy to scale to zero")
    assert get(scrape.samples(), "anycore_cold_starts_total", service="lazy", release=lazy_release) == 0
    assert httpx.get(node.url + "/lazy", timeout=10).text == "hello"
    assert get(scrape.samples(), "anycore_cold_starts_total", service="lazy", release=lazy_release) == 1
    assert httpx.get(node.url + "/lazy", timeout=10).text == "hello"  # its worker is warm now: not another
    assert get(scrape.samples(), "anycore_cold_starts_total", service="lazy", release=lazy_release) == 1
    assert get(scrape.samples(), "anycore_cold_starts_total", service="shop", release=one) == 0


def test_a_taken_admin_port_is_one_line_and_the_default_moves_aside(nodes, tmp_path: Path) -> None:
    app = make_service(tmp_path, "shop", HELLO, "workers = 1\n")
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    env = {**os.environ, "ANYCORE_HOME": str(tmp_path / "home"), "ANYCORE_USER": "root"}
    env.pop("ANYCORE_TOKEN", None)
    try:
        result = subprocess.run([sys.executable, "-m", "anycore.cli.main", "up", str(app), "--listen", "127.0.0.1:0",
                                 "--admin", f"127.0.0.1:{port}"], env=env, capture_output=True, text=True, timeout=60,
                                stdin=subprocess.DEVNULL)
    finally:
        holder.close()
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("ts=")]
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(lines) == 1 and f"127.0.0.1:{port}" in lines[0] and "--admin" in lines[0], result.stderr
    assert not (tmp_path / "home" / "node.json").exists()

    # The default port (not asked for) taken by another node: this one moves to a free port and says so.
    first = nodes.start(app)
    second = nodes.start(app)
    admins = {first.record["admin"], second.record["admin"]}
    assert len(admins) == 2 and all(a.startswith("http://127.0.0.1:") for a in admins)
    for node in (first, second):
        assert httpx.get(node.record["admin"] + "/metrics").status_code == 200  # loopback: no token
    assert "admin port 9790 is taken" in second.output  # by `first`, or by whatever else holds it
    off = nodes.start(app, args=("--admin", "off"))
    assert off.record["admin"] is None and json.loads((off.home / "node.json").read_text())["admin"] is None
