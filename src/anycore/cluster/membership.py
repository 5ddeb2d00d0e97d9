"""L0 — cluster membership: heartbeats and the peer table (a pure core).

How it works. Every node sends a ``Heartbeat`` every ``HEARTBEAT_INTERVAL`` seconds: its
id, its gateway URL and, per service, the release it serves and its load (workers,
accepting slots, free slots, in flight, queued). The executor (``cluster/agent.py``)
publishes it twice: on the core subject ``anycore.heartbeat.<node>`` (what peers build
their table from: plain subscriptions survive reconnects by themselves) and in the KV
bucket ``anycore_nodes`` whose entries expire after ``NODES_TTL`` (what the CLI reads to
find nodes and what ``anycore ps --cluster`` shows).

``PeerTable`` is what one node knows of the others. It is driven by the executor with an
injected monotonic ``now``:
- ``observe(heartbeat, now)`` adds or refreshes a peer (a heartbeat older than the one
  already held, by sequence number, is ignored);
- ``expire(now)`` removes the peers not heard from within ``expiry`` seconds and returns
  them, so their in-flight requests can be retried or failed;
- ``candidates(service)`` lists peers advertising a free slot for ``service``, most free
  first: where a busy node may send a claim. A claim changes the local estimate at once
  (``claimed``/``refused``) so that one stale heartbeat does not draw a burst of claims
  the peer must refuse; the next heartbeat replaces the estimate.

Invariants: a node is never its own peer; a peer is in the table only while its last
heartbeat is younger than ``expiry``; a peer that says it is leaving (shutting down) is
never a candidate, but stays until its heartbeats stop, so what it runs can finish.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import msgspec

HEARTBEAT_INTERVAL = 1.0
PEER_EXPIRY = 3.0  # three missed heartbeats: gone
NODES_TTL = 5.0  # the KV entry outlives a few missed puts, then disappears


class ServiceLoad(msgspec.Struct, kw_only=True):
    release: str
    workers: int = 0  # accepting workers of the live release
    slots: int = 0  # their slots
    free: int = 0  # slots free right now (0 while anything is queued)
    inflight: int = 0
    queued: int = 0
    routes: list[str] = msgspec.field(default_factory=list)  # its routes: where a call from a node without it goes


class Heartbeat(msgspec.Struct, kw_only=True):
    node: str
    gateway: str
    seq: int
    sent_at: float  # wall clock, for display only: decisions use the receiver's monotonic clock
    services: dict[str, ServiceLoad] = msgspec.field(default_factory=dict)
    leaving: bool = False


class PeerEvent(enum.Enum):
    JOINED = "joined"
    REFRESHED = "refreshed"
    LEFT = "left"
    STALE = "stale"  # an out-of-order heartbeat: ignored


@dataclass
class Peer:
    heartbeat: Heartbeat
    last_seen: float
    free: dict[str, int] = field(default_factory=dict)  # local estimate, reset by each heartbeat

    @property
    def node(self) -> str:
        return self.heartbeat.node


class PeerTable:
    def __init__(self, me: str, expiry: float = PEER_EXPIRY) -> None:
        self.me = me
        self.expiry = expiry
        self.peers: dict[str, Peer] = {}

    def observe(self, heartbeat: Heartbeat, now: float) -> PeerEvent | None:
        """Take a heartbeat in; None for our own. A leaving peer stays in the table (so the
        requests it still runs are not given up) but advertises no free slot."""
        if heartbeat.node == self.me:
            return None
        known = self.peers.get(heartbeat.node)
        if known is not None and heartbeat.seq <= known.heartbeat.seq and heartbeat.seq > 1:
            return PeerEvent.STALE  # seq 1 again is a restarted node that kept its id: take it
        free = {} if heartbeat.leaving else {name: s.free for name, s in heartbeat.services.items()}
        self.peers[heartbeat.node] = Peer(heartbeat, now, free)
        if heartbeat.leaving:
            return PeerEvent.REFRESHED if known is not None and known.heartbeat.leaving else PeerEvent.LEFT
        return PeerEvent.REFRESHED if known is not None else PeerEvent.JOINED

    def expire(self, now: float) -> list[Peer]:
        """Remove and return the peers whose last heartbeat is older than ``expiry``."""
        gone = [p for p in self.peers.values() if now - p.last_seen > self.expiry]
        for peer in gone:
            del self.peers[peer.node]
        return gone

    def candidates(self, service: str, release: str | None = None) -> list[str]:
        """Peers that advertise a free slot for ``service`` (of ``release``, if given), most free first."""
        found = [(p.free.get(service, 0), p.node) for p in self.peers.values()
                 if p.free.get(service, 0) > 0
                 and (release is None or p.heartbeat.services[service].release == release)]
        found.sort(key=lambda f: (-f[0], f[1]))
        return [node for _, node in found]

    def claimed(self, node: str, service: str, free: int | None = None) -> None:
        """A claim on ``node`` was accepted: its reply says how many slots are left (else one fewer)."""
        peer = self.peers.get(node)
        if peer is not None:
            left = peer.free.get(service, 0) - 1 if free is None else free
            peer.free[service] = max(0, left)

    def released(self, node: str, service: str) -> None:
        """A request this node sent to ``node`` finished: its slot is (about to be) free again,
        so the next queued request need not wait for a heartbeat. Never above its slots."""
        peer = self.peers.get(node)
        load = peer.heartbeat.services.get(service) if peer is not None else None
        if peer is not None and load is not None and not peer.heartbeat.leaving:
            peer.free[service] = min(load.slots, peer.free.get(service, 0) + 1)

    def refused(self, node: str, service: str) -> None:
        """``node`` refused a claim: it has no free slot now, whatever it advertised."""
        peer = self.peers.get(node)
        if peer is not None:
            peer.free[service] = 0

    def free_for(self, service: str) -> int:
        """The free slots all peers have for ``service``, as estimated here."""
        return sum(p.free.get(service, 0) for p in self.peers.values())

    def any_free(self, service: str) -> bool:
        return any(p.free.get(service, 0) > 0 for p in self.peers.values())

    def alive(self, node: str) -> bool:
        return node in self.peers
