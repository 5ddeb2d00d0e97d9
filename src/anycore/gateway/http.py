"""The gateway's HTTP/1.1 server: it owns every client connection and never runs user code.

Parsing is llhttp (httptools). A connection handles its requests in order: a pipelined
request is parsed and held (reading pauses) until the one before it has answered, so
responses never interleave. Limits, so that no input can hurt the node:
- request line + headers over ``max_header_bytes`` -> 431, connection closed;
- headers not complete within ``header_timeout`` (slowloris) -> 408, closed;
- an idle keep-alive connection is closed after ``keepalive_timeout``;
- beyond ``max_connections`` a new connection gets 503 and is closed;
- a malformed request -> 400, closed; a body over the service's ``max_body`` -> 413, closed.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Any

import httptools

from anycore.gateway.exchange import Exchange, status_line

if TYPE_CHECKING:
    from anycore.gateway.server import Gateway


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 64 * 1024
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 10000
    ws_ping_interval: float = 20.0  # WebSockets: idle this long -> ping; no answer as long again -> close 1011


class _HeadersTooLarge(Exception):
    pass


class HttpConnection(asyncio.Protocol):
    def __init__(self, gateway: "Gateway") -> None:
        self.gateway = gateway
        self.limits = gateway.limits
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.client: tuple[str, int] | None = None
        self.server: tuple[str, int] | None = None
        self.pipeline: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.closed = False
        self.closing = False  # finish the current response, then close (node shutdown)
        self.writing_paused = False
        self.reading_paused = False
        self.body_paused = False
        # One pending timeout per connection (header read or keep-alive idle), checked by the
        # gateway's sweep: a float per request instead of a timer object created and cancelled.
        self.due = 0.0
        self.on_due: Any = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._host = b""
        self._content_length: int | None = None
        self._chunked = self._expect = False
        self._header_bytes = 0

    # -- connection lifecycle -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.server = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None
        if len(self.gateway.connections) >= self.limits.max_connections:
            transport.write(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n")  # type: ignore[attr-defined]
            transport.close()
            self.closed = True
            return
        self.gateway.connections.add(self)
        self._arm(self.limits.header_timeout, self._header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.gateway.connections.discard(self)
        self._disarm()
        for exchange in self.pipeline:
            if not exchange.response_complete:
                self.gateway.client_gone(exchange)
        self.pipeline.clear()

    def _arm(self, delay: float, callback: Any) -> None:
        self.due = self.loop.time() + delay
        self.on_due = callback

    def _disarm(self) -> None:
        self.due = 0.0

    def check_due(self, now: float) -> None:
        if self.due and now >= self.due:
            self.due = 0.0
            self.on_due()

    def _header_timeout(self) -> None:
        if self.parsing is not None or self._url:
            self._reject(408, "request headers not received in time")
        else:
            self.close()

    def _idle_timeout(self) -> None:
        if not self.pipeline:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.transport.abort()

    def shutdown(self) -> None:
        """Node going down: close when idle, else after the response in progress."""
        self.closing = True
        if not self.pipeline:
            self.close()

    # -- bytes in ------------------------------------------------------------------------
    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            head = self.pipeline[-1] if self.pipeline else None
            upgrade = next((v for k, v in head.headers if k == b"upgrade"), b"") if head is not None else b""
            if head is not None and len(self.pipeline) == 1 and upgrade.lower() == b"websocket":
                self._disarm()
                self.pipeline.clear()
                self.closed = True  # this protocol is done; the WebSocket session owns the transport
                self.gateway.connections.discard(self)
                self.gateway.upgrade(self, head)
                return
            # Other upgrades (h2c) are not served: answer the request as plain HTTP and
            # close after it, since the bytes that follow are not HTTP/1.1.
            if head is not None:
                head.close_after = True
            self._pause(True)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _HeadersTooLarge) or self._header_bytes > self.limits.max_header_bytes:
                self._reject(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")
            else:
                self._reject(400, f"malformed request: {exc}")
        except httptools.HttpParserError as exc:
            if self._header_bytes > self.limits.max_header_bytes:
                self._reject(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")
            else:
                self._reject(400, f"malformed request: {exc}")

    def _reject(self, status: int, detail: str) -> None:
        """Answer a protocol-level error directly and close: the stream is no longer framed.

        If a request on this connection is still being answered, its response cannot be
        followed by ours in order, so the connection is aborted instead."""
        self._disarm()
        if self.closed:
            return
        self.gateway.count_error(status)
        if any(not e.response_complete for e in self.pipeline):
            self.abort()
            return
        body = json.dumps({"error": HTTPStatus(status).phrase.lower(), "detail": detail, "status": status}).encode()
        self.transport.write(status_line(status) + b"content-type: application/json\r\ncontent-length: %d\r\n"
                             b"connection: close\r\n\r\n%b" % (len(body), body))
        self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._host = b""
        self._content_length = None
        self._chunked = self._expect = False
        self._header_bytes = 0
        if not self.pipeline:
            self._arm(self.limits.header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > self.limits.max_header_bytes:
            raise _HeadersTooLarge()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise _HeadersTooLarge()
        name = name.lower()
        # One pass: pick out what the gateway itself needs while the headers go by.
        if name == b"host":
            self._host = value
        elif name == b"content-length":
            self._content_length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True
        elif name == b"expect" and value.lower() == b"100-continue":
            self._expect = True
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        parsed = httptools.parse_url(self._url)
        raw_path = parsed.path or b"/"
        exchange = Exchange(
            self, self.parser.get_method().decode("ascii"), raw_path, parsed.query or b"", self._headers,
            self.parser.get_http_version(), self.parser.should_keep_alive(), self._content_length, self._chunked,
            self.loop.time(),
        )
        exchange.host = self._host.decode("latin-1")
        exchange.expect_continue = self._expect
        exchange.header_bytes = self._header_bytes
        self.parsing = exchange
        self.pipeline.append(exchange)
        if len(self.pipeline) == 1:
            self._disarm()
            self._begin(exchange)
        else:
            self._pause(True)

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.response_complete and exchange.status == 413:
            return
        limit = exchange.service.config.max_body if exchange.service is not None else None
        if limit is not None and exchange.body_received + len(body) > limit:
            exchange.fail(413, "payload too large", f"request body exceeds this service's max_body of {limit} bytes")
            self.gateway.client_gone(exchange)
            return
        exchange.feed_body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        if exchange is not None:
            exchange.end_body()

    # -- requests ---------------------------------------------------------------------
    def _begin(self, exchange: Exchange) -> None:
        path = exchange.raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.gateway.submit(exchange, exchange.host, path)

    def response_done(self, exchange: Exchange) -> None:
        self.gateway.access(exchange)
        if self.pipeline and self.pipeline[0] is exchange:
            self.pipeline.popleft()
        if exchange.close_after or self.closing:
            self.close()
            return
        if self.pipeline:
            self._begin(self.pipeline[0])
            if len(self.pipeline) == 1 and self.parsing is None:
                self._pause(False)
        else:
            self._pause(False)
            self._arm(self.limits.keepalive_timeout, self._idle_timeout)

    def body_flow(self, ok: bool) -> None:
        self.body_paused = not ok
        self._pause(self.body_paused or len(self.pipeline) > 1)

    def _pause(self, pause: bool) -> None:
        if self.closed or pause == self.reading_paused:
            return
        self.reading_paused = pause
        if pause:
            self.transport.pause_reading()
        else:
            self.transport.resume_reading()

    # -- bytes out -------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.pipeline:
            self.pipeline[0].writable()
