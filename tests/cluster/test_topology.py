"""A 3-server NATS cluster (routes) as the backbone: the same features as over one server,
and the loss of one NATS server is survived."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.cluster.conftest import ClusterNodes, cluster_view, wait_peers
from tests.conftest import make_service, wait_for

APP = """
import asyncio

VERSION = {version!r}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    params = dict(p.split("=") for p in scope["query_string"].decode().split("&") if p)
    await asyncio.sleep(float(params.get("sleep", 0)))
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


@pytest.fixture
def routed(tmp_path: Path, nats_cluster):
    factory = ClusterNodes(tmp_path, nats_cluster[0].url, nats_cluster[0].token)
    yield factory
    factory.stop_all()


def test_three_nats_servers_with_routes_carry_the_cluster(routed, nats_cluster, tmp_path):
    v1 = make_service(tmp_path / "v1", "shop", APP.format(version="v1"), "workers = 1\nslots = 1\n")
    nodes = [routed.join(v1, url=server.url) for server in nats_cluster]  # one node per NATS server
    a, b, c = nodes
    wait_peers(nodes, "shop")
    assert set(cluster_view(c)) == {n.record["node_id"] for n in nodes}
    # Spill-over across routes.
    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: httpx.get(a.url + "/?sleep=1.5", timeout=30), range(2)))
    served = {r.headers["anycore-node"] for r in responses}
    assert len(served) == 2 and a.record["node_id"] in served
    # c's NATS server goes away: c's client fails over to another server of the cluster (the
    # servers advertise each other), c stays a member, and a deploy reaches all three nodes
    # (the buckets have 3 replicas: 2 of 3 servers keep them writable).
    c.env["ANYCORE_NATS"] = nats_cluster[0].url  # the CLI reaches c through another server from now on
    nats_cluster[2].stop()
    wait_for(lambda: "node.nats_reconnected" in c.output, 30, interval=0.2, what="c to fail over to another NATS server")
    for _ in range(20):
        assert httpx.get(c.url + "/").text == "v1"
    wait_peers(nodes, "shop", timeout=30)
    v2 = make_service(tmp_path / "v2", "shop", APP.format(version="v2"), "workers = 1\nslots = 1\n")
    deploy = a.cli("deploy", str(v2))
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "3 nodes shifted within" in deploy.stdout
    for node in nodes:
        assert httpx.get(node.url + "/").text == "v2"
