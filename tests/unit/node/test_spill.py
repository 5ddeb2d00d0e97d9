"""node/spill.py against a fake cluster agent and the gateway's ends of its sockets.

The node's spill-over under the native gateway is a relay: the gateway offers a queued
request, the agent claims a peer, the node answers ``Claimed``; frames then cross the
channel (a real socketpair, the gateway's end read and written here with ``anycore.wire``)
one way and the agent's ``RemoteSlot`` (a fake that records) the other. What must hold:
nothing reaches the gateway for a request before the gateway has started it on the
channel (its Req there), a refused claim leaves nothing to undo, a Cancel from the
gateway lets the peer's slot go, and a reservation answered late gives its slot back."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from anycore import dataplane, wire
from anycore.cluster.membership import PeerTable
from anycore.node.spill import ID_BASE, NativeSpill
from tests.unit.node.fakes import run


class Slot:
    """The agent's RemoteSlot: what the node sends the peer."""

    def __init__(self, release: str) -> None:
        self.release = release
        self.sent: list[wire.Frame] = []

    def send(self, frame: wire.Frame) -> None:
        self.sent.append(frame)


class Agent:
    """The cluster agent's face NativeSpill uses: ``claim`` takes or refuses the request."""

    def __init__(self, accept: bool) -> None:
        self.accept = accept
        self.table = PeerTable("me")
        self.nc = type("NC", (), {"is_connected": True})()
        self.sent: dict[int, Any] = {}
        self.slot = Slot("svc@peer")
        self.on_peers: Any = None
        self.claimed: list[Any] = []

    async def claim(self, runtime: Any, request: Any) -> bool:
        self.claimed.append(request)
        if not self.accept:
            return False
        request.node = "peer"
        request.attempts += 1
        request.on_dispatched(self.slot, 0.0)
        self.sent[request.id] = request
        request.on_frame(wire.Resp(request.id, 200, [(b"x", b"1")], b"hi", True))  # early: before the Req
        return True


class Runtime:
    name = "svc"
    release_id = "svc@here"
    server = None


class Node:
    """What NativeSpill sends the gateway (messages with their fds)."""

    def __init__(self) -> None:
        self.messages: list[tuple[Any, list[socket.socket]]] = []

    def send(self, message: Any, fds: list[socket.socket] | None = None) -> None:
        self.messages.append((message, fds or []))

    def of(self, kind: type) -> list[Any]:
        return [m for m, _ in self.messages if type(m) is kind]


REQ = wire.Req(7, "GET", "/", b"/", b"", [(b"x-request-id", b"r-7")], "1.1", "http", ("127.0.0.1", 5), None, "", b"", False)


def offer(gw_id: int = 7) -> dataplane.Offer:
    payload = wire.encode(wire.Req(gw_id, *[getattr(REQ, f) for f in REQ.__struct_fields__[1:]]))[4:]
    return dataplane.Offer("svc", gw_id, 5.0, payload)


async def frames_from(sock: socket.socket, count: int) -> list[wire.Frame]:
    loop = asyncio.get_running_loop()
    data = b""
    frames: list[wire.Frame] = []
    deadline = loop.time() + 5
    while len(frames) < count:
        try:
            data += sock.recv(65536)
        except BlockingIOError:
            assert loop.time() < deadline, f"got {frames}, expected {count} frames"
            await asyncio.sleep(0.002)
            continue
        while len(data) >= 4 and len(data) >= 4 + int.from_bytes(data[:4], "big"):
            size = int.from_bytes(data[:4], "big")
            frames.append(wire.decoder.decode(data[4:4 + size]))
            data = data[4 + size:]
    return frames


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def claimed(node: Node) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not node.of(dataplane.Claimed):
        assert loop.time() < deadline
        await asyncio.sleep(0.002)


