"""L1 — the gateway's HTTP/1.1 server: it owns every client connection and never runs user code.

Heads are parsed by llhttp (httptools); the connection itself cuts the stream into heads
and bodies (``_frame``) and decodes chunked bodies (``gateway.chunked``), so it always
knows where a request ends. A connection handles its requests in order: a pipelined
request is parsed and held (reading pauses) until the one before it has answered, so
responses never interleave. Limits, so that no input can hurt the node:
- request line + headers over ``max_header_bytes`` -> 431; a target over ``max_target`` -> 414;
- headers not complete within ``header_timeout`` (slowloris) -> 408; a request body with
  no byte for the service's ``body_timeout`` -> 408;
- an idle keep-alive connection is closed after ``keepalive_timeout``;
- beyond ``max_connections`` (HTTP and WebSocket together) a new connection gets 503;
- a body over the service's ``max_body`` -> 413;
- a malformed request -> 400, and what two components could read differently is malformed
  here: a Transfer-Encoding other than one ``chunked`` (or any in HTTP/1.0), a missing or
  second Host in HTTP/1.1, a second Content-Type or Content-Length, a framing or routing
  trailer, a header name with ``_`` (it collides with ``-`` in a WSGI environ), a version
  other than 1.0/1.1.
An error is answered after the responses of the requests before it, then the connection
closes. After a request that ends the connection (``Connection: close``, HTTP/1.0) later
bytes are ignored; a FIN that comes with a request is a half-close and the request is
answered (``eof_received``).

The connection knows the gateway that owns it only as ``ConnectionOwner`` (routing, the
WebSocket hand-off, the connection count, error counts) and time only as an injected
``clock``, so it can be driven with an in-memory transport and a fake clock.
"""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections import deque
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Callable, Collection, Protocol

import httptools

from anycore.gateway import requestid
from anycore.gateway.chunked import ChunkError, ChunkedDecoder
from anycore.gateway.exchange import Exchange, status_line
from anycore.gateway.proxy import ProxyTrust
from anycore.gateway.tls import TlsFiles
from anycore.stats import RequestStats


@dataclass(frozen=True)
class Limits:
    max_header_bytes: int = 64 * 1024
    max_target: int = 8 * 1024  # request target (path + query) over this -> 414
    header_timeout: float = 10.0
    keepalive_timeout: float = 5.0
    max_connections: int = 10000
    ws_ping_interval: float = 20.0  # WebSockets: idle this long -> ping; no answer as long again -> close 1011
    ws_stall_timeout: float = 20.0  # WebSockets: a client that reads nothing this long while the app sends -> 1008
    proxy: ProxyTrust | None = None  # --proxy-headers: whose X-Forwarded-For/-Proto count (gateway/proxy.py)
    tls: TlsFiles | None = None  # --tls-cert/--tls-key (the native gateway only, gateway/tls.py)


class ConnectionOwner(Protocol):
    """What a connection asks of the gateway that owns it (``gateway.server.Gateway``)."""

    limits: Limits
    stats: RequestStats  # refusals decided here (a body past max_body) are counted in it
    connections: set[Any]  # open HTTP connections: a connection adds and removes itself
    websockets: Collection[Any]  # counted against max_connections too
    node_header: bytes

    def submit(self, exchange: Exchange, host: str, path: str) -> None: ...

    def upgrade(self, conn: "HttpConnection", exchange: Exchange) -> None: ...

    def client_gone(self, exchange: Exchange) -> None: ...

    def count_error(self, status: int) -> None: ...

    def access(self, exchange: Exchange) -> None: ...


