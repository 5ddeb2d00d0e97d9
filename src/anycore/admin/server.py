"""L1 — the node's admin listener: a small HTTP/1.1 server for ``/metrics`` and the dashboard.

It is apart from the gateway on purpose: its own socket (``anycore up --admin HOST:PORT``,
default 127.0.0.1:9790), its own few connections, no routes of services, nothing on the
request path of the data plane. A scrape or a dashboard never competes with the gateway
for a connection slot, and a flood of client traffic never hides the metrics.

What it serves is a flat ``Routes`` table (``admin.routes``): exact path -> handler. It
parses only what such pages need: ``GET`` and ``HEAD`` (anything else: 405 naming the
allowed ones), no request body (400), a request head of at most ``MAX_HEAD`` bytes (431),
received within ``HEADER_TIMEOUT`` seconds (408, then close) — the same timeout closes an
idle keep-alive connection. A path not in the table gets 404 listing the ones that are.
At most ``MAX_CONNECTIONS`` connections at once; the next gets 503 and is closed.

Access. Bound to a loopback address, anyone on this machine may read it (as the node's
``ps`` over the loopback NATS needs the token, but metrics are what a local Prometheus
agent scrapes; they carry no secrets and no control). Bound anywhere else, every request
needs ``Authorization: Bearer <token>`` with the node's control token (the one in
``$ANYCORE_HOME/token``, or the ``--token`` given for a remote NATS): else 401 with a body
saying so. The comparison is constant-time.

A handler's body is bytes (sent with a Content-Length) or an async iterator of chunks (a
stream: sent chunked, each chunk as it comes; the iterator is closed when the client
leaves, which is noticed at once as EOF on the socket, not at the next write).

The parsing and the answers are pure functions (``parse_head``, ``check_access``,
``encode_head``) tested without sockets; ``AdminServer`` is the thin asyncio shell around
them. Its connections are owned by a ``TaskGroup``, cancelled (bounded) by ``stop``.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import ipaddress
import urllib.parse
from typing import Any, AsyncIterator

from anycore.admin.routes import AdminRequest, AdminResponse, Routes
from anycore.log import NodeLog
from anycore.tasks import TaskGroup

DEFAULT = ("127.0.0.1", 9790)
MAX_HEAD = 16 * 1024
HEADER_TIMEOUT = 10.0
MAX_CONNECTIONS = 64
METHODS = ("GET", "HEAD")


class Refused(Exception):
    """A request answered by the listener itself (bad head, no token...), never a handler."""

    def __init__(self, status: int, reason: str, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``: the addresses that need no token."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything, so it needs the token


def parse_head(head: bytes) -> tuple[AdminRequest, bool]:
    """The request in ``head`` (request line and headers, up to the blank line) and whether
    the connection may stay open after the answer. Raises ``Refused`` for anything else."""
    try:
        text = head.decode("latin-1")
        line, *fields = text.rstrip("\r\n").split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        raise Refused(400, "malformed request line; send e.g. `GET /metrics HTTP/1.1`") from None
    if version not in ("HTTP/1.1", "HTTP/1.0"):
        raise Refused(400, f"{version!r} is not served here; use HTTP/1.1")
    headers: dict[str, str] = {}
    for field in fields:
        name, sep, value = field.partition(":")
        if not sep or not name or name != name.strip():
            raise Refused(400, f"malformed header line {field[:60]!r}")
        headers[name.lower()] = value.strip()
    if method not in METHODS:
        raise Refused(405, f"method {method} is not allowed here; the admin listener serves {' and '.join(METHODS)}",
                      [("allow", ", ".join(METHODS))])
    if headers.get("content-length", "0") not in ("", "0") or "transfer-encoding" in headers:
        raise Refused(400, "the admin listener takes no request body")
    if not target.startswith("/"):
        raise Refused(400, "the request target must be a path (origin-form), e.g. /metrics")
    parts = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(parts.query))
    connection = headers.get("connection", "").lower()
    keep = "close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection
    return AdminRequest(method, urllib.parse.unquote(parts.path), query, headers), keep


def check_access(request: AdminRequest, token: str | None) -> None:
    """Refused(401) unless the request carries ``token`` as a bearer token (None: no token needed)."""
    if token is None:
        return
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), token.encode()):
        what = "a wrong token" if given else "no Authorization header"
        raise Refused(401, f"this admin listener is not on loopback: every request needs `Authorization: Bearer "
                      f"<the node's token>` (the token in $ANYCORE_HOME/token, or the node's --token); it got {what}",
                      [("www-authenticate", 'Bearer realm="anycore"')])


def encode_head(status: int, content_type: str, headers: list[tuple[str, str]], length: int | None, keep: bool) -> bytes:
    """Status line and headers; ``length`` None: a chunked stream (it ends the connection after)."""
    try:
        phrase = http.HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    lines = [f"HTTP/1.1 {status} {phrase}", f"content-type: {content_type}", "cache-control: no-store"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    lines.append("connection: keep-alive" if keep else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refusal(exc: Refused) -> AdminResponse:
    return AdminResponse(exc.status, body=(exc.reason + "\n").encode(), headers=exc.headers)


def not_found(path: str, routes: Routes) -> AdminResponse:
    listed = ", ".join(sorted(routes)) or "none"
    return AdminResponse(404, body=f"nothing is served at {path} on the admin listener (served: {listed})\n".encode())


class AdminServer:
    def __init__(self, routes: Routes, log: NodeLog, token: str | None, header_timeout: float = HEADER_TIMEOUT) -> None:
        self.routes = routes
        self.header_timeout = header_timeout
        self.log = log
        self.token = token  # None: loopback, no token needed (see the module doc)
        self.server: asyncio.AbstractServer | None = None
        self.host = ""
        self.port = 0
        self.tasks = TaskGroup("admin", on_error=lambda name, exc: log.event("admin.task_failed", task=name, error=repr(exc)[:300]))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (OSError if it cannot: the caller says so in one line)."""
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD, reuse_address=True)
        sockname = self.server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]

    async def stop(self, timeout: float = 2.0) -> None:
        if self.server is not None:
            self.server.close()
        await self.tasks.close(timeout)

    def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.tasks) >= MAX_CONNECTIONS or self.tasks.closed:
            body = f"the admin listener has {MAX_CONNECTIONS} connections open; retry\n".encode()
            writer.write(encode_head(503, "text/plain; charset=utf-8", [("retry-after", "1")], len(body), False) + body)
            writer.close()
            return
        self.tasks.spawn(self._connection(reader, writer), "connection")

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            keep = True
            while keep:
                try:
                    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.header_timeout)
                except asyncio.IncompleteReadError as exc:
                    if exc.partial:  # a timed-out or cut head gets its answer; a clean EOF none
                        await self._write(writer, refusal(Refused(400, "incomplete request head")), False, "GET")
                    return
                except asyncio.LimitOverrunError:
                    await self._write(writer, refusal(Refused(431, f"request head over {MAX_HEAD} bytes")), False, "GET")
                    return
                except asyncio.TimeoutError:
                    if reader._buffer:  # type: ignore[attr-defined]  # a head begun, not finished
                        await self._write(writer, refusal(Refused(408, "request head not received in time")), False, "GET")
                    return
                method = "GET"
                try:
                    request, keep = parse_head(head)
                    method = request.method
                    check_access(request, self.token)
                    response = await self._handle(request)
                except Refused as exc:
                    response, keep = refusal(exc), exc.status not in (400, 431)
                if not isinstance(response.body, bytes):
                    await self._stream(reader, writer, response, method)
                    return
                await self._write(writer, response, keep, method)
        except (ConnectionError, OSError):
            pass  # the client went away
        finally:
            writer.close()

    async def _handle(self, request: AdminRequest) -> AdminResponse:
        handler = self.routes.get(request.path)
        if handler is None:
            return not_found(request.path, self.routes)
        try:
            return await handler(request)
        except Exception as exc:  # a bug in a page: a 500 with a line, never a dead listener
            self.log.event("admin.handler_failed", path=request.path, error=repr(exc)[:300])
            return AdminResponse(500, body=f"internal error serving {request.path}: {exc!r}\n".encode())

    async def _write(self, writer: asyncio.StreamWriter, response: AdminResponse, keep: bool, method: str) -> None:
        body = response.body if isinstance(response.body, bytes) else b""
        head = encode_head(response.status, response.content_type, response.headers, len(body), keep)
        writer.write(head if method == "HEAD" else head + body)
        await writer.drain()

    async def _stream(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, response: AdminResponse,
                      method: str) -> None:
        """A streamed body, chunked, until the iterator ends or the client leaves (EOF)."""
        chunks: AsyncIterator[bytes] = response.body  # type: ignore[assignment]
        try:
            writer.write(encode_head(response.status, response.content_type, response.headers, None, False))
            await writer.drain()
            if method == "HEAD":
                return
            gone = asyncio.ensure_future(reader.read(1))  # a client sends nothing more: any read end is EOF
            try:
                while True:
                    following = asyncio.ensure_future(chunks.__anext__())
                    done, _ = await asyncio.wait({following, gone}, return_when=asyncio.FIRST_COMPLETED)
                    if following not in done:
                        following.cancel()  # let it finish cancelling before the iterator is closed
                        await asyncio.wait({following})
                        return
                    try:
                        chunk = following.result()
                    except StopAsyncIteration:
                        writer.write(b"0\r\n\r\n")
                        await writer.drain()
                        return
                    if chunk:
                        writer.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
                        await writer.drain()
            finally:
                gone.cancel()
        finally:
            close: Any = getattr(chunks, "aclose", None)
            if close is not None:
                try:
                    await close()
                except Exception:
                    pass
