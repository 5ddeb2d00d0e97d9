"""``anycore-gateway`` (native/) behind a stand-in node and stand-in workers speaking the
real control protocol and wire frames (tests/e2e/native_fake.py): HTTP/1.1 keep-alive and
pipelining, streaming bodies both ways under the credit window, 100-continue, routes,
413/431/404/503/504/502, the release header, Cancel on client disconnect, and the
control messages back (Started, Stats, WorkerIdle, WorkerLost). One gateway serves most
checks; skipped only when the binary is not built (``cargo build --release`` in native/).
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
import time
from typing import Any, Iterator

import pytest

from anycore import dataplane

from .native_fake import BINARY, FakeNode

pytestmark = pytest.mark.skipif(not BINARY.is_file(), reason="anycore-gateway not built: cargo build --release in native/")


@pytest.fixture(scope="module")
def node() -> Iterator[FakeNode]:
    n = FakeNode(threads=2, header_limit=16384)
    n.listen()
    n.service("app", ["/"], max_body=4 << 20, deadline=30.0)
    n.service("api", ["/api", "example.test/special"], release="a1", deadline=2.0, max_queue=2)
    n.add_worker(1, "app", slots=4)
    n.add_worker(2, "app", slots=4)
    n.add_worker(3, "api", release="a1", slots=1)
    wait_stats(n, "app", lambda s: len(s.inflight) == 2)
    wait_stats(n, "api", lambda s: len(s.inflight) == 1)
    yield n
    n.close()


def wait_stats(n: FakeNode, service: str, match: Any, since: int = 0) -> dataplane.Stats:
    return n.stats(service, match, since=since)


def get(n: FakeNode, path: str, method: str = "GET", body: Any = None, headers: dict[str, str] | None = None,
        timeout: float = 10.0) -> tuple[int, dict[str, str], bytes]:
    c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=timeout)
    try:
        headers = headers or {}
        c.request(method, path, body=body, headers=headers, encode_chunked="Transfer-Encoding" in headers)
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


def test_started_names_its_threads(node: FakeNode) -> None:
    assert node.started.threads == 2 and node.started.version


def test_hello_keep_alive_with_release_and_node_headers(node: FakeNode) -> None:
    c = http.client.HTTPConnection("127.0.0.1", node.port, timeout=10)
    for _ in range(20):
        c.request("GET", "/hello")
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"hello")
        assert r.getheader("anycore-release") == "r1" and r.getheader("anycore-node") == "node-test"
    c.close()


def test_pipelined_requests_are_answered_in_order(node: FakeNode) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"".join(b"GET /headers?i=%d HTTP/1.1\r\nHost: x\r\n\r\n" % i for i in range(5)))
        data = b""
        while data.count(b"HTTP/1.1 200") < 5 or not data.endswith(b"}"):
            chunk = s.recv(65536)
            assert chunk, f"connection closed early: {data!r}"
            data += chunk
    order = [int(part.split(b'"query": "i=')[1].split(b'"')[0]) for part in data.split(b"HTTP/1.1 200")[1:]]
    assert order == [0, 1, 2, 3, 4]


def test_the_req_frame_carries_path_root_path_query_client_and_server(node: FakeNode) -> None:
    status, headers, body = get(node, "/api/v1/headers?x=%41&y=2")
    seen = json.loads(body)
    assert status == 200 and headers["anycore-release"] == "a1"
    assert (seen["path"], seen["root_path"], seen["query"]) == ("/api/v1/headers", "/api", "x=%41&y=2")
    assert seen["client"][0] == "127.0.0.1" and seen["server"] == ["127.0.0.1", node.port]
    assert ["host", f"127.0.0.1:{node.port}"] in seen["headers"] and seen["http_version"] == "1.1"
    _, _, body = get(node, "/sp%61ce/headers")
    assert json.loads(body)["path"] == "/space/headers" and json.loads(body)["raw_path"] == "/sp%61ce/headers"


def test_a_host_route_beats_a_hostless_one_and_the_longest_prefix_wins(node: FakeNode) -> None:
    _, headers, _ = get(node, "/special/headers", headers={"Host": "Example.TEST:8080"})
    assert headers["anycore-release"] == "a1"
    _, headers, _ = get(node, "/special/headers")
    assert headers["anycore-release"] == "r1"
    _, headers, _ = get(node, "/apiary/headers")  # "/api" matches /api and /api/..., not /apiary
    assert headers["anycore-release"] == "r1"


def test_streaming_request_body_with_100_continue_and_chunked_upload(node: FakeNode) -> None:
    payload = bytes(range(256)) * 12000  # 3 MB: past the 1 MiB window, so credit must flow back
    for _ in range(int(__import__("os").environ.get("REPEAT", "1"))):
        status, _, body = get(node, "/echo", "POST", payload, {"Expect": "100-continue"})
        assert status == 200
    status, _, body = get(node, "/echo", "POST", payload, {"Expect": "100-continue"})
    assert status == 200 and json.loads(body) == {"length": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"y" * 50000

    status, _, body = get(node, "/echo", "POST", chunks(), {"Transfer-Encoding": "chunked"})
    assert status == 200 and json.loads(body)["length"] == 2_000_000


def test_streaming_response_under_the_credit_window(node: FakeNode) -> None:
    status, headers, body = get(node, "/stream?n=64")  # 4 MiB: four windows' worth
    assert status == 200 and len(body) == 64 * 65536 and headers.get("transfer-encoding") == "chunked"
    status, _, body = get(node, "/echo?stream=1", "POST", b"z" * 300_000)
    assert status == 200 and body == b"z" * 300_000


def test_gateway_made_answers_are_json_with_the_release(node: FakeNode) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:  # refused before any body byte is read
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (5 << 20))
        head = s.recv(65536).lower()
    assert head.startswith(b"http/1.1 413") and b'"error": "payload too large"' in head
    assert b"anycore-release: r1" in head and b"connection: close" in head

    def chunks() -> Iterator[bytes]:  # no length announced: refused once max_body (4 MiB) is passed
        for _ in range(100):
            yield b"y" * 65536

    try:
        status, _, body = get(node, "/echo", "POST", chunks(), {"Transfer-Encoding": "chunked"})
        assert status == 413 and json.loads(body)["error"] == "payload too large"
    except (BrokenPipeError, ConnectionResetError):
        pass  # the answer came before the client finished sending: it may miss it
    status, _, body = get(node, "/noresp")
    assert status == 500 and json.loads(body) == {"error": "no response", "status": 500,
                                                    "detail": "the app returned without a response"}
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert s.recv(100).startswith(b"HTTP/1.1 431")


def test_queue_full_503_and_deadline_504(node: FakeNode) -> None:
    # api: one slot, max_queue 2, deadline 2 s (room for a loaded machine before they expire)
    conns = [http.client.HTTPConnection("127.0.0.1", node.port, timeout=10) for _ in range(4)]
    mark = len(node.messages)
    conns[0].request("GET", "/api/sleep?s=3&stubborn=1")  # keeps the slot past its 504
    wait_stats(node, "api", lambda s: s.inflight == [(3, 1)], since=mark)  # it holds the one slot
    for c in conns[1:3]:
        c.request("GET", "/api/sleep?s=0")
    wait_stats(node, "api", lambda s: s.queued == 2)
    conns[3].request("GET", "/api/sleep?s=0")
    r = conns[3].getresponse()
    assert r.status == 503 and r.getheader("retry-after") == "1" and r.getheader("anycore-release") == "a1"
    assert json.loads(r.read())["detail"] == "service api: queue full; retry after 1s"
    for c in conns[1:3]:
        r = c.getresponse()
        assert r.status == 504 and json.loads(r.read())["error"] == "deadline passed while queued"
    r = conns[0].getresponse()  # the running one passed its deadline too: 504, cancelled on the worker
    assert r.status == 504 and json.loads(r.read())["error"] == "deadline passed"
    stats = wait_stats(node, "api", lambda s: ("queue_full", 1) in s.rejected and s.inflight == [(3, 0)])
    # As the Python gateway counts them: the running one under its release, those no
    # release took (expired while queued, refused) under "", each refusal by its reason.
    assert ("a1", 504, 1) in stats.statuses and ("", 504, 2) in stats.statuses and ("", 503, 1) in stats.statuses
    assert ("deadline", 2) in stats.rejected
    [(_, duration, _, queue_wait, _)] = [h for h in stats.histograms if h[0] == "a1"]
    assert sum(duration) >= 1 and sum(queue_wait) >= 1
    for c in conns:
        c.close()


def test_client_disconnect_cancels_on_the_worker(node: FakeNode) -> None:
    def cancels() -> int:
        return sum(json.loads(get(node, "/cancels")[2])["cancels"] for _ in range(4))

    before = cancels()
    s = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    s.sendall(b"GET /sleep?s=30 HTTP/1.1\r\nHost: x\r\n\r\n")
    wait_stats(node, "app", lambda st: sum(n for _, n in st.inflight) == 1)
    s.close()
    wait_stats(node, "app", lambda st: sum(n for _, n in st.inflight) == 0)
    assert cancels() > before


def test_draining_worker_takes_nothing_and_says_idle(node: FakeNode) -> None:
    mark = len(node.messages)
    node.send(dataplane.Accepting(2, False))
    node.wait(lambda m: isinstance(m, dataplane.WorkerIdle) and m.worker == 2)
    # the Accepting change makes a fresh Stats: settled counts from after it
    served = wait_stats(node, "app", lambda s: all(n == 0 for _, n in s.inflight), since=mark).served
    for _ in range(10):
        assert get(node, "/hello")[0] == 200
    after = wait_stats(node, "app", lambda s: dict(s.served)[1] >= dict(served)[1] + 10)
    assert dict(after.served)[2] == dict(served)[2]
    node.send(dataplane.Accepting(2, True))


def test_stopped_service_answers_503_and_shift_moves_new_requests() -> None:
    n = FakeNode(threads=1)
    try:
        n.listen()
        status, _, body = get(n, "/hello")
        assert status == 503 and json.loads(body)["error"] == "starting"
        n.service("app", ["/"], release="r1")
        n.add_worker(1, "app", release="r1", slots=2)
        n.add_worker(2, "app", release="r2", slots=2)  # warm, not live yet
        wait_stats(n, "app", lambda s: len(s.inflight) == 2)
        assert all(get(n, "/hello")[1]["anycore-release"] == "r1" for _ in range(5))
        n.send(dataplane.Shift("app", "r2"))
        n.wait(lambda m: isinstance(m, dataplane.Stats) and m.service == "app")
        deadline = time.monotonic() + 5
        while get(n, "/hello")[1]["anycore-release"] != "r2":
            assert time.monotonic() < deadline
        n.service("app", ["/"], release="r2", running=False)
        deadline = time.monotonic() + 5
        while (answer := get(n, "/hello"))[0] == 200:  # the control message is applied asynchronously
            assert time.monotonic() < deadline
        status, headers, body = answer
        assert status == 503 and json.loads(body)["error"] == "service stopped" and headers["retry-after"] == "5"
        n.send(dataplane.RemoveService("app"))
        deadline = time.monotonic() + 5
        while get(n, "/hello")[0] != 404:
            assert time.monotonic() < deadline
        # Unrouted answers are counted too, as the Python gateway does: service "", release "".
        unrouted = wait_stats(n, "", lambda s: any(status == 404 for _, status, _ in s.statuses))
        assert ("no_route", sum(c for _, st, c in unrouted.statuses if st == 404)) in unrouted.rejected
    finally:
        n.close()


def test_a_lost_workers_safe_request_is_retried_the_others_get_502_and_a_double_crash_is_quarantined() -> None:
    # router/crash.py's rule (native/src/crash.rs): blame shared among the dead worker's
    # requests; a bodiless GET with nothing sent goes back to the head of the queue.
    n = FakeNode(threads=1)
    try:
        n.listen()
        n.service("app", ["/"])
        n.add_worker(7, "app", slots=4)
        wait_stats(n, "app", lambda s: len(s.inflight) == 1)
        get_conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        get_conn.request("GET", "/sleep?s=1")
        post_conn = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        post_conn.request("POST", "/sleep?s=30", body=b"")
        wait_stats(n, "app", lambda s: s.inflight == [(7, 2)])
        status, _, body = get(n, "/die", "POST", b"")
        assert status == 502 and json.loads(body)["error"] == "worker died"
        r = post_conn.getresponse()
        detail = json.loads(r.read())["detail"]
        assert r.status == 502 and r.getheader("anycore-release") == "r1"
        assert "POST request died (unsafe to retry" in detail and "may or may not have taken effect" in detail
        lost = n.wait(lambda m: isinstance(m, dataplane.WorkerLost))
        assert (lost.worker, lost.inflight) == (7, 3)
        verdicts = sorted((m.outcome, m.method, m.path) for m in n.messages if isinstance(m, dataplane.RequestCrashed))
        assert verdicts == [("fail", "POST", ""), ("fail", "POST", ""), ("retry", "GET", "/sleep")]
        wait_stats(n, "app", lambda s: s.queued == 1)  # the GET waits for a worker, first in line
        n.add_worker(8, "app", slots=4)
        r = get_conn.getresponse()
        assert (r.status, r.read()) == (200, b"slept")
        stats = wait_stats(n, "app", lambda s: ("r1", 200, 1) in s.statuses)
        assert ("r1", 502, 2) in stats.statuses

        # A GET that kills every worker it runs on: retried once, then quarantined; an
        # identical request is refused at once (no worker dies for it), others still run.
        poison = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        poison.request("GET", "/die")  # kills 8; its retry waits for a worker
        n.wait(lambda m: isinstance(m, dataplane.WorkerLost) and m.worker == 8)
        n.add_worker(9, "app", slots=4)  # the retry kills 9 too: quarantined
        r = poison.getresponse()
        assert r.status == 502 and json.loads(r.read())["error"] == "quarantined"
        quarantined = n.wait(lambda m: isinstance(m, dataplane.RequestCrashed) and m.outcome == "quarantine")
        assert (quarantined.method, quarantined.path, quarantined.blame) == ("GET", "/die", 2.0)
        n.add_worker(10, "app", slots=4)
        status, _, body = get(n, "/die")
        assert status == 502 and "refused for 300s" in json.loads(body)["detail"]
        assert get(n, "/die?other=1", "POST", b"")[0] == 502  # not the same request: it runs (and kills 10)
        stats = wait_stats(n, "app", lambda s: ("quarantined", 1) in s.rejected)
        assert ("", 502, 1) in stats.statuses  # the refusal: no release took it
    finally:
        n.close()


def test_the_gateway_exits_when_the_control_socket_closes() -> None:
    n = FakeNode(threads=1)
    n.hang_up()
    assert n.proc.wait(timeout=5) == 0


def test_shutdown_finishes_the_running_response_then_exits() -> None:
    n = FakeNode(threads=1)
    try:
        n.listen()
        n.service("app", ["/"])
        n.add_worker(1, "app", slots=2)
        wait_stats(n, "app", lambda s: len(s.inflight) == 1)
        c = http.client.HTTPConnection("127.0.0.1", n.port, timeout=10)
        c.request("GET", "/sleep?s=0.3")
        wait_stats(n, "app", lambda s: s.inflight == [(1, 1)])
        n.send(dataplane.Shutdown(5.0))
        r = c.getresponse()
        assert (r.status, r.read()) == (200, b"slept")
        c.close()
        assert n.proc.wait(timeout=5) == 0
    finally:
        n.close()