@run
async def test_a_claimed_request_runs_through_a_channel_and_nothing_reaches_the_gateway_before_its_req() -> None:
    node, agent = Node(), Agent(accept=True)
    spill = NativeSpill(node.send, {"svc": Runtime()})  # type: ignore[dict-item]
    spill.attach(agent)  # type: ignore[arg-type]
    spill.offered(offer())
    await claimed(node)
    (add, fds), = [(m, f) for m, f in node.messages if type(m) is dataplane.AddChannel]
    assert add.service == "svc" and add.release == "svc@peer"
    assert node.of(dataplane.Claimed) == [dataplane.Claimed("svc", 7, add.channel)]
    assert [type(m) for m, _ in node.messages][:2] == [dataplane.AddChannel, dataplane.Claimed]  # the channel first
    gateway_end = fds[0]
    gateway_end.setblocking(False)
    await settle()
    try:
        gateway_end.recv(1)
        raise AssertionError("a frame reached the gateway before it started the request on the channel")
    except BlockingIOError:
        pass
    # The gateway starts it there (its Req, then a body): the held answer goes, then Done.
    gateway_end.send(wire.encode(REQ) + wire.encode(wire.Body(7, b"up", False)))
    (resp,) = await frames_from(gateway_end, 1)
    assert resp == wire.Resp(7, 200, [(b"x", b"1"), (b"anycore-node", b"peer")], b"hi", True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not agent.slot.sent:
        assert loop.time() < deadline
        await asyncio.sleep(0.002)
    assert agent.slot.sent == [wire.Body(ID_BASE + 7, b"up", False)]
    agent.sent[ID_BASE + 7].on_frame(wire.Body(ID_BASE + 7, b"!", False))  # the peer's last frame
    assert await frames_from(gateway_end, 2) == [wire.Body(7, b"!", False), wire.Done(7, None)]
    assert spill.requests == {}
    spill.close()


@run
async def test_a_refused_claim_leaves_the_request_in_the_gateway_queue() -> None:
    node, agent = Node(), Agent(accept=False)
    spill = NativeSpill(node.send, {"svc": Runtime()})  # type: ignore[dict-item]
    spill.attach(agent)  # type: ignore[arg-type]
    spill.offered(offer())
    await claimed(node)
    assert node.of(dataplane.Claimed) == [dataplane.Claimed("svc", 7, 0)]
    assert node.of(dataplane.AddChannel) == [] and spill.requests == {}


@run
async def test_a_cancel_instead_of_the_req_lets_the_peers_slot_go() -> None:
    node, agent = Node(), Agent(accept=True)
    spill = NativeSpill(node.send, {"svc": Runtime()})  # type: ignore[dict-item]
    spill.attach(agent)  # type: ignore[arg-type]
    spill.offered(offer())
    await claimed(node)
    (_, fds), = [(m, f) for m, f in node.messages if type(m) is dataplane.AddChannel]
    gateway_end = fds[0]
    gateway_end.setblocking(False)
    gateway_end.send(wire.encode(wire.Cancel(7)))  # a local slot took it meanwhile
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while not agent.slot.sent:
        assert loop.time() < deadline
        await asyncio.sleep(0.002)
    assert agent.slot.sent == [wire.Cancel(ID_BASE + 7)]
    assert agent.sent == {} and spill.requests == {}
    await settle()
    try:
        gateway_end.recv(1)
        raise AssertionError("the held answer went to the gateway for a request it no longer had")
    except BlockingIOError:
        pass
    spill.close()


@run
async def test_peers_free_slots_go_to_the_gateway_when_they_change() -> None:
    node, agent = Node(), Agent(accept=True)
    spill = NativeSpill(node.send, {"svc": Runtime()})  # type: ignore[dict-item]
    spill.attach(agent)  # type: ignore[arg-type]
    spill.refresh()
    assert node.of(dataplane.SpillSlots) == []  # nothing free, nothing said
    from anycore.cluster.membership import Heartbeat, ServiceLoad

    agent.table.observe(Heartbeat(node="peer", gateway="http://p", seq=1, sent_at=0.0,
                                  services={"svc": ServiceLoad(release="svc@peer", workers=1, slots=2, free=2)}), 0.0)
    agent.on_peers()
    agent.on_peers()
    assert node.of(dataplane.SpillSlots) == [dataplane.SpillSlots("svc", 2)]
    agent.table.refused("peer", "svc")
    agent.on_peers()
    assert node.of(dataplane.SpillSlots) == [dataplane.SpillSlots("svc", 2), dataplane.SpillSlots("svc", 0)]


@run
async def test_a_reservation_is_answered_and_one_answered_late_gives_its_slot_back() -> None:
    node = Node()
    spill = NativeSpill(node.send, {})
    waiting = asyncio.ensure_future(spill.reserve("svc"))
    await settle()
    (reserve,) = node.of(dataplane.Reserve)
    spill.reserved(dataplane.Reserved(reserve.token, 4, 0))
    assert await waiting == 4
    waiting = asyncio.ensure_future(spill.reserve("svc"))
    await settle()
    refused = node.of(dataplane.Reserve)[-1]
    spill.reserved(dataplane.Reserved(refused.token, 0, 0))
    assert await waiting is None
    spill.reserved(dataplane.Reserved(999, 5, 0))  # nobody waits for it (timed out): its slot goes back
    assert node.of(dataplane.Unreserve) == [dataplane.Unreserve(5)]


@run
async def test_a_retry_after_the_peer_is_lost_sends_a_body_less_request_back_to_the_gateway_queue() -> None:
    node, agent = Node(), Agent(accept=True)
    spill = NativeSpill(node.send, {"svc": Runtime()})  # type: ignore[dict-item]
    spill.attach(agent)  # type: ignore[arg-type]
    spill.offered(offer())
    await claimed(node)
    (request,) = agent.claimed
    assert request.requeueable  # REQ has no body: the gateway kept its Req frame
    request.requeue()  # what the agent's crash rule does for a safe request on a lost peer
    assert node.of(dataplane.Claimed)[-1] == dataplane.Claimed("svc", 7, 0)
    assert spill.requests == {}
    spill.close()
