"""L1 — connections another data plane accepted and handed to the node.

Under ``--gateway native`` the node has no listener: ``anycore-gateway`` accepts every
connection and, on a request head asking for ``Upgrade: websocket``, stops reading and
passes the client's TCP socket to the node (``dataplane.Upgrade``). The node serves it
with the same ``HttpConnection`` as a connection its own listener accepted, so the
upgrade, the WebSocket and the Session code are exactly the Python gateway's. Only the
start differs:

- the bytes the other gateway read and did not consume (the upgrade request's head, and
  whatever the client sent after it) are fed before anything is read from the socket —
  from ``connection_made``, which runs before the transport's first read;
- ``client`` and ``server`` are the addresses the other gateway names: the socket's own
  peer and local address as it accepted them, never resolved from proxy headers — with
  ``--proxy-headers`` this connection resolves them itself, as any other;
- under TLS the other gateway keeps the session: the socket is one end of a socket pair
  it relays to the client, decrypted, and ``scheme`` says "https" (so the scope's "wss").

The head alone goes to the HTTP code; the bytes after it go to whatever protocol owns the
transport then (the WebSocket session, once upgraded), so a client that sent a frame
right behind its handshake loses nothing. A connection past ``max_connections`` is
refused with 503 as any other (WebSockets count toward it, here in the node).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from anycore.gateway.http import ConnectionOwner, HttpConnection

HEAD_END = b"\r\n\r\n"


class AdoptedConnection(HttpConnection):
    def __init__(self, gateway: ConnectionOwner, buffered: bytes, client: tuple[str, int] | None,
                 server: tuple[str, int] | None, clock: Callable[[], float] | None = None,
                 scheme: str = "http", http_version: str = "1.1") -> None:
        super().__init__(gateway, clock)
        self._buffered = buffered
        self._addresses = (client, server)
        self._scheme = scheme
        self.stands_for = http_version if http_version != "1.1" else ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.client, self.server = self._addresses
        self.scheme = self._scheme  # the other plane's TLS (it relays this socket), not ours
        buffered, self._buffered = self._buffered, b""
        if self.closed or not buffered:
            return  # refused (max_connections), or nothing read yet
        end = buffered.find(HEAD_END)
        head, rest = (buffered, b"") if end < 0 else (buffered[:end + len(HEAD_END)], buffered[end + len(HEAD_END):])
        self.data_received(head)
        if not rest or transport.is_closing():
            return
        owner: Any = transport.get_protocol()  # type: ignore[attr-defined]
        if owner is not self and not getattr(owner, "closed", False):
            owner.data_received(rest)  # the WebSocket session took over
        elif owner is self:
            self.data_received(rest)  # not an upgrade after all: more HTTP (or ignored once done)
