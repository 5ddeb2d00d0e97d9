"""L2 — the WebSocket host of a service: where a WebSocket goes, and what happens to it when
its worker drains or dies.

A WebSocket takes no request slot and is not in the router: it lives in its worker's
``sockets``. Plain (ASGI) WebSockets stay on their worker; when it drains they are closed
with 1012 at the end of the drain timeout (spread by ``drain_delay``), when it dies with
1011 — or 1012 if the node stopped it on purpose. ``anycore.Session`` connections are
placed and moved by ``node.sessions.SessionPlacer``: a draining worker's sessions move to
a live worker, a dead worker's sessions reopen elsewhere from their checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from anycore import wire
from anycore.config import ServiceConfig
from anycore.gateway.websocket import drain_delay
from anycore.node.sessions import SessionHost, SessionPlacer, SessionRoutes

if TYPE_CHECKING:
    from anycore.gateway.websocket import WebSocketSession


class SocketHost:
    def __init__(self, host: SessionHost, config: ServiceConfig) -> None:
        self.routes = SessionRoutes(config)
        self.sessions = SessionPlacer(host)

    def configure(self, config: ServiceConfig) -> None:
        self.routes = SessionRoutes(config)

    def open(self, session: "WebSocketSession", frame: wire.WsOpen) -> bool:
        """Place a WebSocket on the least-loaded accepting worker; False if there is none."""
        return self.sessions.open(session, self.routes.match(frame) or frame)

    def gone(self, session: "WebSocketSession") -> None:
        if session.worker is not None:
            session.worker.sockets.pop(session.id, None)
            self.sessions.gone(session, session.worker)

    def worker_draining(self, worker: Any, serving: bool, drain_timeout: float) -> None:
        """Its Sessions move to a live worker (while the service serves); its plain
        WebSockets close with 1012 at the end of the drain timeout."""
        if serving:
            self.sessions.evacuate(worker)
        for session in list(worker.sockets.values()):
            if not session.moving:
                session.close_later(drain_delay(drain_timeout), 1012)

    def worker_lost(self, worker: Any, serving: bool) -> None:
        """Its Sessions reopen elsewhere (while the service serves); the others close."""
        recover = []
        for session in list(worker.sockets.values()):
            if session.handler and serving and not session.closed:
                if not session.moving:
                    recover.append(session)
                else:
                    session.detach()  # already moving: its move falls back to the checkpoint
            else:
                if session.moving:
                    session.detach()  # its move ends now (abandoned), not after the snapshot timeout
                session.worker_gone(draining=worker.exit_reason.deliberate)
        self.sessions.recover(recover)
        worker.sockets.clear()
