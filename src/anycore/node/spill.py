"""L2 — cluster spill-over under the native gateway: the node's side of ``native/src/spill.rs``.

Under the Python gateway a queued request is an ``Exchange`` in this process, and the
cluster agent claims a peer's slot for it and relays its frames. Under the native gateway
the queue is in ``anycore-gateway``; this module puts the same agent (same claims, same
NATS frames, same loss and deadline rules) in front of it:

- Origin. The agent's peer table gives, per service, the peers' free slots; each change
  goes to the gateway (``SpillSlots``). The gateway offers queued requests while there
  are more free slots than offers (``Offer``: the Req frame; the request stays queued
  there). A ``SpilledRequest`` stands in for the exchange: the agent claims a peer for it
  (``ClusterAgent.claim``), then this module answers ``Claimed(channel)`` (or 0: refused,
  nothing to undo). The request starts in the gateway on a *channel*, a pseudo-worker
  whose data socket is a socketpair to this node (one per service and peer release); the
  frames the gateway sends on it (Body, Credit, Cancel) go to the peer, the peer's (Resp,
  Body, Credit) go back on it, then a Done frees the channel's entry.
- The gateway's Req on the channel is the confirmation that the request left its queue:
  frames for the gateway are held until it arrives (the control socket and the channel
  are two sockets, read by different threads there). A Cancel instead of it: the request
  no longer waited (a local slot took it, or its client left); the peer's slot is let go.
- Runner. A peer's claim takes a slot only if the gateway's router has one free now:
  ``reserve`` asks it (``Reserve`` -> ``Reserved``), and the request then runs on that
  worker over its control socket as it does under the Python gateway; ``unreserve`` gives
  the slot back when it is done.

A request whose peer is lost goes through the crash rule as under the Python gateway: a
retry sends it back to the head of the gateway's queue (``Claimed(0)`` for a request on a
channel); the gateway keeps the Req frame of body-less requests only, so one with a body
is answered 502 (under the Python gateway it is retried if none of its body was sent).
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import json
import socket
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Mapping

import msgspec

from anycore import dataplane, wire
from anycore.gateway import requestid

if TYPE_CHECKING:
    from anycore.cluster.agent import ClusterAgent
    from anycore.node.service import ServiceRuntime

CHANNEL_BASE = 1 << 40  # channel ids: never a worker's (those count from 1)
ID_BASE = 1 << 50  # a SpilledRequest's id in the agent's tables: the gateway's id + ID_BASE (never an Exchange's)
RESERVE_TIMEOUT = 1.0  # the gateway answers within a loop turn; this bounds a stalled one

_req_decoder = msgspec.msgpack.Decoder(wire.Req)


class SpillState(enum.Enum):
    CLAIMING = "claiming"  # offered by the gateway, the agent claims a peer
    STARTING = "starting"  # claimed; waiting for the gateway's Req on the channel
    RUNNING = "running"
    DONE = "done"


class _Client:
    """The client connection a SpilledRequest does not hold (the gateway does)."""

    def __init__(self, client: tuple[str, int] | None) -> None:
        self.client = client
        self.closed = False


class SpilledRequest:
    """Origin side: a request queued in the native gateway, running on a peer. It stands in
    for the ``Exchange`` the cluster agent claims for and relays (the attributes the agent
    and ``cluster.dispatch`` read: the request's head, its deadline and crash facts)."""

    def __init__(self, spill: "NativeSpill", runtime: "ServiceRuntime", gw_id: int, req: wire.Req,
                 deadline: float) -> None:
        self.spill = spill
        self.gw_id = gw_id
        self.id = ID_BASE + gw_id
        self.service = runtime
        self.method, self.path, self.raw_path, self.query = req.method, req.path, req.raw_path, req.query
        self.headers, self.http_version, self.root_path = req.headers, req.http_version, req.root_path
        self.conn = _Client(req.client)
        # as the gateway resolved them (TLS, --proxy-headers): the peer's app sees the same
        self.scheme, self.client = req.scheme, req.client
        self.rid = requestid.find(req.headers)
        self.deadline = deadline
        # what dispatch.claim_request / commit_claim read: no body is here yet (a queued
        # request's body is still in the client's socket), so the Req says more=True if any
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.body_done = not req.more
        self.end_sent = False
        self.body_forwarded = 0
        self.attempts = 0
        self.node = ""
        self.release = ""
        self.response_started = False
        self.response_complete = False
        self.requeueable = not req.more  # the gateway keeps a body-less request's Req to retry it
        self.state = SpillState.CLAIMING
        self.slot: Any = None  # the agent's RemoteSlot, once a peer took it
        self.channel: Channel | None = None
        self._held: list[wire.Frame] = []

    @property
    def request_id(self) -> str:
        return self.rid.decode("latin-1")

    # -- from the agent (the peer's side) ------------------------------------------------------
    def on_dispatched(self, slot: Any, now: float) -> None:
        self.slot = slot
        self.release = slot.release

    def on_frame(self, frame: wire.Frame) -> None:
        """A frame from the peer (through the agent): on to the gateway."""
        if self.response_complete:
            return
        if type(frame) is wire.Credit:
            self._to_gateway(wire.Credit(self.gw_id, frame.n))
        elif type(frame) is wire.Resp:
            self.response_started = True
            headers = [*frame.headers, (b"anycore-node", self.node.encode())]
            self._to_gateway(wire.Resp(self.gw_id, frame.status, headers, frame.body, frame.more))
            if not frame.more:
                self._finish(None)
        elif type(frame) is wire.Body:
            self._to_gateway(wire.Body(self.gw_id, frame.data, frame.more))
            if not frame.more:
                self._finish(None)

    def requeue(self) -> None:
        """Its peer was lost and the crash rule says retry: back to the head of the gateway's
        queue (a body-less request that nothing was sent for: ``requeueable``)."""
        self._held.clear()
        self.state = SpillState.DONE
        self.spill.forget(self)
        self.spill.send(dataplane.Claimed(self.service.name, self.gw_id, 0))

    def fail(self, status: int, error: str, detail: str, retry_after: int | None = None) -> None:
        """The node answers (502 node lost, 504): a JSON error, or a cut if the response began."""
        if self.response_complete:
            return
        if self.response_started:
            self._finish(f"{error}: {detail}")
            return
        self.response_started = True
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        body = json.dumps({"error": error, "detail": detail, "status": status}).encode()
        self._to_gateway(wire.Resp(self.gw_id, status, headers, body, False))
        self._finish(None)

    def _finish(self, error: str | None) -> None:
        self.response_complete = True
        self._to_gateway(wire.Done(self.gw_id, error))  # frees the channel's entry in the gateway
        if self.state is SpillState.RUNNING:  # else the frames are held until the gateway's Req
            self.state = SpillState.DONE
            self.spill.forget(self)

    # -- from the gateway (the client's side) -------------------------------------------------
    def from_gateway(self, frame: wire.Frame) -> None:
        kind = type(frame)
        if kind is wire.Req:  # it left the gateway's queue for the channel: held frames may go
            held, self._held = self._held, []
            self.state = SpillState.RUNNING
            for f in held:
                self._to_gateway(f)
            if self.response_complete:
                self.state = SpillState.DONE
                self.spill.forget(self)
        elif kind is wire.Body:
            if self.slot is not None and not self.response_complete:
                self.body_forwarded += len(frame.data)  # type: ignore[union-attr]
                self.slot.send(wire.Body(self.id, frame.data, frame.more))  # type: ignore[union-attr]
        elif kind is wire.Credit:
            if self.slot is not None and not self.response_complete:
                self.slot.send(wire.Credit(self.id, frame.n))  # type: ignore[union-attr]
        elif kind is wire.Cancel:  # its client left, its deadline passed, or it no longer waited
            self.conn.closed = True
            self._held.clear()
            if self.slot is not None and not self.response_complete:
                self.slot.send(wire.Cancel(self.id))
            self.spill.agent_forget(self)
            starting = self.state is SpillState.STARTING
            self.state = SpillState.DONE
            if not self.response_complete:
                self.response_complete = True
                if not starting:
                    self._to_gateway(wire.Done(self.gw_id, "cancelled"))
            self.spill.forget(self)

    def _to_gateway(self, frame: wire.Frame) -> None:
        if self.state is SpillState.RUNNING and self.channel is not None:
            self.channel.send(frame)
        elif self.state is not SpillState.DONE:
            self._held.append(frame)


class Channel:
    """This node's end of one AddChannel socketpair: frames in both directions, written in
    one batch per loop turn (a partial write waits for the socket to be writable)."""

    def __init__(self, channel_id: int, sock: socket.socket, on_frame: Callable[[wire.Frame], None]) -> None:
        self.id = channel_id
        self.sock = sock
        self.on_frame = on_frame
        self.loop = asyncio.get_running_loop()
        self.inbuf = bytearray()
        self.out = bytearray()
        self.flush_soon = False
        self.closed = False
        sock.setblocking(False)
        self.loop.add_reader(sock.fileno(), self._readable)

    def send(self, frame: wire.Frame) -> None:
        if self.closed:
            return
        self.out += wire.encode(frame)
        if not self.flush_soon:
            self.flush_soon = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self.flush_soon = False
        if self.closed or not self.out:
            return
        try:
            sent = self.sock.send(self.out)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.close()
            return
        del self.out[:sent]
        if self.out:
            self.loop.add_writer(self.sock.fileno(), self._writable)

    def _writable(self) -> None:
        self.loop.remove_writer(self.sock.fileno())
        self._flush()

    def _readable(self) -> None:
        try:
            data = self.sock.recv(256 * 1024)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        buf = self.inbuf
        buf += data
        start = 0
        while len(buf) - start >= 4:
            size = int.from_bytes(buf[start:start + 4], "big")
            if len(buf) - start - 4 < size:
                break
            frame = wire.decoder.decode(memoryview(buf)[start + 4:start + 4 + size])
            start += 4 + size
            self.on_frame(frame)
        del buf[:start]

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.sock.fileno())
        self.loop.remove_writer(self.sock.fileno())
        self.sock.close()


