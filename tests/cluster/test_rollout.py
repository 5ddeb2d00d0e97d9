"""Deploy across the cluster: every node warms, then all shift together, or none does."""

from __future__ import annotations

import re

import httpx

from tests.cluster.conftest import Load, wait_peers
from tests.conftest import make_service, wait_for

VERSIONED = """
import os

VERSION = {version!r}

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if VERSION == "v2" and os.environ.get("ANYCORE_HOME", "").endswith({broken!r}):
                    await send({{"type": "lifespan.startup.failed", "message": "cannot warm on this node"}})
                    return
                await send({{"type": "lifespan.startup.complete"}})
            elif message["type"] == "lifespan.shutdown":
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


def versioned(root, version: str, broken: str = "no-such-home"):
    return make_service(root / version, "shop", VERSIONED.format(version=version, broken=broken), "workers = 1\n")


def test_cluster_deploy_under_load_shifts_every_node_with_zero_errors(cluster, tmp_path):
    v1 = versioned(tmp_path, "v1")
    nodes = [cluster.join(v1) for _ in range(3)]
    wait_peers(nodes, "shop")
    v2 = versioned(tmp_path, "v2")
    with Load([n.url for n in nodes], clients=3) as load:
        wait_for(lambda: load.mark()[0] >= 30, 20, interval=0.05, what="load on every gateway")
        deploy = nodes[0].cli("deploy", str(v2))
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        after = load.mark()[0]
        wait_for(lambda: load.mark()[0] >= after + 30, 20, interval=0.05, what="load after the deploy")
    assert load.errors == [], load.errors[:5]
    window = re.search(r"3 nodes shifted within ([\d.]+) ms", deploy.stdout)
    assert window, deploy.stdout
    release = nodes[0].service("shop")["release"]
    for node in nodes:
        assert node.service("shop")["release"] == release
        assert httpx.get(node.url + "/").text == "v2"
    print(f"cluster deploy: shift window {window.group(1)} ms\n{deploy.stdout}")


def test_a_node_that_cannot_warm_blocks_the_commit_and_the_old_release_stays_everywhere(cluster, tmp_path):
    v1 = versioned(tmp_path, "v1")
    nodes = [cluster.join(v1) for _ in range(3)]
    wait_peers(nodes, "shop")
    old = nodes[0].service("shop")["release"]
    v2 = versioned(tmp_path, "v2", broken="home2")  # the third node's home: its workers fail lifespan startup
    deploy = nodes[0].cli("deploy", str(v2))
    assert deploy.returncode == 1, deploy.stdout + deploy.stderr
    assert "aborted" in deploy.stderr and nodes[2].record["node_id"] in deploy.stderr
    assert f"{old} keeps serving as before" in deploy.stderr
    for node in nodes:
        assert node.service("shop")["release"] == old
        assert httpx.get(node.url + "/").text == "v1"
    # No node kept the new release's processes around.
    for node in nodes:
        wait_for(lambda node=node: all(w["release"] == old for w in node.workers("shop"))
                 and not node.service("shop")["draining"], 15, interval=0.2, what="no v2 worker left")


def test_a_node_that_joins_later_with_no_path_runs_the_release_deployed_since(cluster, tmp_path):
    a = cluster.join(versioned(tmp_path, "v1"))
    deploy = a.cli("deploy", str(versioned(tmp_path, "v2")))
    assert deploy.returncode == 0, deploy.stderr
    b = cluster.join(services=1)
    assert httpx.get(b.url + "/").text == "v2"
    assert b.service("shop")["release"] == a.service("shop")["release"]
