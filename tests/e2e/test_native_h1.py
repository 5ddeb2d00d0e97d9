"""HTTP/1.1 framing of ``anycore-gateway`` (native/src/h1/mod.rs) on raw sockets, behind the
stand-in node and workers of tests/e2e/native_fake.py: HTTP/1.0 (an HTTP/1.1 status line,
keep-alive only if asked, a streamed body ended by the close), HEAD, pipelined requests
with bodies answered in order, a chunked upload past a frame's worth, ``Expect:
100-continue`` (the 100 only once a worker took the request), a body over max_body, a
shutdown closing idle connections at once, and request ids (``gateway/requestid.py``'s rules)."""

from __future__ import annotations

import json
import re
import socket
from typing import Iterator

import pytest

from anycore import dataplane

from .native_fake import BINARY, FakeNode

pytestmark = pytest.mark.skipif(not BINARY.is_file(), reason="anycore-gateway not built: cargo build --release in native/")


@pytest.fixture(scope="module")
def node() -> Iterator[FakeNode]:
    n = FakeNode(threads=1)
    n.listen()
    n.service("app", ["/"], max_body=2 << 20)
    n.add_worker(1, "app", slots=4)
    n.stats("app", lambda s: len(s.inflight) == 1)
    yield n
    n.close()


class Reader:
    """Responses off a raw socket: (status line, headers, body), by the framing they name."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def _fill(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def _take(self, n: int) -> bytes:
        while len(self.buf) < n:
            assert self._fill(), self.buf[:200]
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            assert self._fill(), self.buf[:200]
        line, _, self.buf = self.buf.partition(b"\r\n")
        return line

    def response(self, head: bool = False) -> tuple[bytes, dict[bytes, bytes], bytes]:
        status = self._line()
        headers = {}
        while line := self._line():
            name, _, value = line.partition(b": ")
            headers[name.lower()] = value
        if head or status.split()[1] in (b"100", b"204", b"304"):
            return status, headers, b""
        if b"content-length" in headers:
            return status, headers, self._take(int(headers[b"content-length"]))
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while size := int(self._line(), 16):
                body += self._take(size)
                assert self._take(2) == b"\r\n"
            assert self._line() == b""
            return status, headers, body
        while self._fill():  # close-delimited
            pass
        body, self.buf = self.buf, b""
        return status, headers, body

    def closed(self) -> bool:
        return not self.buf and not self._fill()


def connect(node: FakeNode) -> tuple[socket.socket, Reader]:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=10)
    return sock, Reader(sock)


def test_http10_gets_a_11_status_line_and_keep_alive_only_if_asked(node: FakeNode) -> None:
    sock, r = connect(node)
    with sock:
        sock.sendall(b"GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        status, headers, body = r.response()
        assert (status, headers[b"connection"], body) == (b"HTTP/1.1 200 OK", b"keep-alive", b"hello")
        sock.sendall(b"GET /hello HTTP/1.0\r\n\r\n")  # kept open; this one closes it
        status, headers, body = r.response()
        assert (status, headers[b"connection"], body) == (b"HTTP/1.1 200 OK", b"close", b"hello")
        assert r.closed()
    sock, r = connect(node)
    with sock:  # a streamed body with no length, to HTTP/1.0: no chunked coding, the close ends it
        sock.sendall(b"GET /stream?n=3 HTTP/1.0\r\n\r\n")
        status, headers, body = r.response()
        assert b"transfer-encoding" not in headers and headers[b"connection"] == b"close"
        assert body == b"x" * 3 * 65536


def test_head_has_the_headers_and_no_body(node: FakeNode) -> None:
    sock, r = connect(node)
    with sock:
        sock.sendall(b"HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = r.response(head=True)
        assert (status, headers[b"content-length"], body) == (b"HTTP/1.1 200 OK", b"5", b"")
        assert r.response()[2] == b"hello"  # the next response starts right where the head ended


def test_pipelined_requests_with_bodies_are_answered_in_order(node: FakeNode) -> None:
    sock, r = connect(node)
    with sock:
        sock.sendall(b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
                     b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nde\r\n0\r\n\r\n"
                     b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
        assert [r.response()[2] for _ in range(3)] == [b"abc", b"de", b"hello"]


def test_a_chunked_upload_past_a_frame_streams_under_credit(node: FakeNode) -> None:
    sock, r = connect(node)
    with sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(30):  # 1.5 MB in 50 KB chunks: past the credit window too
            sock.sendall(b"c350\r\n" + b"q" * 50000 + b"\r\n")
        sock.sendall(b"0\r\n\r\n")
        assert json.loads(r.response()[2])["length"] == 1_500_000


def test_expect_100_continue_is_placed_at_once_and_told_to_send(node: FakeNode) -> None:
    sock, r = connect(node)
    with sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\nExpect: 100-continue\r\n\r\n")
        assert r.response()[0] == b"HTTP/1.1 100 Continue"  # before any body byte was sent
        sock.sendall(b"e" * 200000)
        status, _, body = r.response()
        assert status == b"HTTP/1.1 200 OK" and json.loads(body)["length"] == 200000


def test_a_body_over_max_body_is_refused_413_and_the_connection_closes(node: FakeNode) -> None:
    sock, r = connect(node)
    with sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3000000\r\nExpect: 100-continue\r\n\r\n")
        status, headers, body = r.response()
        assert status.startswith(b"HTTP/1.1 413") and headers[b"connection"] == b"close"
        assert "max_body" in json.loads(body)["detail"]
        assert r.closed()
    sock, r = connect(node)
    with sock:  # chunked: no length up front; refused once past it, mid-body
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(60):
                sock.sendall(b"c350\r\n" + b"q" * 50000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        status, headers, body = r.response()
        assert status.startswith(b"HTTP/1.1 413") and headers[b"connection"] == b"close"


def test_shutdown_closes_idle_keep_alive_connections_at_once() -> None:
    n = FakeNode(threads=2)
    try:
        n.listen()
        n.service("app", ["/"])
        n.add_worker(1, "app", slots=2)
        n.stats("app", lambda s: len(s.inflight) == 1)
        idle = [connect(n) for _ in range(3)]
        for sock, r in idle:
            sock.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n")
            assert r.response()[2] == b"hello"
        n.send(dataplane.Shutdown(30.0))
        for sock, r in idle:
            assert r.closed()  # told at once, not at the keep-alive timeout
            sock.close()
        assert n.proc.wait(timeout=5) == 0  # every connection gone: no need to wait for the grace
    finally:
        n.close()


def test_every_request_carries_one_request_id_and_its_answer_names_it(node: FakeNode) -> None:
    def ask(extra: bytes, path: bytes = b"/headers") -> tuple[bytes, dict[bytes, bytes], bytes]:
        sock, r = connect(node)
        with sock:
            sock.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
            return r.response()

    def seen(body: bytes, name: str) -> list[str]:
        return [v for k, v in json.loads(body)["headers"] if k == name]

    _, headers, body = ask(b"")  # none given: one made here
    assert re.fullmatch(rb"[0-9a-f]{12}-[0-9a-f]+", headers[b"x-request-id"])
    assert seen(body, "x-request-id") == [headers[b"x-request-id"].decode()]
    _, headers, body = ask(b"X-Request-Id: " + b"x" * 201 + b"\r\nx-request-id: client-42\r\n")  # the first valid one
    assert headers[b"x-request-id"] == b"client-42" and seen(body, "x-request-id") == ["client-42"]
    trace = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    _, _, body = ask(b"traceparent: " + trace + b"\r\ntracestate: a=1\r\n")
    assert (seen(body, "traceparent"), seen(body, "tracestate")) == ([trace.decode()], ["a=1"])
    _, _, body = ask(b"traceparent: 00-garbage\r\ntracestate: a=1\r\n")  # an invalid one goes, with its state
    assert (seen(body, "traceparent"), seen(body, "tracestate")) == ([], [])
    sock, r = connect(node)
    with sock:  # the gateway's own answers name the request too
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nx-request-id: big-1\r\nContent-Length: 3000000\r\n\r\n")
        status, headers, _ = r.response()
        assert status.startswith(b"HTTP/1.1 413") and headers[b"x-request-id"] == b"big-1"
