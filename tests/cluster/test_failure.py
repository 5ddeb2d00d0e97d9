"""Failure: a node killed with -9, and the NATS server restarted, under load."""

from __future__ import annotations

import os
import signal
import time

import httpx

from tests.cluster.conftest import Load, cluster_view, wait_peers
from tests.cluster.test_dispatch import SLOW
from tests.conftest import make_service, wait_for


def test_node_loss_under_load_moves_its_share_to_the_others_without_errors(cluster, tmp_path):
    app = make_service(tmp_path, "slow", SLOW, "workers = 1\nslots = 1\n")
    a, b, c = cluster.join(app), cluster.join(app), cluster.join(app)
    wait_peers([a, b, c], "slow")
    c_id = c.record["node_id"]
    # Three clients per gateway on a and b, each slot busy 0.2 s: a and b are full, c takes the spill.
    with Load([a.url, b.url], path="/?sleep=0.2", clients=6) as load:
        wait_for(lambda: load.by_node.get(c_id, 0) >= 5, 30, interval=0.1, what="c to take a share of the load")
        os.kill(c.proc.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: c_id not in a.ps()["cluster"]["peers"] and c_id not in b.ps()["cluster"]["peers"], 15,
                 interval=0.1, what="a and b to take c out")
        detected = time.monotonic() - killed_at
        on_c = load.by_node.get(c_id, 0)
        ok_before, _ = load.mark()
        wait_for(lambda: load.mark()[0] >= ok_before + 20, 30, interval=0.1, what="20 more requests after c was lost")
    assert detected < 10, f"c was taken out {detected:.1f}s after kill -9"
    assert load.errors == [], load.errors[:5]  # in-flight GETs on c were retried on a or b
    assert load.by_node.get(c_id, 0) == on_c  # nothing ran on c after it was taken out
    assert load.by_node.get(a.record["node_id"], 0) > 0 and load.by_node.get(b.record["node_id"], 0) > 0
    wait_for(lambda: c_id not in cluster_view(a), 15, interval=0.2, what="c's heartbeat entry to expire")
    print(f"node loss: detected in {detected:.2f}s; served a/b/c = {load.by_node}")


def test_a_post_in_flight_on_a_lost_node_gets_502_with_json(cluster, tmp_path):
    app = make_service(tmp_path, "slow", SLOW, "workers = 1\nslots = 1\n")
    a, b = cluster.join(app), cluster.join(app)
    wait_peers([a, b], "slow")
    with httpx.Client(timeout=30) as client:
        import threading

        results: dict[str, httpx.Response] = {}
        busy = threading.Thread(target=lambda: results.update(busy=client.get(a.url + "/?sleep=3")))
        busy.start()
        wait_for(lambda: a.service("slow")["inflight"] == 1, 10, what="a's only slot to be taken")
        post = threading.Thread(target=lambda: results.update(post=httpx.post(a.url + "/?sleep=30", content=b"x", timeout=30)))
        post.start()
        wait_for(lambda: b.service("slow")["inflight"] == 1 and a.ps()["cluster"]["remote_inflight"] == 1, 10,
                 what="the POST to run on b for a")
        os.kill(b.proc.pid, signal.SIGKILL)
        post.join(30)
        busy.join(30)
    response = results["post"]
    assert response.status_code == 502
    assert response.json()["error"] == "node lost" and "may or may not have taken effect" in response.json()["detail"]
    assert results["busy"].status_code == 200


def test_nats_restart_under_load_local_requests_see_no_errors_and_the_cluster_recovers(cluster, nats_server, tmp_path):
    app = make_service(tmp_path, "slow", SLOW, "workers = 1\nslots = 1\n")
    a, b = cluster.join(app), cluster.join(app)
    wait_peers([a, b], "slow")
    with Load([a.url, b.url], path="/", clients=2) as load:
        wait_for(lambda: load.mark()[0] >= 20, 20, interval=0.05, what="load to flow")
        nats_server.stop()
        down_at = load.mark()[0]
        wait_for(lambda: "node.nats_disconnected" in a.output and "node.nats_disconnected" in b.output, 15,
                 interval=0.1, what="both nodes to see NATS gone")
        wait_for(lambda: load.mark()[0] >= down_at + 300, 60, interval=0.05, what="300 requests served without NATS")
        served_without_nats = load.mark()[0] - down_at
        nats_server.start()  # same port, same JetStream store_dir
        wait_for(lambda: "node.nats_reconnected" in a.output and "node.nats_reconnected" in b.output, 30,
                 interval=0.1, what="both nodes to reconnect")
        wait_peers([a, b], "slow", timeout=30)
    assert load.errors == [], load.errors[:5]
    assert served_without_nats >= 300
    # Cluster features are back: KV (ps --cluster), control, and spill-over.
    assert set(cluster_view(a)) == {a.record["node_id"], b.record["node_id"]}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        responses = list(pool.map(lambda _: httpx.get(a.url + "/?sleep=1.5", timeout=30), range(2)))
    assert sorted(r.headers["anycore-node"] for r in responses) == sorted([a.record["node_id"], b.record["node_id"]])
