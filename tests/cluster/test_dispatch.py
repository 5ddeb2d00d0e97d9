"""Cross-node dispatch: a request that would wait on a busy node runs on a peer's free slot."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from anycore.node.native import find_binary
from tests.cluster.conftest import wait_peers
from tests.conftest import make_service, wait_for

# (origin, runner) data planes: spill-over is the node's (cluster/agent.py) under either
# gateway, and a native origin may spill to a Python runner and back.
PAIRS = [("python", "python"), ("native", "native"), ("native", "python"), ("python", "native")]


def pair(request: pytest.FixtureRequest) -> tuple[str, str]:
    if "native" in request.param and find_binary() is None:
        pytest.skip("anycore-gateway is not built (see README, Native gateway)")
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(params=PAIRS, ids=["-".join(p) for p in PAIRS])
def gateways(request: pytest.FixtureRequest) -> tuple[str, str]:
    return pair(request)


@pytest.fixture(params=PAIRS[:2], ids=["-".join(p) for p in PAIRS[:2]])
def same_gateways(request: pytest.FixtureRequest) -> tuple[str, str]:
    return pair(request)

SLOW = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    params = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
    await asyncio.sleep(float(params.get("sleep", 0)))
    size = int(params.get("size", 0))
    out = body if scope["method"] == "POST" else (b"x" * size if size else b"ok")
    seen = dict(scope["headers"]).get(b"x-request-id", b"")  # the id the app got, wherever it ran
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/octet-stream"), (b"x-seen-id", seen)]})
    for i in range(0, len(out), 65536):
        await send({"type": "http.response.body", "body": out[i:i + 65536], "more_body": True})
    await send({"type": "http.response.body", "body": b""})
"""


def test_spill_over_two_slow_requests_to_a_full_node_run_on_both_nodes(cluster, tmp_path, gateways):
    app = make_service(tmp_path, "slow", SLOW, "workers = 1\nslots = 1\n")
    a = cluster.join(app, args=("--gateway", gateways[0]))
    b = cluster.join(app, args=("--gateway", gateways[1]))
    wait_peers([a, b], "slow")
    ids = sorted([a.record["node_id"], b.record["node_id"]])
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(httpx.get, a.url + "/?sleep=1.5", timeout=30, headers={"x-request-id": f"spill-{i}"})
                   for i in range(2)]
        responses = [f.result() for f in futures]
    assert [r.status_code for r in responses] == [200, 200]
    assert sorted(r.headers["anycore-node"] for r in responses) == ids
    # The request id travels with the spilled request: the app on the peer got it, the client got it back.
    assert sorted((r.headers["x-request-id"], r.headers["x-seen-id"]) for r in responses) == [
        ("spill-0", "spill-0"), ("spill-1", "spill-1")]
    assert all(r.headers["anycore-release"] == a.service("slow")["release"] for r in responses)
    assert a.ps()["cluster"]["spilled"] == 1 and b.ps()["cluster"]["accepted"] == 1
    # /metrics: the spill counted per peer at the origin, and both answers counted once, there
    # (the runner's copy of a peer's request is not a request of its own gateway).
    # A native gateway's counts reach the node with its next Stats (every 100 ms or so): wait for them.
    release = a.service("slow")["release"]
    answered = ("anycore_requests_total", (("node", a.record["node_id"]), ("release", release), ("service", "slow"),
                                           ("status", "200")))
    wait_for(lambda: metrics(a).get(answered, 0) >= 2, timeout=5)
    on_a, on_b = metrics(a), metrics(b)
    assert on_a[("anycore_spilled_total", (("node", a.record["node_id"]), ("peer", b.record["node_id"]),
                                          ("service", "slow")))] == 1
    assert on_a[answered] == 2
    assert not [k for k in on_b if k[0] == "anycore_requests_total"]


def metrics(node) -> dict:
    """The node's /metrics (its admin listener is on loopback: no token), parsed."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(node.record["admin"] + "/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_spilled_requests_stream_big_bodies_both_ways_and_local_slots_win(cluster, tmp_path, same_gateways):
    app = make_service(tmp_path, "slow", SLOW, "workers = 1\nslots = 1\n")
    a = cluster.join(app, args=("--gateway", same_gateways[0]))
    b = cluster.join(app, args=("--gateway", same_gateways[1]))
    wait_peers([a, b], "slow")
    b_id = b.record["node_id"]
    # Locality: with a free slot here, requests never leave the node.
    for _ in range(5):
        assert httpx.get(a.url + "/").headers["anycore-node"] == a.record["node_id"]
    upload = bytes(range(256)) * 2048 * 3  # 1.5 MiB: more than one credit window, sent in chunks
    with ThreadPoolExecutor(3) as pool:
        busy = pool.submit(httpx.get, a.url + "/?sleep=3", timeout=30)
        wait_for(lambda: a.service("slow")["inflight"] == 1, 10, what="a's only slot to be taken")
        posted = pool.submit(httpx.post, a.url + "/", content=upload, timeout=30)
        posted_result = posted.result()
        big = pool.submit(httpx.get, a.url + "/?size=3000000", timeout=30)
        big_result = big.result()
        assert busy.result().headers["anycore-node"] == a.record["node_id"]
    assert posted_result.status_code == 200 and posted_result.headers["anycore-node"] == b_id
    assert hashlib.sha256(posted_result.content).digest() == hashlib.sha256(upload).digest()
    assert big_result.status_code == 200 and big_result.headers["anycore-node"] == b_id
    assert big_result.content == b"x" * 3000000
