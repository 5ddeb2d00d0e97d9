"""L2 — the node's side of a WebSocket the native gateway hands over (``dataplane.Upgrade``)."""

from __future__ import annotations

import socket

from anycore import dataplane
from anycore.gateway.server import Gateway


class Handoffs:
    """The node's side of ``dataplane.Upgrade``: a WebSocket handshake's connection, handed
    over by the gateway with its socket, is served by the node's own Python HTTP code.

    ``gateway`` is a ``gateway.server.Gateway`` that never listens (``start_unbound``: its
    sweeper runs the header timeouts and the WebSockets' pings) and routes as the native
    gateway does (``NativeGateway`` mirrors every service's routes into it). An adopted
    connection is an ``AdoptedConnection`` (``gateway.handoff``): fed the gateway's
    ``buffered`` bytes first, with the ``client`` and ``server`` it names; then the upgrade,
    ``WebSocketSession``, ``SocketHost`` and Sessions are the Python gateway's code, untouched.

    Slots: a WebSocket takes no request slot under either data plane (``node.sockets``);
    it lives in its worker's ``sockets``, which the scaler counts as demand. The native
    gateway places HTTP by its own counts and is told nothing of them. ``max_connections``
    bounds each side: the gateway's HTTP connections there, the node's WebSockets here.
    """

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.adopted = 0  # connections taken over, since start

    def start(self) -> None:
        if not self.gateway.tasks.tasks:
            self.gateway.start_unbound()

    def adopt(self, message: dataplane.Upgrade, sock: socket.socket, starting: bool) -> None:
        """Take over ``sock`` (closed here if it cannot be served)."""
        if self.gateway.tasks.closed:
            sock.close()  # the node is stopping
            return
        self.gateway.starting = starting
        self.adopted += 1
        self.gateway.tasks.spawn(self._adopt(message, sock), "adopt")

    async def _adopt(self, message: dataplane.Upgrade, sock: socket.socket) -> None:
        client = (message.client[0], message.client[1]) if message.client else None
        server = (message.server[0], message.server[1]) if message.server else None
        try:
            await self.gateway.adopt(sock, message.buffered, client, server, message.scheme, message.http_version)
        except (OSError, ValueError) as exc:  # not a stream socket, or already closed by the peer
            sock.close()
            self.gateway.log.event("gateway.handoff_failed", service=message.service, error=f"{type(exc).__name__}: {exc}")

    async def stop(self, timeout: float) -> None:
        await self.gateway.stop(timeout)
