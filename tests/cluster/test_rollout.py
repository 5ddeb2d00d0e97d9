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
                if VERSION == "v2" and os.environ.get("ANYCORE_DATA_DIR", "").endswith({broken!r} + "/data/shop"):
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


def test_a_node_that_missed_a_deploy_follows_the_live_release_in_kv(cluster, nats_server, tmp_path):
    """What a node cut off during a cluster deploy sees when it is back: KV names a live
    release it does not run. Written here straight into KV, as a deploy it did not take part in."""
    import asyncio

    import nats

    from anycore.config import load_service
    from anycore.release.bundle import pack, release_id
    from anycore.release.store import CodeStore, ReleaseRecord

    a = cluster.join(versioned(tmp_path, "v1"))
    v2 = load_service(str(versioned(tmp_path, "v2")))
    record = ReleaseRecord(id=release_id(v2.directory, v2.config), service="shop", config=v2.config, source="elsewhere")

    async def publish() -> None:
        nc = await nats.connect(nats_server.url, token=nats_server.token)
        try:
            store = await CodeStore(nc.jetstream(), None).open()
            await store.put_bundle(record.id, pack(v2.directory))
            await store.put_release(record)
            await store.set_live("shop", record.id)
        finally:
            await nc.close()

    asyncio.run(publish())
    wait_for(lambda: httpx.get(a.url + "/").text == "v2", 30, interval=0.2, what="a to follow the live release")
    assert a.service("shop")["release"] == record.id and "cluster.follow" in a.output


def test_stop_and_start_on_one_node_are_followed_by_the_others(cluster, tmp_path):
    app = versioned(tmp_path, "v1")
    a, b = cluster.join(app), cluster.join(app)
    wait_peers([a, b], "shop")
    stopped = a.cli("stop", "shop")
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: httpx.get(b.url + "/").status_code == 503, 30, interval=0.2, what="b to stop shop too")
    assert b.service("shop")["state"] == "stopped"
    started = a.cli("start", "shop")
    assert started.returncode == 0, started.stderr
    wait_for(lambda: httpx.get(b.url + "/").status_code == 200, 30, interval=0.2, what="b to start shop again")
    assert "command=stop" in b.output and "command=start" in b.output