class _Refuse(Exception):
    """Raised in a parser callback: answer ``status`` (and close) instead of going on."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


_VERSIONS = frozenset({"1.0", "1.1"})
# Header names seen, lowercased -> 1 if the gateway reads it, 0 if not: one dict lookup per
# header instead of a scan for "_" and a set lookup (bytes scans cost more than the lookup).
_NAMES: dict[bytes, int] = dict.fromkeys(
    (b"host", b"content-length", b"transfer-encoding", b"content-type", b"expect", b"upgrade", b"connection",
     b"x-request-id", b"traceparent"), 1)
_NAMES_MAX = 4096  # past this, names are checked every time instead of remembered


def _classify(name: bytes) -> int:
    if name.find(b"_") >= 0:
        raise _Refuse(400, f"header name {name.decode('latin-1')!r} contains '_': it would collide with "
                           "the '-' spelling in a WSGI environ; use '-'")
    if len(_NAMES) < _NAMES_MAX:
        _NAMES[name] = 0
    return 0

HALF_CLOSE_WINDOW = 0.01  # seconds (uvloop's clock ticks in milliseconds)


class HttpConnection(asyncio.Protocol):
    def __init__(self, gateway: ConnectionOwner, clock: Callable[[], float] | None = None) -> None:
        self.gateway = gateway
        self.limits = gateway.limits
        self.clock = clock if clock is not None else asyncio.get_running_loop().time
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.client: tuple[str, int] | None = None
        self.scheme = "http"  # "https" on a TLS listener (--tls-cert)
        # Set on an adopted connection whose head stands for another protocol's request (an
        # HTTP/2 WebSocket stream, "2"): the exchange's http_version, for its scope and log line.
        self.stands_for = ""
        self.server: tuple[str, int] | None = None
        self.pipeline: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.closed = False
        self.closing = False  # finish the current response, then close (node shutdown)
        self.writing_paused = False
        self.reading_paused = False
        self.body_paused = False
        self.input_done = False  # the last request ended the connection (or was refused): later bytes are ignored
        self.read_eof = False  # the client half-closed: answer what it sent, then close
        self.read_at = 0.0
        self.pending_error: tuple[int, str, bytes] | None = None  # a refusal to send after earlier responses
        # One pending timeout per connection (header read, body read or keep-alive idle),
        # checked by the gateway's sweep: a float per request instead of a timer object.
        self.due = 0.0
        self.on_due: Any = None
        self._timing_body = False  # ``due`` is the body timeout (re-armed at each body byte)
        # Framing: llhttp parses each head; a body is fed to it by Content-Length, or
        # decoded here when chunked (see gateway.chunked).
        self._tail = b""  # the last bytes of a partial head (a CRLFCRLF may straddle reads)
        self._body_left = 0
        self._chunks: ChunkedDecoder | None = None
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._host: bytes | None = None
        self._content_length: int | None = None
        self._chunked = self._expect = self._upgrade = self._content_type = False
        self._connection = b""
        self._header_bytes = 0
        self._max_target = self.limits.max_target
        self._rid: bytes | None = None  # the client's x-request-id, if valid (gateway.requestid)
        self._bad_trace = False  # an invalid traceparent was dropped: drop its tracestate too

    # -- connection lifecycle -------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.client = (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else None
        self.scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
        self.server = (str(sock[0]), int(sock[1])) if isinstance(sock, tuple) else None
        if len(self.gateway.connections) + len(self.gateway.websockets) >= self.limits.max_connections:
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

    def eof_received(self) -> bool | None:
        """The client sent FIN. TCP cannot tell a half-close ("that was my request, I wait
        for the answer": ``nc -N``, some proxies and health checkers) from a client that
        left; a FIN that comes with the request (within ``HALF_CLOSE_WINDOW`` of its last
        byte) is read as a half-close: the requests it sent whole are answered, then the
        connection closes. A later FIN is a client that left: its request gets
        ``http.disconnect`` / is taken out of the queue, as before."""
        if self.scheme == "https":
            return None  # TLS has no half-close (asyncio's ssl transport closes whatever this returns)
        if self.parsing is None and self.pipeline and self.clock() - self.read_at <= HALF_CLOSE_WINDOW:
            self.read_eof = True
            return True
        return None  # close now; connection_lost cancels what was in flight

    def _arm(self, delay: float, callback: Any) -> None:
        self.due = self.clock() + delay
        self.on_due = callback
        self._timing_body = False

    def _arm_body(self, delay: float) -> None:
        self._arm(delay, self._body_timeout)
        self._timing_body = True

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

    def _body_timeout(self) -> None:
        exchange = self.parsing
        if exchange is None or self.closed:
            return
        if self.reading_paused:  # waiting on the worker (or the pipeline), not on the client
            self._arm_body(exchange.body_timeout)
            return
        self._reject(408, f"no request body bytes for {exchange.body_timeout:g}s (body_timeout)")

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
        if self.closed or self.input_done:
            return
        try:
            if self._chunks is None and not self._body_left and not self._tail and data.find(b"\r\n\r\n") == len(data) - 4:
                self.parser.feed_data(data)  # the usual read: exactly one head
            else:
                self._frame(data)
        except httptools.HttpParserUpgrade:
            self._upgraded()
        except httptools.HttpParserCallbackError as exc:
            refuse = exc.__context__
            if isinstance(refuse, _Refuse):
                self._reject(refuse.status, refuse.detail)
            elif self._header_bytes > self.limits.max_header_bytes:
                self._reject(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")
            else:
                self._reject(400, f"malformed request: {exc}")
        except httptools.HttpParserError as exc:
            if self._header_bytes > self.limits.max_header_bytes:
                self._reject(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")
            else:
                self._reject(400, f"malformed request: {exc}")
        except ChunkError as exc:
            self._reject(400, f"malformed chunked body: {exc}")

    def _frame(self, data: bytes) -> None:
        """Cut the stream into heads and bodies; stop at the end of a connection's last request."""
        while data and not self.input_done and not self.closed:
            if self._chunks is not None:
                decoder = self._chunks
                for piece in decoder.feed(data):
                    self.on_body(piece)
                if not decoder.done:
                    return
                data, self._chunks = decoder.rest, None
                self.parser = httptools.HttpRequestParser(self)  # llhttp still thinks it is in that body
                self.on_message_complete()
            elif self._body_left:
                if len(data) > self._body_left:
                    body, data = data[:self._body_left], data[self._body_left:]
                else:
                    body, data = data, b""
                self._body_left -= len(body)
                self.parser.feed_data(body)  # on_body, then on_message_complete at the end
            else:
                end = data.find(b"\r\n\r\n")
                if end >= 0:
                    end += 4
                elif self._tail and (straddle := (self._tail + data[:3]).find(b"\r\n\r\n")) >= 0:
                    end = straddle + 4 - len(self._tail)
                else:
                    self._tail = (self._tail + data)[-3:]
                    self.parser.feed_data(data)  # a partial head
                    return
                self._tail = b""
                if end < len(data):
                    head, data = data[:end], data[end:]
                else:
                    head, data = data, b""
                self.parser.feed_data(head)  # on_headers_complete sets up the body, if any

    def _upgraded(self) -> None:
        head = self.pipeline[-1] if self.pipeline else None
        upgrade = next((v for k, v in head.headers if k == b"upgrade"), b"") if head is not None else b""
        if head is not None and len(self.pipeline) == 1 and upgrade.lower() == b"websocket":
            self._disarm()
            self.pipeline.clear()
            self.closed = True  # this protocol is done; the WebSocket session owns the transport
            self.gateway.connections.discard(self)
            self.gateway.upgrade(self, head)
            return
        # Other upgrades (h2c) are not served: answer the request as plain HTTP and close
        # after it, since the bytes that follow are not HTTP/1.1.
        self.input_done = True
        if head is not None:
            head.close_after = True
            if head is self.pipeline[0] and not head.admitted:
                self._begin(head)

    def _reject(self, status: int, detail: str) -> None:
        """Refuse the request being parsed (the stream is no longer framed): answer
        ``status`` after the responses of the requests before it, then close. If that
        request's own response already began, the connection can only be aborted."""
        self._disarm()
        self.input_done = True
        if self.closed:
            return
        bad, self.parsing = self.parsing, None
        # Its id: the exchange's, or the client's if its headers got that far, or a new one.
        rid = bad.rid if bad is not None and bad.rid else self._rid or requestid.generate()
        if bad is not None and bad in self.pipeline:
            if bad.response_started and not bad.response_complete:
                self.gateway.count_error(status)
                self.abort()
                return
            self.pipeline.remove(bad)
            if bad.admitted and not bad.response_complete:
                bad.drop()  # the worker's answer, if any, is not written
                self.gateway.client_gone(bad)
        self.gateway.count_error(status)
        if self.pipeline:
            self.pending_error = (status, detail, rid)
            return
        self._write_error(status, detail, rid)

    def _write_error(self, status: int, detail: str, rid: bytes) -> None:
        body = json.dumps({"error": HTTPStatus(status).phrase.lower(), "detail": detail, "status": status}).encode()
        self.transport.write(status_line(status) + b"content-type: application/json\r\ncontent-length: %d\r\n"
                             b"x-request-id: %b\r\nconnection: close\r\n\r\n%b" % (len(body), rid, body))
        self.close()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._host = None
        self._content_length = None
        self._chunked = self._expect = self._upgrade = self._content_type = False
        self._connection = b""
        self._header_bytes = 0
        self._rid = None
        self._bad_trace = False
        if not self.pipeline:
            self._arm(self.limits.header_timeout, self._header_timeout)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if len(self._url) > self._max_target:
            raise _Refuse(414, f"request target exceeds {self.limits.max_target} bytes")
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refuse(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.limits.max_header_bytes:
            raise _Refuse(431, f"request line and headers exceed {self.limits.max_header_bytes} bytes")
        name = name.lower()
        # One pass: pick out what the gateway itself needs while the headers go by, and
        # refuse what two components could read differently (RFC 9112 §3.2, §6.1).
        kind = _NAMES.get(name)
        if kind is None:
            kind = _classify(name)
        if kind and self._watch(name, value):
            return  # not passed on as sent (the request id, an invalid traceparent)
        self._headers.append((name, value))

    def _watch(self, name: bytes, value: bytes) -> bool:
        """Take note of a header the gateway reads; True: leave it out of the scope's headers."""
        if name == b"host":
            if self._host is not None:
                raise _Refuse(400, "more than one Host header")
            self._host = value
        elif name == b"content-length":
            self._content_length = int(value)
        elif name == b"transfer-encoding":
            if self._chunked or value.strip().lower() != b"chunked":
                raise _Refuse(400, f"unsupported Transfer-Encoding {value[:40].decode('latin-1')!r}: "
                                   "only a single 'chunked' is accepted")
            self._chunked = True
        elif name == b"content-type":
            if self._content_type:
                raise _Refuse(400, "more than one Content-Type header")
            self._content_type = True
        elif name == b"expect":
            self._expect = value.lower() == b"100-continue"
        elif name == b"upgrade":
            self._upgrade = True
        elif name == b"connection":
            self._connection = value.lower()
        elif name == b"x-request-id":  # one, the first valid, goes on (added in on_headers_complete)
            if self._rid is None:
                self._rid = requestid.accept(value)
            return True
        elif name == b"traceparent" and not requestid.valid_traceparent(value):
            self._bad_trace = True
            return True
        return False

    def on_headers_complete(self) -> None:
        version = self.parser.get_http_version()
        if version not in _VERSIONS:
            raise _Refuse(400, f"HTTP/{version} is not served here; use HTTP/1.1")
        if self._host is None and version == "1.1":
            raise _Refuse(400, "an HTTP/1.1 request needs a Host header")
        if self._chunked and version == "1.0":
            raise _Refuse(400, "Transfer-Encoding is not allowed in HTTP/1.0")
        if self._url == b"*" and self.parser.get_method() != b"OPTIONS":
            raise _Refuse(400, "the asterisk-form target '*' is only for OPTIONS")
        parsed = httptools.parse_url(self._url)
        raw_path = parsed.path or b"/"
        rid = self._rid or requestid.generate()
        if self._bad_trace:
            self._headers = [h for h in self._headers if h[0] != b"tracestate"]
        self._headers.append((requestid.HEADER, rid))
        exchange = Exchange(
            self, self.parser.get_method().decode("ascii"), raw_path, parsed.query or b"", self._headers,
            version, self.parser.should_keep_alive(), self._content_length, self._chunked,
            self.clock(),
        )
        exchange.rid = rid
        if self.stands_for:
            exchange.http_version = self.stands_for
        if self.limits.proxy is not None:
            exchange.scheme, exchange.client = self.limits.proxy.resolve(self.scheme, self.client, self._headers)
        else:
            exchange.scheme = self.scheme
        exchange.host = (self._host or b"").decode("latin-1")
        exchange.expect_continue = self._expect
        exchange.header_bytes = self._header_bytes
        if self._chunked:
            self._chunks = ChunkedDecoder(self.limits.max_header_bytes)
        elif self._content_length:
            self._body_left = self._content_length
        self.parsing = exchange
        self.pipeline.append(exchange)
        if self._upgrade and self._connection.find(b"upgrade") >= 0:
            return  # begun (or handed to a WebSocket) when llhttp reports the upgrade
        if len(self.pipeline) == 1:
            self._disarm()
            self._begin(exchange)
        else:
            self._pause(True)

    def on_body(self, body: bytes) -> None:
        exchange = self.parsing
        if exchange is None or exchange.response_complete and exchange.status == 413:
            return
        limit = exchange.service.max_body if exchange.service is not None else None
        if limit is not None and exchange.body_received + len(body) > limit:
            self.gateway.stats.reject(exchange.service.name, "too_large")  # type: ignore[union-attr]
            if exchange is self.pipeline[0] and exchange.admitted:
                self.input_done = True
                exchange.fail(413, "payload too large", f"request body exceeds this service's max_body of {limit} bytes")
                self.gateway.client_gone(exchange)
            else:
                self._reject(413, f"request body exceeds this service's max_body of {limit} bytes")
            return
        if self._timing_body and self.due:
            self.due = self.clock() + exchange.body_timeout
        exchange.feed_body(body)

    def on_message_complete(self) -> None:
        exchange, self.parsing = self.parsing, None
        self.read_at = self.clock()  # a FIN this soon after is a half-close (eof_received)
        if exchange is not None:
            if self._timing_body:
                self._disarm()
            if exchange.close_after:
                self.input_done = True  # Connection: close or HTTP/1.0: whatever follows is not read
            exchange.end_body()

    # -- requests ---------------------------------------------------------------------
    def _begin(self, exchange: Exchange) -> None:
        """Route the request at the head of the pipeline. Its body may still be arriving:
        the service buffers a small one before placing it (``Exchange.feed_body``), and
        the body timeout runs until its last byte."""
        exchange.admit()
        path = exchange.raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.gateway.submit(exchange, exchange.host, path)
        if not exchange.body_done and not exchange.response_complete and exchange is self.parsing:
            self._arm_body(exchange.body_timeout)

    def response_done(self, exchange: Exchange) -> None:
        self.gateway.access(exchange)
        if self.pipeline and self.pipeline[0] is exchange:
            self.pipeline.popleft()
        if exchange.close_after or self.closing:
            self.close()
            return
        if self.pipeline:
            head = self.pipeline[0]
            self._begin(head)
            if len(self.pipeline) == 1:  # read on: the next request, or this one's body
                self.body_flow(head.buffered <= head.pause_at)
        elif self.pending_error is not None:
            self._write_error(*self.pending_error)
        elif self.read_eof:
            self.close()  # a half-closed client got every answer it asked for
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
    @property
    def node_header(self) -> bytes:
        return self.gateway.node_header

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.transport.write(data)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.pipeline:
            self.pipeline[0].writable()
