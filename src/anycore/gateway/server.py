"""L1 — the gateway: the listening socket, the route table, and the hand-off to services.

Routes map ``(host, path prefix)`` to a service; a host-specific route beats a host-less
one, then the longest prefix wins. The matched prefix becomes the ASGI ``root_path``
(``path`` keeps the full path, as the ASGI spec asks), so an app mounted under ``/api``
sees its own routes.

A service is a ``ports.RequestSink`` here: the gateway never imports the node or the
supervisor, so another data plane could sit in front of the same services. The gateway
writes ``100 Continue`` itself, once, right after the service took a request that asked
for it without answering it (a refused request gets its answer, never a 100 first).

Every finished exchange passes ``access`` once: that is where the node's ``RequestStats``
(handed in, ``anycore.stats``) records it — one call, plain dict and list updates; the
metrics are built from those counts at scrape time, never here. Durations are on the
loop's clock, like the exchange's own times (1 ms resolution under uvloop).

The gateway owns one background task, the sweeper (timeouts of every connection, the
WebSockets' keepalive), in its ``TaskGroup``: started by ``start``, cancelled by ``stop``.
Under the native gateway the node runs one with no listener (``start_unbound``): its
connections are the ones ``anycore-gateway`` hands over (``adopt``, ``gateway.handoff``).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
import urllib.parse

from anycore.config import parse_route
from anycore.errors import AnycoreError, ConfigError
from anycore.gateway.exchange import Exchange
from anycore.gateway.handoff import AdoptedConnection
from anycore.gateway.http import HttpConnection, Limits
from anycore.gateway.websocket import WebSocketSession
from anycore.log import ACCESS_FORMATS, LogFormat, NodeLog, combined_line, parse_format
from anycore.ports import RequestSink
from anycore.stats import RequestStats
from anycore.tasks import TaskGroup

SWEEP = 0.1
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class Gateway:
    def __init__(self, log: NodeLog, limits: Limits, access_log: bool | str | None = None,
                 stats: RequestStats | None = None) -> None:
        self.log = log
        self.stats = stats if stats is not None else RequestStats()
        self._time = time.monotonic  # the loop's clock once started (exchanges are timed on it)
        self.limits = limits
        # The access log's format, None: off (True, from older callers: logfmt).
        self.access_log: LogFormat | None = (
            None if not access_log else LogFormat.LOGFMT if access_log is True
            else parse_format(access_log, ACCESS_FORMATS, "--access-log"))
        self.connections: set[HttpConnection] = set()
        self.websockets: set[WebSocketSession] = set()
        self.routes: list[tuple[str | None, str, RequestSink]] = []
        self.server: asyncio.AbstractServer | None = None
        self.tls_context: ssl.SSLContext | None = None
        self.host = ""
        self.port = 0
        self.errors: dict[int, int] = {}
        self.node_header = b""  # "anycore-node: <node id>", in every response this node's workers ran
        self.tasks = TaskGroup("gateway", on_error=self._task_failed)  # the sweeper; closed by stop()
        # True from the listen until the node's initial services are live: a request that
        # matches no route then gets 503 + Retry-After (the route may be coming), never 404.
        self.starting = True

    async def start(self, host: str, port: int) -> None:
        loop = asyncio.get_running_loop()
        self._time = loop.time
        tls = self.limits.tls  # --tls-cert: Python's ssl, HTTP/1.1 (gateway/tls.py)
        self.tls_context = tls.server_context() if tls is not None else None
        self.server = await loop.create_server(lambda: HttpConnection(self), host, port, backlog=2048, reuse_address=True,
                                               ssl=self.tls_context,
                                               ssl_handshake_timeout=self.limits.header_timeout if tls is not None else None)
        sockname = self.server.sockets[0].getsockname()
        self.host, self.port = sockname[0], sockname[1]
        self.start_unbound()

    def start_unbound(self) -> None:
        """Run without a listener (``start`` calls it after binding): the sweeper only."""
        self._time = asyncio.get_running_loop().time
        self.tasks.spawn(self._sweep(), "sweeper")

    async def adopt(self, sock: socket.socket, buffered: bytes, client: tuple[str, int] | None,
                    server: tuple[str, int] | None, scheme: str = "http", http_version: str = "1.1") -> None:
        """Serve a client connection another data plane accepted, as if ours had: ``buffered``
        (its unconsumed bytes, from a request's head) first; ``scheme`` "https" when that
        plane holds its TLS session; ``http_version`` "2" when the head stands for an HTTP/2
        stream (the scope and the access line say so). The transport owns ``sock``."""
        await asyncio.get_running_loop().connect_accepted_socket(
            lambda: AdoptedConnection(self, buffered, client, server, scheme=scheme, http_version=http_version), sock=sock)

    def reload_tls(self) -> str:
        """SIGHUP: load the TLS files again; new connections get them, open ones keep theirs."""
        if self.limits.tls is None or self.tls_context is None:
            return "no --tls-cert: nothing to reload"
        try:
            self.limits.tls.reload(self.tls_context)
        except AnycoreError as exc:
            self.log.event("tls.reload_failed", error=str(exc))
            return str(exc)
        self.log.event("tls.reloaded", cert=self.limits.tls.cert)
        return "TLS certificate reloaded"

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.log.event("gateway.task_failed", task=name, error=f"{type(exc).__name__}: {exc}")

    async def _sweep(self) -> None:
        """Header and keep-alive timeouts of every connection, every SWEEP seconds; the
        WebSockets' keepalive pings (their own timeout, not the HTTP ones) every second."""
        loop = asyncio.get_running_loop()
        rounds = 0
        while True:
            await asyncio.sleep(SWEEP)
            now = loop.time()
            for conn in list(self.connections):
                conn.check_due(now)
            rounds += 1
            if rounds % 10 == 0:
                for ws in list(self.websockets):
                    ws.keepalive(now, self.limits.ws_ping_interval)
                    ws.check_stall(now, self.limits.ws_stall_timeout)

    def set_node(self, node_id: str) -> None:
        self.node_header = b"anycore-node: " + node_id.encode() + b"\r\n"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.limits.tls else 'http'}://{host}:{self.port}"

    # -- routes ------------------------------------------------------------------------
    def check_routes(self, name: str, routes: list[str]) -> list[tuple[str | None, str]]:
        """Parse ``routes`` for service ``name``; ConfigError if another service holds one."""
        taken = {(h, p): s.name for h, p, s in self.routes}
        mine = [parse_route(r) for r in routes]
        for key in mine:
            if key in taken and taken[key] != name:
                host, prefix = key
                raise ConfigError(
                    f"route {host or ''}{prefix} of service {name!r} is already taken by {taken[key]!r} — "
                    "set distinct `routes` in anycore.toml"
                )
        return mine

    def add_service(self, service: RequestSink) -> None:
        mine = self.check_routes(service.name, service.routes)
        self.remove_service(service.name)
        self.routes += [(host, prefix, service) for host, prefix in mine]
        self.routes.sort(key=lambda r: (r[0] is not None, len(r[1])), reverse=True)

    def remove_service(self, name: str) -> None:
        self.routes = [r for r in self.routes if r[2].name != name]

    def route(self, host: str, path: str) -> tuple[RequestSink, str] | None:
        host = host.rsplit(":", 1)[0].lower() if not host.endswith("]") else host.lower()
        for route_host, prefix, service in self.routes:
            if route_host is not None and route_host != host:
                continue
            if prefix == "/" or path == prefix or path.startswith(prefix + "/"):
                return service, "" if prefix == "/" else prefix
        return None

    # -- hand-off -------------------------------------------------------------------------
    def submit(self, exchange: Exchange, host: str, path: str) -> None:
        found = self.route(host, path)
        if found is None:  # while the node starts, a miss is not a routing mistake
            self.stats.reject("", "starting" if self.starting else "no_route")
        if found is None and self.starting:
            exchange.fail(503, "starting", "the node is starting its services; retry", 1)
            return
        if found is None:
            exchange.fail(404, "not found", f"no service is routed at {host}{path} on this node — see `anycore ps`")
            return
        service, prefix = found
        exchange.root_path = prefix
        service.submit(exchange, path)
        if exchange.expect_continue and not exchange.response_started:
            exchange.conn.write(CONTINUE)  # the service took it: the client may send the body

    def upgrade(self, conn: HttpConnection, exchange: Exchange) -> None:
        """Hand an upgrade request's transport to a WebSocket session and open it on a worker."""
        path = exchange.raw_path.decode("latin-1")
        if "%" in path:
            path = urllib.parse.unquote(path)
        host = next((v for k, v in exchange.headers if k == b"host"), b"").decode("latin-1")
        target = exchange.raw_path + (b"?" + exchange.query if exchange.query else b"")
        handshake = b"".join([exchange.method.encode(), b" ", target, b" HTTP/1.1\r\n",
                              *(k + b": " + v + b"\r\n" for k, v in exchange.headers), b"\r\n"])
        session = WebSocketSession(conn.transport, exchange.client or conn.client, conn.server, self.websockets)
        session.scheme = "wss" if exchange.scheme == "https" else "ws"
        session.http_version = exchange.http_version
        if self.access_log is not None:
            session.ended = functools.partial(self._websocket_ended, exchange)
        if session.start(handshake) is None:
            return
        found = self.route(host, path)
        if found is None:
            session.reject(503 if self.starting else 404,
                           "the node is starting its services; retry\n" if self.starting else f"no service is routed at {host}{path}\n")
            return
        service, prefix = found
        service.open_websocket(session, session.open_frame(path, exchange.raw_path, exchange.query, exchange.headers, prefix))

    def client_gone(self, exchange: Exchange) -> None:
        if exchange.service is not None:
            exchange.service.client_gone(exchange)

    def count_error(self, status: int) -> None:
        self.errors[status] = self.errors.get(status, 0) + 1

    def access(self, exchange: Exchange) -> None:
        status = exchange.status
        if status >= 400:
            self.count_error(status)
        now = self._time()
        service = exchange.service
        dispatched = exchange.dispatched_at
        self.stats.record(service.name if service is not None else "", exchange.release, status, now - exchange.created,
                          dispatched - exchange.created if dispatched else None)
        if self.access_log is not None:
            self._access_line(exchange, now, service.name if service is not None else "")

    def _websocket_ended(self, exchange: Exchange, session: WebSocketSession) -> None:
        """A WebSocket's access line, written when its connection ends, as nginx does: its
        status is the handshake's (101, or the refusal's), ``ms`` the connection's life,
        ``queued_ms`` the wait for the app's accept, ``bytes`` what the client got after
        the answer's head. Not in the request stats: a connection's life is not a latency."""
        exchange.status, exchange.body_sent, exchange.release = session.status, session.sent, session.release
        exchange.dispatched_at = session.accepted_at
        self._access_line(exchange, self._time(), session.service.name if session.service is not None else "")

    def _access_line(self, exchange: Exchange, now: float, service: str) -> None:
        assert self.access_log is not None
        queued = (exchange.dispatched_at or now) - exchange.created
        client = exchange.conn.client[0] if exchange.conn.client else None
        fields: dict[str, object] = dict(
            method=exchange.method, path=exchange.raw_path.decode("latin-1"), status=exchange.status,
            ms=round((now - exchange.created) * 1000, 2), queued_ms=round(max(queued, 0.0) * 1000, 2),
            release=exchange.release or None, client=client, bytes=exchange.body_sent,
            node=exchange.node or None, request_id=exchange.request_id or None,
        )
        line = ""
        if self.access_log is LogFormat.COMBINED:
            line = self._combined(exchange, client, time.time() - (now - exchange.created))
        self.log.access(self.access_log, service, fields, line)

    @staticmethod
    def _combined(exchange: Exchange, client: str | None, received: float) -> str:
        referer = agent = None
        for name, value in exchange.headers:
            if name == b"referer" and referer is None:
                referer = value
            elif name == b"user-agent" and agent is None:
                agent = value
        target = exchange.raw_path + (b"?" + exchange.query if exchange.query else b"")
        request_line = b"%s %s HTTP/%s" % (exchange.method.encode("latin-1"), target, exchange.http_version.encode())
        return combined_line(client, received, request_line, exchange.status, exchange.body_sent, referer, agent)

    async def stop(self, timeout: float) -> None:
        """Stop accepting, let connections finish their current response, then cut the rest."""
        if self.server is not None:
            self.server.close()
        await self.tasks.close()
        for conn in list(self.connections):
            conn.shutdown()
        deadline = time.monotonic() + timeout
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            conn.abort()