class NativeSpill:
    """The node's spill-over through ``anycore-gateway`` (see the module doc). ``send`` is the
    NativeGateway's; ``services`` the node's; the agent is attached once the cluster runs."""

    def __init__(self, send: Callable[..., None], services: Mapping[str, "ServiceRuntime"]) -> None:
        self.send = send
        self.services = services
        self.agent: ClusterAgent | None = None
        self.loop = asyncio.get_running_loop()
        self.channels: dict[tuple[str, str], Channel] = {}
        self.requests: dict[int, SpilledRequest] = {}  # by the gateway's request id
        self.advertised: dict[str, int] = {}  # the SpillSlots last sent, per service
        self._channel_ids = itertools.count(CHANNEL_BASE)
        self._tokens = itertools.count(1)
        self._reserving: dict[int, asyncio.Future[int]] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    def attach(self, agent: "ClusterAgent") -> None:
        self.agent = agent
        agent.on_peers = self.refresh

    # -- origin side ---------------------------------------------------------------------------
    def refresh(self) -> None:
        """Tell the gateway the peers' free slots per service, where they changed."""
        agent = self.agent
        connected = agent is not None and agent.nc is not None and agent.nc.is_connected
        for name in self.services:
            free = agent.table.free_for(name) if connected and agent is not None else 0
            if self.advertised.get(name, 0) != free:
                self.advertised[name] = free
                self.send(dataplane.SpillSlots(name, free))

    def service_removed(self, name: str) -> None:
        """The gateway dropped the service, and its channels with it."""
        self.advertised.pop(name, None)
        for key in [k for k in self.channels if k[0] == name]:
            self.channels.pop(key).close()

    def offered(self, offer: dataplane.Offer) -> None:
        task = self.loop.create_task(self._claim(offer))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _claim(self, offer: dataplane.Offer) -> None:
        runtime = self.services.get(offer.service)
        agent = self.agent
        channel = 0
        try:
            if runtime is not None and agent is not None:
                req = _req_decoder.decode(offer.req)
                request = SpilledRequest(self, runtime, offer.id, req, self.loop.time() + offer.remaining)
                self.requests[offer.id] = request
                if await agent.claim(runtime, request):
                    request.state = SpillState.STARTING
                    request.channel = self._channel(offer.service, request.release or runtime.release_id)
                    channel = request.channel.id
                else:
                    self.requests.pop(offer.id, None)
        finally:
            self.send(dataplane.Claimed(offer.service, offer.id, channel))
            self.refresh()

    def _channel(self, service: str, release: str) -> Channel:
        channel = self.channels.get((service, release))
        if channel is None or channel.closed:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            channel = Channel(next(self._channel_ids), mine, self._from_gateway)
            self.channels[(service, release)] = channel
            self.send(dataplane.AddChannel(service, release, channel.id), [theirs])
        return channel

    def _from_gateway(self, frame: wire.Frame) -> None:
        request = self.requests.get(frame.id)  # type: ignore[union-attr]
        if request is not None:
            request.from_gateway(frame)

    def forget(self, request: SpilledRequest) -> None:
        if self.requests.get(request.gw_id) is request:
            del self.requests[request.gw_id]

    def agent_forget(self, request: SpilledRequest) -> None:
        if self.agent is not None:
            self.agent.sent.pop(request.id, None)
            if request.node and request.service is not None:
                self.agent.table.released(request.node, request.service.name)

    # -- runner side ---------------------------------------------------------------------------
    async def reserve(self, service: str) -> int | None:
        """A free slot of ``service`` taken now for a peer's request: its worker id, or None."""
        token = next(self._tokens)
        future = self._reserving[token] = self.loop.create_future()
        self.send(dataplane.Reserve(service, token))
        try:
            worker = await asyncio.wait_for(future, RESERVE_TIMEOUT)
        except asyncio.TimeoutError:
            return None  # a late Reserved for it gives its slot back (reserved())
        finally:
            self._reserving.pop(token, None)
        return worker or None

    def reserved(self, message: dataplane.Reserved) -> None:
        future = self._reserving.get(message.token)
        if future is not None and not future.done():
            future.set_result(message.worker)
        elif message.worker:
            self.send(dataplane.Unreserve(message.worker))  # nobody waits for it any more

    def unreserve(self, worker_id: int) -> None:
        self.send(dataplane.Unreserve(worker_id))

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for channel in self.channels.values():
            channel.close()
        self.channels.clear()

