"""L1 — the node's cluster agent: heartbeats, the peer table, and cross-node dispatch (executor).

It owns, for one node: a heartbeat task (every ``HEARTBEAT_INTERVAL``: publish this node's
load, put it in the ``anycore_nodes`` KV bucket (``cluster/registry.py``), expire silent
peers, check the deadline safety net), the NATS subscriptions of the dispatch protocol
(see ``cluster/dispatch.py``) and the map of requests crossing nodes in either direction.
It sees the node through ``ports.NodeView`` (its id, log, NATS client, gateway URL, its
services as ``ports.ServiceView``, and its command queue) and never imports ``node/``;
every task it starts belongs to its ``TaskGroup`` and ends with ``close``.

Losing a peer (no heartbeat for ``PEER_EXPIRY`` s) or losing NATS (this node's connection
dropped) is handled the same way: each request this node sent to that peer goes through
the one crash rule (``router.crash.outcome``, with no blame: a lost node is not the
request's fault) — retried locally when it is safe (GET/HEAD/OPTIONS, nothing sent to the
client, no body forwarded, first attempt), otherwise answered 502 with a JSON body; each
request a lost origin sent here is cancelled. While NATS is away the node serves its own
traffic with what it has: the peer table is empty, so nothing spills over, and nothing
waits on NATS on the request path. Subscriptions come back with the reconnection.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Callable

import msgspec
from nats.errors import NoRespondersError

from anycore import wire
from anycore.cluster import dispatch
from anycore.cluster.dispatch import Claim, ClaimReply, Link, RemoteExchange, RemoteSlot
from anycore.cluster.follow import follow
from anycore.cluster.membership import HEARTBEAT_INTERVAL, Heartbeat, PeerEvent, PeerTable, ServiceLoad
from anycore.cluster.registry import heartbeat_decoder, heartbeat_encoder, open_nodes_bucket
from anycore.lifecycle import ServiceState
from anycore.ports import Deployments, NodeView, ServiceView
from anycore.router import crash
from anycore.tasks import TaskGroup

FOLLOW_EVERY = 3  # heartbeats between two checks of the desired state in KV (cluster/follow.py)
HEARTBEAT_SUBJECT = "anycore.heartbeat"
CLOSE_BOUND = 2.0  # seconds close() waits for the agent's tasks


def service_load(runtime: ServiceView) -> ServiceLoad:
    router = runtime.router
    accepting = [w for w in router.workers.values() if w.accepting]
    running = runtime.life.state is ServiceState.RUNNING and runtime.release is not None
    return ServiceLoad(release=runtime.release_id if running else "", workers=len(accepting),
                       slots=sum(w.slots for w in accepting), free=router.free if running else 0,
                       inflight=router.inflight, queued=len(router.queue), routes=list(getattr(runtime, "routes", ())))


class _Elsewhere:
    """What ``_claim`` needs of a service that does not run on this node."""

    server = None

    def __init__(self, name: str) -> None:
        self.name = name


class ClusterAgent:
    def __init__(self, node: NodeView, deployer: Deployments, follow: bool = False) -> None:
        self.node = node
        self.deployer = deployer
        self.me = node.node_id
        self.loop = asyncio.get_running_loop()
        self.table = PeerTable(self.me)
        self.seq = 0
        self.kv: Any = None
        self.sent: dict[int, Any] = {}  # origin side: exchange id -> request running on a peer
        self.claiming: dict[int, list[wire.Frame]] = {}  # origin side: claims awaiting their reply
        self.running: dict[tuple[str, int], RemoteExchange] = {}  # runner side: (origin, id) -> request
        self.links: dict[str, Link] = {}
        self.spilling: set[str] = set()
        self.tasks = TaskGroup("cluster", on_error=self._task_failed)
        self.leaving = False
        self.follow = follow  # catch up with the live releases in KV (cluster mode only)
        self.follow_failed: set[tuple[str, str, str]] = set()  # (service, deploy|stop|start, live release)
        self.spilled = 0  # requests this node sent to peers
        self.spilled_to: dict[tuple[str, str], int] = {}  # (service, peer) -> requests sent there (/metrics)
        self.accepted = 0  # requests peers sent here
        self.on_peers: Callable[[], None] | None = None  # the peers' free slots may have changed (node/spill.py)

    @property
    def nc(self) -> Any:
        return self.node.nc

    async def start(self) -> None:
        self.kv = await open_nodes_bucket(self.nc.jetstream())
        await self.nc.subscribe(f"{HEARTBEAT_SUBJECT}.*", cb=self._on_heartbeat)
        await self.nc.subscribe(dispatch.claim_subject(self.me, "*"), cb=self._on_claim)
        await self.nc.subscribe(dispatch.in_subject(self.me, "*"), cb=self._on_in)
        await self.nc.subscribe(dispatch.out_subject(self.me, "*"), cb=self._on_out)
        self.tasks.spawn(self._heartbeat_loop(), "heartbeats")

    def leave(self) -> None:
        """Shutting down: heartbeats say so (no free slot, no new claims accepted); what peers
        already sent here finishes while the services drain."""
        self.leaving = True
        self._publish(f"{HEARTBEAT_SUBJECT}.{self.me}", self._heartbeat())

    async def close(self) -> None:
        """Stop the heartbeats and whatever else the agent runs (bounded); take this node's
        entry out of the registry (it would expire by itself)."""
        await self.tasks.close(CLOSE_BOUND)
        if self.nc is not None and self.nc.is_connected and self.kv is not None:
            try:
                await asyncio.wait_for(self.kv.delete(self.me), 1.0)
            except Exception:  # leaving anyway; the entry expires by itself
                pass

    def _task_failed(self, name: str, exc: BaseException) -> None:  # a bug: say it, do not lose it
        self.node.log.event("cluster.task_failed", task=name, error=repr(exc)[:300])

    def _spawn(self, coro: Any, name: str | None = None) -> None:
        self.tasks.offer(coro, name)  # shutting down: what would have started is dropped, never left unawaited

    def _publish(self, subject: str, data: bytes) -> None:
        if self.nc is not None and self.nc.is_connected:
            self._spawn(self._send(subject, data))

    async def _send(self, subject: str, data: bytes) -> None:
        try:
            await self.nc.publish(subject, data)
        except Exception as exc:  # NATS went away in between: the peer-loss path handles the requests
            self.node.log.event("cluster.publish_failed", subject=subject, error=repr(exc)[:200])

    # -- heartbeats --------------------------------------------------------------------------
    def _heartbeat(self) -> bytes:
        self.seq += 1
        services = {name: service_load(s) for name, s in self.node.services.items()}
        return heartbeat_encoder.encode(Heartbeat(node=self.me, gateway=self.node.gateway_url, seq=self.seq,
                                                  sent_at=time.time(), services=services, leaving=self.leaving))

    async def _heartbeat_loop(self) -> None:
        """Every tick (a quarter of the heartbeat interval) expire silent peers, so a lost
        node is out within ``PEER_EXPIRY`` + a quarter second; every fourth, send our own."""
        tick = 0
        while True:
            try:
                if tick % 4 == 0 and self.nc.is_connected:
                    data = self._heartbeat()
                    self._publish(f"{HEARTBEAT_SUBJECT}.{self.me}", data)
                    self._spawn(self._put(data))
                tick += 1
                for peer in self.table.expire(self.loop.time()):
                    self.node.log.event("cluster.peer_lost", peer=peer.node,
                                        silent_s=round(self.loop.time() - peer.last_seen, 1))
                    self._peer_gone(peer.node)
                self._deadline_net()
                if self.on_peers is not None:
                    self.on_peers()
                if self.follow and tick % (4 * FOLLOW_EVERY) == 0 and self.nc.is_connected:
                    self._spawn(follow(self.node, self.deployer, self.follow_failed), "follow")
            except Exception as exc:  # a bug here must not stop the heartbeats
                self.node.log.event("cluster.heartbeat_failed", error=repr(exc)[:200])
            await asyncio.sleep(HEARTBEAT_INTERVAL / 4)

    async def _put(self, data: bytes) -> None:
        try:
            await asyncio.wait_for(self.kv.put(self.me, data), HEARTBEAT_INTERVAL)
        except Exception as exc:  # NATS away or slow: the core heartbeat still went, the next put retries
            self.node.log.event("cluster.heartbeat_put_failed", error=repr(exc)[:200])

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            heartbeat = heartbeat_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        event = self.table.observe(heartbeat, self.loop.time())
        if event is PeerEvent.JOINED:
            self.node.log.event("cluster.peer_joined", peer=heartbeat.node, gateway=heartbeat.gateway)
        elif event is PeerEvent.LEFT:
            self.node.log.event("cluster.peer_leaving", peer=heartbeat.node)
        if event is not None and event is not PeerEvent.STALE and self.on_peers is not None:
            self.on_peers()
        if event in (PeerEvent.JOINED, PeerEvent.REFRESHED):
            for name, load in heartbeat.services.items():
                runtime = self.node.services.get(name)
                if load.free > 0 and runtime is not None and runtime.router.queue:
                    self.spill_soon(runtime)

    def on_disconnected(self) -> None:
        """This node lost NATS: every peer is out of reach until it is back."""
        for node in list(self.table.peers):
            del self.table.peers[node]
            self._peer_gone(node)

    def _peer_gone(self, node: str) -> None:
        for exchange in [e for e in self.sent.values() if e.node == node]:
            self._lost(exchange, f"node {node} running it was lost")
        for key in [k for k in self.running if k[0] == node]:
            remote = self.running.pop(key)
            remote.from_origin(wire.Cancel(remote.origin_id))

    def _lost(self, exchange: Any, why: str) -> None:
        """A request running on a peer that is gone: the one crash rule decides. No blame (a
        lost node is not the request's fault), so never quarantined: retried here or 502."""
        self.sent.pop(exchange.id, None)
        verdict = crash.outcome(crash.Crashed(
            method=exchange.method, answered=exchange.response_complete or exchange.conn.closed,
            response_started=exchange.response_started, body_forwarded=exchange.body_forwarded,
            attempts=exchange.attempts, blame=0.0))
        if verdict is crash.Outcome.DONE:
            return
        runtime = self.node.services.get(exchange.service.name) if exchange.service is not None else None
        if runtime is not exchange.service:
            runtime = None  # the service was forgotten (or replaced) meanwhile: its queue is not ours to use
        if verdict is crash.Outcome.RETRY and runtime is not None and getattr(exchange, "requeueable", True):
            self.node.log.event("request.retried", runtime.name, method=exchange.method,
                                path=exchange.raw_path.decode("latin-1"), lost_node=exchange.node,
                                request_id=exchange.request_id or None)
            back = getattr(exchange, "requeue", None)  # a request queued in the native gateway goes back there
            back() if back is not None else runtime.requeue(exchange)
        else:
            self._failed(exchange, 502, f"node {exchange.node} lost")
            exchange.fail(502, "node lost",
                          f"the {exchange.method} request was running on another node and {why} "
                          f"({'response already started' if exchange.response_started else 'unsafe to retry'}); "
                          "it may or may not have taken effect")

    def _failed(self, exchange: Any, status: int, reason: str) -> None:
        """The node's line about a spilled request it answers itself (502, 504)."""
        self.node.log.event("request.failed", exchange.service.name if exchange.service is not None else "",
                            method=exchange.method, path=exchange.raw_path.decode("latin-1"), status=status,
                            node=exchange.node or None, reason=reason, request_id=exchange.request_id or None)

    def _deadline_net(self) -> None:
        now = self.loop.time()
        for exchange in [e for e in self.sent.values() if e.deadline + dispatch.DEADLINE_GRACE < now]:
            self.sent.pop(exchange.id, None)
            self._failed(exchange, 504, f"node {exchange.node} did not answer within the deadline")
            exchange.fail(504, "deadline passed", f"node {exchange.node} did not answer within the request's deadline")

    def live_peers(self) -> list[str]:
        return sorted(p.node for p in self.table.peers.values() if not p.heartbeat.leaving)

    # -- origin side ---------------------------------------------------------------------------
    def routes_elsewhere(self, service: str) -> list[str] | None:
        """The routes of ``service`` as a live peer serving it advertises them; None if no peer
        serves it (a call from here to a service this node does not run: node/calls.py)."""
        for peer in self.table.peers.values():
            load = peer.heartbeat.services.get(service)
            if load is not None and load.release and not peer.heartbeat.leaving:
                return load.routes or ["/"]
        return None

    def call_elsewhere(self, service: str, exchange: Any, refused: Any) -> None:
        """Claim a peer's free slot for ``exchange`` directly (its service does not run here,
        so it has no queue here); ``refused()`` if none takes it."""
        async def go() -> None:
            placed = False
            if self.nc is not None and self.nc.is_connected and self.table.any_free(service):
                placed = await self._claim(_Elsewhere(service), exchange)
            if not placed:
                refused()

        self._spawn(go(), f"call {service} on a peer")

    async def claim(self, runtime: ServiceView, request: Any) -> bool:
        """Claim a peer's free slot for ``request`` (queued in the native gateway: node/spill.py);
        True once a peer runs it (or it was answered), False if none took it."""
        if self.nc is None or not self.nc.is_connected or not self.table.any_free(runtime.name):
            return False
        return await self._claim(runtime, request)

    def spill_soon(self, runtime: ServiceView) -> None:
        """A request queued here: if a peer advertises a free slot, claim it (never blocks)."""
        if runtime.name not in self.spilling and self.table.any_free(runtime.name) and self.nc.is_connected:
            self.spilling.add(runtime.name)
            self._spawn(self._spill(runtime), f"spill {runtime.name}")

    async def _spill(self, runtime: ServiceView) -> None:
        try:
            while runtime.router.queue and self.table.any_free(runtime.name) and self.nc.is_connected:
                exchange = runtime.router.queue[0].item
                runtime.router.cancel(exchange)
                if not await self._claim(runtime, exchange):
                    if not (exchange.conn.closed or exchange.response_complete):
                        runtime.requeue(exchange)
                    break
        finally:
            self.spilling.discard(runtime.name)

    def _link(self, subject: str) -> Link:
        link = self.links.get(subject)
        if link is None:
            link = self.links[subject] = Link(self._publish, subject)
        return link

    async def _claim(self, runtime: ServiceView, exchange: Any) -> bool:
        for node in self.table.candidates(runtime.name):
            req = dispatch.claim_request(exchange, runtime.server)
            claim = Claim(self.me, exchange.deadline - self.loop.time(), req)
            # The peer's first frames may arrive before its reply to the claim (another
            # subscription): they wait here until the exchange is wired to the peer.
            self.claiming[exchange.id] = []
            try:
                msg = await self.nc.request(dispatch.claim_subject(node, runtime.name),
                                            dispatch.claim_encoder.encode(claim), timeout=dispatch.CLAIM_TIMEOUT)
                reply = dispatch.reply_decoder.decode(msg.data)
            except NoRespondersError:  # the peer is gone: the claim reached nobody
                reply = ClaimReply(False, reason="no responders")
            except Exception:  # no answer in time: the peer may have taken it late
                self._link(dispatch.in_subject(node, self.me)).send(wire.Cancel(exchange.id))
                self.claiming.pop(exchange.id, None)
                self.table.refused(node, runtime.name)
                if not (exchange.method in crash.SAFE_METHODS and exchange.body_forwarded == 0):
                    # Running it here too could run an unsafe request twice: say so instead.
                    self._failed(exchange, 502, f"node {node} did not confirm the claim")
                    exchange.fail(502, "node did not answer", f"node {node} did not confirm taking this "
                                  f"{exchange.method} request within {dispatch.CLAIM_TIMEOUT}s; it was cancelled there "
                                  "but may have started — it may or may not have taken effect")
                    return True
                continue
            early = self.claiming.pop(exchange.id, [])
            if not reply.ok:
                self.table.refused(node, runtime.name)
                continue
            self.table.claimed(node, runtime.name, reply.free)
            dispatch.commit_claim(exchange, req)
            slot = RemoteSlot(self._link(dispatch.in_subject(node, self.me)), node, reply.release, exchange)
            exchange.node = node
            self.sent[exchange.id] = exchange
            exchange.on_dispatched(slot, self.loop.time())
            self.spilled += 1
            self.spilled_to[(runtime.name, node)] = self.spilled_to.get((runtime.name, node), 0) + 1
            if exchange.conn.closed:
                slot.send(wire.Cancel(exchange.id))
            self._frames_back(early)
            return True
        return False

    async def _on_out(self, msg: Any) -> None:
        """Frames from a peer for requests that started here."""
        self._frames_back(dispatch.decode_batch(msg.data))

    def _frames_back(self, frames: list[wire.Frame]) -> None:
        for frame in frames:
            early = self.claiming.get(frame.id)  # type: ignore[union-attr]
            if early is not None:
                early.append(frame)
                continue
            exchange = self.sent.get(frame.id)  # type: ignore[union-attr]
            if exchange is None:
                continue
            if type(frame) is wire.Done:  # the peer gave up mid-response
                self.sent.pop(exchange.id, None)
                self._failed(exchange, 502, f"node {exchange.node} aborted the response")
                exchange.fail(502, "node failed", frame.error or "the peer aborted the response")
                continue
            exchange.on_frame(frame)
            if exchange.response_complete:
                self.sent.pop(exchange.id, None)
                if exchange.service is not None:
                    self.table.released(exchange.node, exchange.service.name)

    # -- runner side ---------------------------------------------------------------------------
    async def _on_claim(self, msg: Any) -> None:
        service = msg.subject.rsplit(".", 1)[1]
        try:
            claim = dispatch.claim_decoder.decode(msg.data)
        except msgspec.DecodeError:
            return
        runtime = self.node.services.get(service)
        if runtime is None or self.leaving:
            result: RemoteExchange | ClaimReply = ClaimReply(False, reason=f"no service {service} here")
        else:
            link = self._link(dispatch.out_subject(claim.origin, self.me))
            result = await dispatch.accept_claim(runtime, claim.origin, link, claim, self.loop.time(), self._finished)
        if isinstance(result, RemoteExchange):
            self.running[(claim.origin, claim.req.id)] = result
            self.accepted += 1
            assert runtime is not None
            result = ClaimReply(True, release=result.release, free=runtime.router.free)
        await msg.respond(dispatch.claim_encoder.encode(result))

    def _finished(self, remote: RemoteExchange) -> None:
        self.running.pop((remote.origin, remote.origin_id), None)

    async def _on_in(self, msg: Any) -> None:
        """Frames from a peer for requests that run here."""
        origin = msg.subject.rsplit(".", 1)[1]
        for frame in dispatch.decode_batch(msg.data):
            remote = self.running.get((origin, frame.id))  # type: ignore[union-attr]
            if remote is not None:
                remote.from_origin(frame)

    # -- reporting ---------------------------------------------------------------------------------
    def info(self) -> dict[str, Any]:
        now = self.loop.time()
        return {"peers": {p.node: {"gateway": p.heartbeat.gateway, "seen_s_ago": round(now - p.last_seen, 2),
                                   "free": p.free, "services": msgspec.to_builtins(p.heartbeat.services)}  # its load, as it said
                          for p in self.table.peers.values()},
                "spilled": self.spilled, "accepted": self.accepted,
                "remote_inflight": len(self.sent), "running_for_peers": len(self.running),
                "spilled_to": [{"service": s, "peer": p, "count": n} for (s, p), n in sorted(self.spilled_to.items())]}
