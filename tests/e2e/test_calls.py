"""Calls between services on one node (anycore.call, the httpx transport, call_sync, the
CLI): one node with four services, reused by every test of the module."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.conftest import NodeFactory, RunningNode, make_service, wait_for
from tests.e2e.calls_app import APP, WSGI
from tests.e2e.planes import gateway  # noqa: F401 (a fixture)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("calls")
    paths = [
        make_service(root, "a", APP, 'name = "a"\nroutes = ["/a"]\nworkers = 1\nslots = 16\n'),
        make_service(root, "b", APP, 'name = "b"\nroutes = ["/b"]\nworkers = 2\nslots = 4\n'),
        make_service(root, "c", APP, 'name = "c"\nroutes = ["/c"]\nworkers = 1\nslots = 1\ntimeout = 1.5\n'),
        make_service(root, "w", WSGI, 'name = "w"\nroutes = ["/w"]\nworkers = 1\nslots = 2\n'),
    ]
    factory = NodeFactory(root)
    try:
        yield factory.start(*paths, timeout=120)
    finally:
        factory.stop_all()


def relay(node: RunningNode, service: str, path: str, method: str = "GET", **kwargs: object) -> httpx.Response:
    query = urllib.parse.urlencode({"service": service, "method": method, "path": path})
    return httpx.request("POST" if method != "GET" else "GET", f"{node.url}/a/relay?{query}", timeout=30, **kwargs)  # type: ignore[arg-type]


def test_a_call_reaches_the_service_by_name_with_request_id_trace_and_deadline(node):
    trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    r = relay(node, "b", "/echo?x=1", headers={"x-request-id": "req-42", "traceparent": trace, "tracestate": "k=v"})
    assert r.status_code == 200 and r.headers["x-call-status"] == "200"
    seen = r.json()
    assert seen["path"] == "/b/echo" and seen["root_path"] == "/b" and seen["query"] == {"x": "1"}
    headers = seen["headers"]
    assert headers["x-request-id"] == "req-42" and headers["traceparent"] == trace and headers["tracestate"] == "k=v"
    assert headers["anycore-call-chain"] == "a" and headers["host"] == "b"
    assert 25 < seen["left"] <= 30  # a's own 30 s deadline, less what it used, is b's budget
    assert r.headers["x-call-node"] == node.record["node_id"]


def test_bodies_of_1_5_mib_travel_both_ways(node):
    upload = os.urandom(3 * 512 * 1024)
    r = relay(node, "b", "/upload", method="POST", content=upload)
    assert r.headers["x-call-status"] == "200"
    assert hashlib.sha256(r.content).digest() == hashlib.sha256(upload).digest()
    big = relay(node, "b", f"/big?size={len(upload)}")
    assert big.headers["x-call-status"] == "200" and big.content == bytes(range(256)) * (len(upload) // 256)
    via_httpx = httpx.post(f"{node.url}/a/httpx?service=b", content=upload, timeout=30)
    assert via_httpx.headers["x-call-status"] == "200" and via_httpx.content == upload


def test_a_wsgi_app_calls_with_call_sync(node):
    r = httpx.get(f"{node.url}/w/", headers={"x-request-id": "wsgi-1"}, timeout=30)
    assert r.status_code == 200 and r.headers["x-call-status"] == "200"
    seen = r.json()
    assert seen["query"] == {"from": "wsgi"} and seen["headers"]["x-request-id"] == "wsgi-1"
    assert seen["headers"]["anycore-call-chain"] == "w"


def test_a_call_with_300_ms_left_gets_504_in_about_300_ms_and_the_callee_is_cancelled(node, tmp_path):
    mark, result = tmp_path / "cancelled", tmp_path / "result"
    query = urllib.parse.urlencode({"service": "b", "left": "0.3", "result": str(result),
                                    "path": "/slow?" + urllib.parse.urlencode({"sleep": "1", "mark": str(mark)})})
    httpx.get(f"{node.url}/c/deadline?{query}", timeout=30)  # c's own answer races its deadline: read the record
    outcome = json.loads(wait_for(lambda: result.exists() and result.read_text(), 10, what="c's record of the call"))
    assert outcome["status"] == 504 and outcome["body"]["error"] == "deadline passed"
    assert 0.2 <= outcome["elapsed"] < 0.8, outcome  # the budget was c's ~0.3 s left, not b's 1 s sleep
    wait_for(lambda: mark.exists() and mark.read_text() == "cancelled", 10, what="b to record its cancel")


def test_a_safe_call_whose_worker_is_killed_is_retried_and_answered(node, tmp_path):
    pidfile = tmp_path / "pid"
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(relay, node, "b", "/once?" + urllib.parse.urlencode({"file": str(pidfile)}))
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 15, what="b's worker to take the call"))
        os.kill(pid, signal.SIGKILL)
        r = pending.result(timeout=30)
    assert r.headers["x-call-status"] == "200" and r.content == b"retried and answered"


def test_an_unsafe_call_whose_worker_is_killed_gets_502_json(node, tmp_path):
    pidfile = tmp_path / "pid"
    wait_for(lambda: len(node.ready_workers("b")) == 2, 20, what="b's workers back")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(relay, node, "b", "/once?" + urllib.parse.urlencode({"file": str(pidfile)}),
                              method="POST", content=b"charge")
        pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text(), 15, what="b's worker to take the call"))
        os.kill(pid, signal.SIGKILL)
        r = pending.result(timeout=30)
    assert r.headers["x-call-status"] == "502"
    error = r.json()
    assert error["error"] == "worker died" and "may or may not have taken effect" in error["detail"]


def test_an_unknown_service_is_a_clear_404_at_once(node):
    started = time.monotonic()
    r = relay(node, "nope", "/x")
    assert r.headers["x-call-status"] == "404" and time.monotonic() - started < 5
    error = r.json()
    assert error["error"] == "unknown service" and "'nope'" in error["detail"] and "a, b, c, w" in error["detail"]


def test_a_call_cycle_is_refused_not_hung(node):
    # c has one slot, held by the request that calls c: queueing would wait on itself.
    started = time.monotonic()
    r = httpx.get(f"{node.url}/c/loop?service=c", timeout=30)
    assert r.json()["refused"] == 503 and "call cycle" in r.json()["error"] and time.monotonic() - started < 1.2
    # a has slots to spare: it recurses until the chain is too deep.
    deep = httpx.get(f"{node.url}/a/loop?service=a", timeout=30).json()
    assert deep["refused"] == 508 and deep["depth"] == 8 and "loop detected" in deep["error"]


def test_the_cli_calls_a_service_by_name(node):
    ok = node.cli("call", "b", "GET", "/echo?x=2", "-H", "x-request-id: cli-1", "-i")
    assert ok.returncode == 0, ok.stderr
    seen = json.loads(ok.stdout)
    assert seen["query"] == {"x": "2"} and seen["headers"]["x-request-id"] == "cli-1"
    assert ok.stderr.startswith("200\n") and "anycore-release: b@" in ok.stderr
    posted = node.cli("call", "b", "POST", "/upload", "-d", "hello")
    assert posted.returncode == 0 and posted.stdout == "hello"
    missing = node.cli("call", "nope", "GET", "/")
    assert missing.returncode == 1 and "unknown service" in missing.stdout


def test_a_call_to_a_stopped_service_is_a_clear_503(node):
    assert node.cli("stop", "w").returncode == 0
    r = relay(node, "w", "/")
    assert r.headers["x-call-status"] == "503" and "anycore start w" in r.json()["detail"]


def test_a_request_knows_its_deadline_and_passes_it_on_under_either_gateway(tmp_path, gateway):
    """``Req.remaining``: the gateway tells the worker the seconds left as the request
    starts (the native one sets it in the frame it wrote at admission), so
    ``anycore.time_left()`` and a call's budget work on both data planes."""
    paths = [make_service(tmp_path, "a", APP, 'name = "a"\nroutes = ["/a"]\nworkers = 1\nslots = 4\ntimeout = 20\n'),
             make_service(tmp_path, "b", APP, 'name = "b"\nroutes = ["/b"]\nworkers = 1\nslots = 4\n')]
    factory = NodeFactory(tmp_path)
    try:
        node = factory.start(*paths, timeout=120, **gateway)
        seen = httpx.get(f"{node.url}/a/echo", timeout=30).json()
        assert seen["left"] is not None and 15 < seen["left"] <= 20, seen  # a's own timeout, as it started
        called = relay(node, "b", "/echo").json()
        assert called["left"] is not None and 15 < called["left"] <= 20, called  # a's budget, not b's 30 s
    finally:
        factory.stop_all()
