"""The admin listener: its pure parsing and access check as tables, and the asyncio shell
on a real loopback socket (keep-alive, 401/404/405/431/408 with reasons, a stream closed
when its client leaves)."""

from __future__ import annotations

import asyncio
import io
from typing import AsyncIterator

import pytest

from anycore.admin.routes import AdminRequest, AdminResponse
from anycore.admin.server import MAX_CONNECTIONS, MAX_HEAD, AdminServer, Refused, check_access, is_loopback, parse_head
from anycore.log import NodeLog
from tests.unit.clock import until


@pytest.mark.parametrize("head, method, path, query, keep", [
    (b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", "GET", "/metrics", {}, True),
    (b"HEAD /a%20b?x=1&y=2 HTTP/1.1\r\n\r\n", "HEAD", "/a b", {"x": "1", "y": "2"}, True),
    (b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n", "GET", "/", {}, False),
    (b"GET / HTTP/1.0\r\n\r\n", "GET", "/", {}, False),
    (b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", "GET", "/", {}, True),
])
def test_parse_head_accepts(head: bytes, method: str, path: str, query: dict[str, str], keep: bool) -> None:
    request, keep_alive = parse_head(head)
    assert (request.method, request.path, request.query, keep_alive) == (method, path, query, keep)


@pytest.mark.parametrize("head, status, words", [
    (b"POST /metrics HTTP/1.1\r\n\r\n", 405, "GET and HEAD"),
    (b"GET /metrics HTTP/1.1\r\nContent-Length: 5\r\n\r\n", 400, "no request body"),
    (b"GET /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400, "no request body"),
    (b"GET /metrics HTTP/2.0\r\n\r\n", 400, "use HTTP/1.1"),
    (b"GET\r\n\r\n", 400, "malformed request line"),
    (b"GET /m HTTP/1.1\r\nno colon here\r\n\r\n", 400, "malformed header"),
    (b"GET http://x/m HTTP/1.1\r\n\r\n", 400, "must be a path"),
])
def test_parse_head_refuses_with_a_reason(head: bytes, status: int, words: str) -> None:
    with pytest.raises(Refused) as refused:
        parse_head(head)
    assert refused.value.status == status and words in refused.value.reason


def test_access_needs_the_bearer_token_only_when_one_is_set() -> None:
    def request(**headers: str) -> AdminRequest:
        return AdminRequest("GET", "/metrics", {}, headers)

    check_access(request(), None)
    check_access(request(authorization="Bearer s3cret"), "s3cret")
    check_access(request(authorization="bearer s3cret"), "s3cret")
    for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": "Basic s3cret"}):
        with pytest.raises(Refused) as refused:
            check_access(request(**headers), "s3cret")
        assert refused.value.status == 401 and "Authorization: Bearer" in refused.value.reason
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.3.4.5")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("10.0.0.1") and not is_loopback("example.com")


async def _exchange(port: int, data: bytes, until: bytes = b"", read_all: bool = False) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    try:
        if read_all:
            return await asyncio.wait_for(reader.read(), 5)
        out = b""
        while until not in out:
            chunk = await asyncio.wait_for(reader.read(65536), 5)
            if not chunk:
                break
            out += chunk
        return out
    finally:
        writer.close()


def run(coro: object) -> None:
    asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def test_the_listener_on_a_real_socket() -> None:
    async def scenario() -> None:
        stream_closed = asyncio.Event()

        async def page(request: AdminRequest) -> AdminResponse:
            return AdminResponse(200, body=f"page {request.query.get('n', '')}".encode())

        async def stream(request: AdminRequest) -> AdminResponse:
            async def chunks() -> AsyncIterator[bytes]:
                try:
                    yield b"data: one\n\n"
                    await asyncio.sleep(3600)  # the client leaves while the stream waits for its next event
                    yield b"never"
                finally:
                    stream_closed.set()
            return AdminResponse(200, "text/event-stream", chunks())

        async def broken(request: AdminRequest) -> AdminResponse:
            raise ValueError("boom")

        log = NodeLog(io.StringIO())
        server = AdminServer({"/page": page, "/events": stream, "/broken": broken}, log, token="s3cret", header_timeout=0.3)
        await server.start("127.0.0.1", 0)
        port = server.port
        auth = b"Authorization: Bearer s3cret\r\n"
        try:
            # Keep-alive: two answers on one connection, each with its length.
            both = await _exchange(port, b"GET /page?n=1 HTTP/1.1\r\n" + auth + b"\r\nGET /page?n=2 HTTP/1.1\r\n" + auth +
                                   b"Connection: close\r\n\r\n", read_all=True)
            assert both.count(b"HTTP/1.1 200 OK") == 2 and both.endswith(b"page 2") and b"page 1HTTP/1.1" in both
            # HEAD: the head only.
            head = await _exchange(port, b"HEAD /page HTTP/1.1\r\n" + auth + b"Connection: close\r\n\r\n", read_all=True)
            assert head.startswith(b"HTTP/1.1 200") and b"content-length: 5" in head and head.endswith(b"\r\n\r\n")
            # No token, a wrong token: 401 with the reason; then a 404 and a 405 with theirs.
            for line in (b"", b"Authorization: Bearer nope\r\n"):
                refused = await _exchange(port, b"GET /page HTTP/1.1\r\n" + line + b"\r\n", read_all=False, until=b"token")
                assert refused.startswith(b"HTTP/1.1 401") and b"www-authenticate: Bearer" in refused
            missing = await _exchange(port, b"GET /nope HTTP/1.1\r\n" + auth + b"\r\n", until=b"served:")
            assert missing.startswith(b"HTTP/1.1 404") and b"/events, /page" in missing
            post = await _exchange(port, b"POST /page HTTP/1.1\r\n" + auth + b"\r\n", until=b"HEAD")
            assert post.startswith(b"HTTP/1.1 405") and b"allow: GET, HEAD" in post
            failed = await _exchange(port, b"GET /broken HTTP/1.1\r\n" + auth + b"\r\n", until=b"boom")
            assert failed.startswith(b"HTTP/1.1 500") and "admin.handler_failed" in log.stream.getvalue()  # type: ignore[attr-defined]
            # A head over the bound: 431, and the connection is closed.
            big = await _exchange(port, b"GET /page HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD + 10) + b"\r\n\r\n", read_all=True)
            assert big.startswith(b"HTTP/1.1 431")
            # A head that never ends: 408 after the header timeout, then closed.
            slow = await _exchange(port, b"GET /page HTTP/1.1\r\n", read_all=True)
            assert slow.startswith(b"HTTP/1.1 408")
            # A stream: chunked, and its iterator closed as soon as the client leaves.
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /events HTTP/1.1\r\n" + auth + b"\r\n")
            got = b""
            while b"data: one" not in got:
                got += await asyncio.wait_for(reader.read(4096), 5)
            assert b"transfer-encoding: chunked" in got and b"text/event-stream" in got
            writer.close()
            await asyncio.wait_for(stream_closed.wait(), 5)
        finally:
            await server.stop()

    run(scenario())


def test_a_taken_port_is_an_oserror_for_the_caller_to_word() -> None:
    async def scenario() -> None:
        first = AdminServer({}, NodeLog(io.StringIO()), None)
        await first.start("127.0.0.1", 0)
        second = AdminServer({}, NodeLog(io.StringIO()), None)
        try:
            with pytest.raises(OSError):
                await second.start("127.0.0.1", first.port)
        finally:
            await first.stop()

    run(scenario())


def test_past_max_connections_the_next_one_gets_503_with_the_reason() -> None:
    async def scenario() -> None:
        server = AdminServer({}, NodeLog(io.StringIO()), None)
        await server.start("127.0.0.1", 0)
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS)]
        try:
            await until(lambda: len(server.tasks) == MAX_CONNECTIONS, "every connection accepted")
            extra = await _exchange(server.port, b"GET / HTTP/1.1\r\n\r\n", read_all=True)
            assert extra.startswith(b"HTTP/1.1 503") and b"connections open; retry" in extra
        finally:
            for _, writer in held:
                writer.close()
            await server.stop()

    run(scenario())
