"""Slow clients cannot take a service down (issue 12, item 2): request bodies are buffered
in the gateway before the request takes a slot, a body that stops coming gets 408, a head
that stops coming gets 408 and an idle keep-alive connection is closed. Every test runs
against both data planes (``gateway``: the Python gateway and ``anycore-gateway``)."""

from __future__ import annotations

import socket
import threading
import time

import httpx

from tests.conftest import make_service, wait_for
from tests.e2e.planes import gateway  # noqa: F401 (a fixture)

APP = """
import asyncio


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/two-part":  # the client has the whole body before the app returns
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok", "more_body": True})
        await asyncio.sleep(0.3)
        await send({"type": "http.response.body", "body": b""})
        return
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"%d" % len(body)})
"""


def _port(node) -> int:
    return int(node.url.rsplit(":", 1)[1])


def test_twenty_trickling_posts_leave_ordinary_requests_served(nodes, tmp_path, gateway):
    # Two slots in all: on a gateway that places a request at its headers, 20 trickling
    # uploads would hold both for as long as they trickle.
    node = nodes.start(make_service(tmp_path, "svc", APP, 'name = "svc"\nworkers = 1\nslots = 2\n'), **gateway)
    stop = threading.Event()
    trickled = []

    def trickle() -> None:
        with socket.create_connection(("127.0.0.1", _port(node))) as sock:
            sock.sendall(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
            sent = 0
            while not stop.wait(0.5) and sent < 100:
                sock.sendall(b"x")
                sent += 1
            trickled.append(sent)

    threads = [threading.Thread(target=trickle) for _ in range(20)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)  # let every upload start (headers sent, body trickling)
        ok = total = 0
        started = time.monotonic()
        with httpx.Client(timeout=5) as client:
            # At least 100 GETs and 3 s (a few trickled bytes each), at most 30 s.
            while (total < 100 or time.monotonic() - started < 3) and time.monotonic() - started < 30:
                total += 1
                try:
                    ok += client.get(node.url + "/").status_code == 200
                except httpx.TimeoutException:
                    pass
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert total >= 100
    assert ok / total >= 0.99, f"{ok} of {total} GETs served while 20 uploads trickled"
    assert min(trickled) >= 2  # the uploads really were trickling meanwhile
    assert node.proc.poll() is None


def test_a_body_that_stops_coming_gets_408_and_frees_everything(nodes, tmp_path, gateway):
    node = nodes.start(make_service(tmp_path, "svc", APP, 'name = "svc"\nworkers = 1\nslots = 1\nbody_timeout = 1\n'
                                    'request_buffer = 4\n'), **gateway)
    # A body over request_buffer is placed after its first 4 bytes and streams on; when it
    # stalls, the slot is freed by the body timeout, not held until the request deadline.
    for partial in (b"ab", b"abcdefgh"):
        with socket.create_connection(("127.0.0.1", _port(node)), timeout=10) as sock:
            sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + partial)
            started = time.monotonic()
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            assert data.startswith(b"HTTP/1.1 408"), data
            assert 0.8 < time.monotonic() - started < 5
    # The one slot is free again: a whole request is served at once.
    response = httpx.post(node.url + "/", content=b"x" * 1000, timeout=5)
    assert (response.status_code, response.text) == (200, "1000")
    assert node.service("svc")["buffering_bytes"] == 0


