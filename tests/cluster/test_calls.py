"""Calls between services across nodes: a call placed like an outside request spills over
to a peer's free slot when the callee has none on the caller's node."""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.cluster.conftest import cluster_view, wait_peers
from tests.conftest import make_service, wait_for
from tests.e2e.calls_app import APP


def test_a_call_runs_on_the_peer_with_the_free_slot_streams_1_5_mib_and_is_retried_when_that_node_dies(cluster, tmp_path):
    a = make_service(tmp_path, "a", APP, 'name = "a"\nroutes = ["/a"]\nworkers = 1\nslots = 4\n')
    b = make_service(tmp_path, "b", APP, 'name = "b"\nroutes = ["/b"]\nworkers = 1\nslots = 1\n')
    one = cluster.join(a, b)
    two = cluster.join(a, b)
    wait_peers([one, two], "b")
    here, there = one.record["node_id"], two.record["node_id"]

    def relay(path: str, method: str = "GET", **kwargs: object) -> httpx.Response:
        query = urllib.parse.urlencode({"service": "b", "method": method, "path": path})
        return httpx.request(method, f"{one.url}/a/relay?{query}", timeout=30, **kwargs)  # type: ignore[arg-type]

    # With b's slot free here, the call stays on this node.
    assert relay("/echo").headers["x-call-node"] == here
    # b's only slot on this node is taken (by a client that hangs on): calls to b go to the other node.
    host, port = one.url.removeprefix("http://").split(":")
    busy = socket.create_connection((host, int(port)))
    try:
        busy.sendall(b"GET /b/slow?sleep=60 HTTP/1.1\r\nhost: x\r\n\r\n")
        wait_for(lambda: one.service("b")["inflight"] == 1, 15, what="b's slot on the first node to be taken")
        seen = relay("/echo")
        assert seen.headers["x-call-status"] == "200" and seen.headers["x-call-node"] == there
        assert seen.json()["headers"]["anycore-call-chain"] == "a"
        upload = os.urandom(3 * 512 * 1024)
        posted = relay("/upload", method="POST", content=upload)
        assert posted.headers["x-call-status"] == "200" and posted.headers["x-call-node"] == there
        assert hashlib.sha256(posted.content).digest() == hashlib.sha256(upload).digest()
        big = relay(f"/big?size={len(upload)}")
        assert big.headers["x-call-node"] == there and big.content == bytes(range(256)) * (len(upload) // 256)
        assert one.ps()["cluster"]["spilled"] >= 3
        # The node running a safe call is lost (kill -9): the call is retried here once a slot is free.
        marker = tmp_path / "once"
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(relay, "/once?" + urllib.parse.urlencode({"file": str(marker)}))
            wait_for(lambda: marker.exists(), 15, what="the call to start on the second node")
            two.proc.kill()
            wait_for(lambda: there not in one.ps()["cluster"]["peers"], 15, what="the second node to be lost")
            busy.close()  # b's slot here frees: the retried call takes it
            retried = pending.result(timeout=30)
        assert retried.headers["x-call-status"] == "200" and retried.headers["x-call-node"] == here
        assert retried.content == b"retried and answered"
    finally:
        busy.close()  # the client leaves: its request is cancelled


def test_a_call_to_a_service_that_runs_only_on_another_node_is_claimed_there(cluster, tmp_path):
    a = make_service(tmp_path, "a", APP, 'name = "a"\nroutes = ["/a"]\nworkers = 1\nslots = 4\n')
    # b cannot import on the first node (its environment says so): it runs only on the second.
    guard = 'import os\nif os.environ.get("CALLS_NO_B"):\n    raise ImportError("b does not run on this node (test)")\n'
    b = make_service(tmp_path, "b", guard + APP, 'name = "b"\nroutes = ["/b"]\nworkers = 1\nslots = 2\n')
    one = cluster.start(a, args=("--nats", cluster.url), env={"ANYCORE_TOKEN": cluster.token, "CALLS_NO_B": "1"})
    two = cluster.join(a, b)
    wait_peers([one, two])
    there = two.record["node_id"]
    # The first node follows b from KV, fails to import it, and keeps not running it.
    one.wait_output(r"release\.failed service=b", timeout=30)
    wait_for(lambda: "b" not in {s["name"] for s in one.ps()["services"]}, 15, what="b to be absent from the first node")
    wait_for(lambda: "b" in cluster_view(one).get(there, {}).get("services", {}), 15, what="b in the second node's heartbeat")
    query = urllib.parse.urlencode({"service": "b", "path": "/echo?x=3"})
    seen = httpx.get(f"{one.url}/a/relay?{query}", timeout=30)
    assert seen.headers["x-call-status"] == "200" and seen.headers["x-call-node"] == there
    echo = seen.json()
    assert echo["path"] == "/b/echo" and echo["root_path"] == "/b" and echo["query"] == {"x": "3"}
    upload = os.urandom(3 * 512 * 1024)
    query = urllib.parse.urlencode({"service": "b", "method": "POST", "path": "/upload"})
    posted = httpx.post(f"{one.url}/a/relay?{query}", content=upload, timeout=30)
    assert posted.headers["x-call-node"] == there and posted.content == upload
    missing = httpx.get(f"{one.url}/a/relay?" + urllib.parse.urlencode({"service": "nope", "path": "/"}), timeout=30)
    assert missing.headers["x-call-status"] == "404"  # not here, nor on any peer
