"""Calls between services across nodes: a call placed like an outside request spills over
to a peer's free slot when the callee has none on the caller's node."""

from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import httpx

from tests.cluster.conftest import wait_peers
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