def test_bodies_being_received_are_bounded_by_max_queue_bytes(nodes, tmp_path, gateway):
    """A body read before its request takes a slot holds its size (up to request_buffer) of
    the service's max_queue_bytes: past it a new upload is answered 503 at once, and the
    budget comes back when the body is in."""
    node = nodes.start(make_service(tmp_path, "svc", APP, 'name = "svc"\nworkers = 1\nmax_queue_bytes = 100000\n'
                                    'request_buffer = 65536\n'), **gateway)
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 60000\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(node)), timeout=10) as first:
        first.sendall(head + b"x" * 10)  # 60000 reserved while it trickles
        wait_for(lambda: node.service("svc")["buffering_bytes"] == 60000, what="the first upload's reservation")
        with socket.create_connection(("127.0.0.1", _port(node)), timeout=10) as second:
            second.sendall(head + b"y" * 10)
            answer = second.recv(4096)  # at once: it is not read
        assert answer.startswith(b"HTTP/1.1 503"), answer
        assert b"request bodies being received fill max_queue_bytes=100000" in answer, answer
        assert b"retry-after: 1" in answer.lower(), answer
        first.sendall(b"x" * 59990)
        first.settimeout(10)
        data = b""
        while not data.endswith(b"\r\n\r\n60000") and (chunk := first.recv(4096)):
            data += chunk
        assert data.startswith(b"HTTP/1.1 200") and data.endswith(b"\r\n\r\n60000"), data
    # Handed back: the same upload, whole now, is read and served.
    response = httpx.post(node.url + "/", content=b"z" * 60000, timeout=10)
    assert (response.status_code, response.text) == (200, "60000")
    wait_for(lambda: node.service("svc")["buffering_bytes"] == 0, what="every reservation handed back")


def test_a_body_sent_while_the_previous_response_ends_is_read(nodes, tmp_path, gateway):
    """Keep-alive: the client sends its next request (head, then body) as soon as it has the
    previous response's bytes, before that response has ended in the node; the next request
    waits for its body with reading resumed, not paused forever."""
    node = nodes.start(make_service(tmp_path, "svc", APP, 'name = "svc"\nworkers = 1\n'), **gateway)
    with socket.create_connection(("127.0.0.1", _port(node)), timeout=10) as sock:
        sock.sendall(b"GET /two-part HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\nok"):
            data += sock.recv(4096)
        sock.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n")
        time.sleep(0.1)
        sock.sendall(b"hello")
        data = b""
        while not data.endswith(b"\r\n\r\n5"):
            chunk = sock.recv(4096)
            assert chunk, data
            data += chunk
        assert data.startswith(b"HTTP/1.1 200")


def _read_until_closed(sock: socket.socket, limit: float) -> tuple[bytes, float]:
    """Everything the gateway sends until it closes (or ``limit`` seconds), and when it closed."""
    sock.settimeout(limit)
    started = time.monotonic()
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except (socket.timeout, ConnectionResetError):
        pass
    return data, time.monotonic() - started


def test_a_head_that_stops_coming_gets_408_and_a_silent_connection_is_closed(nodes, tmp_path, gateway):
    args = {**gateway, "args": (*gateway.get("args", ()), "--header-timeout", "1")}
    node = nodes.start(make_service(tmp_path, "svc", APP, 'name = "svc"\nworkers = 1\n'), **args)
    with socket.create_connection(("127.0.0.1", _port(node)), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nX-Slow: ")
        data, elapsed = _read_until_closed(sock, 10)
    assert data.startswith(b"HTTP/1.1 408"), data[:200]
    assert b"connection: close" in data.lower()
    assert 0.8 < elapsed < 5
    with socket.create_connection(("127.0.0.1", _port(node)), timeout=10) as sock:
        data, elapsed = _read_until_closed(sock, 10)  # never sends a byte: closed, nothing said
    assert data == b"" and 0.8 < elapsed < 5
    assert httpx.get(node.url + "/", timeout=5).status_code == 200


def test_an_idle_keep_alive_connection_is_closed_and_a_busy_one_is_not(nodes, tmp_path, gateway):
    args = {**gateway, "args": (*gateway.get("args", ()), "--keepalive-timeout", "1")}
    node = nodes.start(make_service(tmp_path, "svc", APP, 'name = "svc"\nworkers = 1\n'), **args)
    request = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"
    with socket.create_connection(("127.0.0.1", _port(node)), timeout=10) as sock:
        started = time.monotonic()
        for _ in range(6):  # a request every 0.3 s: kept open past the 1 s timeout
            sock.sendall(request)
            data = b""
            while not data.endswith(b"\r\n\r\n0"):
                chunk = sock.recv(4096)
                assert chunk, f"closed {time.monotonic() - started:.1f}s in, while in use"
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
            time.sleep(0.3)
        assert time.monotonic() - started > 1.5
        data, elapsed = _read_until_closed(sock, 10)  # now idle: closed after about 1 s
    assert data == b"" and elapsed < 5
