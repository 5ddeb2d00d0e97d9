"""L1 — cross-node dispatch: a request queued on a busy node runs on a peer's free slot.

The protocol, between an *origin* (the node whose gateway holds the client) and a
*runner* (the peer that advertised a free slot in its heartbeat):

1. Claim. Only a request that would wait in the origin's queue spills over: a local free
   slot always wins. The origin takes the head of its queue and sends a ``Claim`` as a
   NATS request to ``anycore.node.<runner>.dispatch.<service>``: the request's head (and
   its whole body when small and complete), and the time left before its deadline. The
   runner accepts only if its router has a free slot *right now* and nothing queued; it
   places the request on that slot in the same loop step (so the slot is reserved) and
   answers ``ClaimReply(ok=True, release)``. Otherwise ``ok=False``: the origin tries the
   next candidate, then puts the request back at the head of its own queue. A claim that
   gets no answer in time may have been accepted late: a ``Cancel`` follows it, and only a
   safe request (GET/HEAD/OPTIONS, no body sent) is tried elsewhere; another gets 502
   saying it may have run. NATS queue groups are not used: placement stays load-aware.
2. Stream. Frames are the node<->worker frames of ``anycore.wire``, keyed by the origin's
   request id, batched per loop iteration into one NATS message per peer and direction:
   origin -> runner on ``anycore.node.<runner>.in.<origin>`` (Body, response Credit,
   Cancel), runner -> origin on ``anycore.node.<origin>.out.<runner>`` (Resp, Body, body
   Credit, and Done only when the runner gave up mid-response). The credit windows are the
   worker's: the runner forwards the worker's Credit to the origin and the origin's Credit
   to the worker, so at most one window of body bytes is in flight on either hop.
3. Deadline. The runner's copy carries the remaining deadline and is swept like a local
   request (504 + Cancel); the origin keeps a safety net ``DEADLINE_GRACE`` later.

On the origin, a remote request looks to the gateway's ``Exchange`` like one on a local
worker: ``RemoteSlot`` stands in for the ``WorkerHandle`` (both are a ``ports.Channel``). On the runner, ``RemoteExchange``
stands in for the client's ``Exchange``: the service's router, sweep and crash handling
treat it as any other request, and what would go to a client socket goes back as frames.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Callable

import msgspec

from anycore import wire
from anycore.gateway import requestid
from anycore.gateway.exchange import Exchange
from anycore.ports import ServiceView

CLAIM_TIMEOUT = 2.0  # a dead peer answers at once (no responders); this bounds a stalled one
MESSAGE_BYTES = 256 * 1024
DEADLINE_GRACE = 2.0

_decoder = msgspec.msgpack.Decoder(wire.Frame)


class Claim(msgspec.Struct, array_like=True):
    origin: str
    remaining: float  # seconds left before the request's deadline, measured at the origin
    req: wire.Req


class ClaimReply(msgspec.Struct):
    ok: bool
    release: str = ""
    reason: str = ""
    free: int = 0  # the runner's free slots for the service after this claim: the origin's new estimate


claim_encoder = msgspec.msgpack.Encoder()
claim_decoder = msgspec.msgpack.Decoder(Claim)
reply_decoder = msgspec.msgpack.Decoder(ClaimReply)


def claim_subject(node: str, service: str) -> str:
    return f"anycore.node.{node}.dispatch.{service}"


def in_subject(runner: str, origin: str) -> str:
    return f"anycore.node.{runner}.in.{origin}"


def out_subject(origin: str, runner: str) -> str:
    return f"anycore.node.{origin}.out.{runner}"


def decode_batch(data: bytes) -> list[wire.Frame]:
    frames = []
    view = memoryview(data)
    start = 0
    while start + 4 <= len(data):
        size = int.from_bytes(view[start:start + 4], "big")
        frames.append(_decoder.decode(view[start + 4:start + 4 + size]))
        start += 4 + size
    return frames


def claim_request(exchange: Exchange, server: tuple[str, int] | None) -> wire.Req:
    """The request's first frame, built without consuming its body (the claim may be refused)."""
    whole = exchange.body_done and exchange.buffered <= wire.CHUNK
    return wire.Req(exchange.id, exchange.method, exchange.path, exchange.raw_path, exchange.query, exchange.headers,
                    exchange.http_version, exchange.scheme, exchange.client or exchange.conn.client, server, exchange.root_path,
                    b"".join(exchange.body) if whole else b"", not whole)


def commit_claim(exchange: Exchange, req: wire.Req) -> None:
    """The claim was accepted: the body that went with it is forwarded."""
    exchange.attempts += 1
    if not req.more:
        exchange.end_sent = True
        exchange.body_forwarded += len(req.body)
        exchange.body.clear()
        exchange.buffered = 0


def split(frame: wire.Frame) -> list[wire.Frame]:
    """A body frame cut into ``wire.CHUNK`` pieces: an app may send 10 MB in one message,
    and a NATS message is bounded (1 MiB by default)."""
    if type(frame) is wire.Body and len(frame.data) > wire.CHUNK:
        data = frame.data
        pieces = range(0, len(data), wire.CHUNK)
        return [wire.Body(frame.id, data[i:i + wire.CHUNK], frame.more or i + wire.CHUNK < len(data)) for i in pieces]
    if type(frame) is wire.Resp and len(frame.body) > wire.CHUNK:
        rest = wire.Body(frame.id, frame.body[wire.CHUNK:], frame.more)
        return [wire.Resp(frame.id, frame.status, frame.headers, frame.body[:wire.CHUNK], True), *split(rest)]
    return [frame]


class Link:
    """Frames to one peer in one direction, batched per loop iteration into NATS messages
    of at most ``MESSAGE_BYTES``."""

    def __init__(self, publish: Callable[[str, bytes], None], subject: str) -> None:
        self.publish = publish
        self.subject = subject
        self.out: list[bytes] = []
        self.size = 0
        self.loop = asyncio.get_running_loop()

    def send(self, frame: wire.Frame) -> None:
        if not self.out:
            self.loop.call_soon(self.flush)
        for piece in split(frame):
            data = wire.encode(piece)
            if self.size + len(data) > MESSAGE_BYTES:
                self.flush()
                self.loop.call_soon(self.flush)
            self.out.append(data)
            self.size += len(data)

    def flush(self) -> None:
        out, self.out, self.size = self.out, [], 0
        if out:
            self.publish(self.subject, b"".join(out))


class RemoteSlot:
    """Origin side: stands in for the WorkerHandle of a request running on a peer — the
    same ``ports.Channel`` (id, release, send, start_request), so the exchange cannot tell.
    Its frames go to the peer over the link; the peer's come back through the agent."""

    def __init__(self, link: Link, node: str, release: str, exchange: Exchange) -> None:
        self.link = link
        self.node = node
        self.release = release
        self.id = -1  # not a local worker: the router never sees it
        self.exchanges = {exchange.id: exchange}

    def send(self, frame: wire.Frame) -> None:
        self.link.send(frame)

    def start_request(self, exchange: Any, frame: wire.Req) -> None:
        """A request's first frame, to the peer (a claim carries the first one itself)."""
        self.exchanges[frame.id] = exchange
        self.link.send(frame)


class _NoClient:
    """Runner side: the client socket a RemoteExchange does not have."""

    closing = False
    writing_paused = False

    def __init__(self, client: tuple[str, int] | None) -> None:
        self.client = client
        self.closed = False

    def body_flow(self, ok: bool) -> None:  # the origin paces the body by credit
        pass

    def write(self, data: bytes) -> None:  # e.g. "100 Continue": the origin's gateway answered that
        pass

    def response_done(self, exchange: Exchange) -> None:
        pass

    def abort(self) -> None:
        self.closed = True


class RemoteExchange(Exchange):
    """Runner side: a peer's request, run here; the response goes back as frames."""

    def __init__(self, origin: str, link: Link, req: wire.Req, deadline: float, now: float,
                 on_finished: Callable[["RemoteExchange"], None]) -> None:
        super().__init__(_NoClient(req.client), req.method, req.raw_path, req.query, req.headers,  # type: ignore[arg-type]
                         req.http_version, True, None, False, now)
        self.origin = origin
        self.origin_id = req.id
        self.link = link
        self.scheme = req.scheme  # as the origin's gateway resolved it (TLS, --proxy-headers)
        self.path = req.path
        self.root_path = req.root_path
        self.deadline = deadline
        self.header_bytes = len(req.raw_path) + len(req.query) + sum(len(k) + len(v) for k, v in req.headers)
        self.on_finished = on_finished
        self.rid = requestid.find(req.headers)  # the origin's gateway put it there
        self.body_done = not req.more
        if req.body:
            self.feed_body(req.body)

    # -- frames from the worker (what a client socket would get) -------------------------
    def on_frame(self, frame: wire.Frame) -> None:
        if type(frame) is wire.Credit:
            self.credit += frame.n
            self._pump()
            self.link.send(wire.Credit(self.origin_id, frame.n))
        elif type(frame) is wire.Resp:
            self.response_started = True
            self.status = frame.status
            self._forward(wire.Resp(self.origin_id, frame.status, frame.headers, frame.body, frame.more), frame.more)
        elif type(frame) is wire.Body:
            self._forward(wire.Body(self.origin_id, frame.data, frame.more), frame.more)

    def _forward(self, frame: wire.Frame, more: bool) -> None:
        if self.response_complete:
            return
        self.link.send(frame)
        if not more:
            self.response_complete = True
            self.on_finished(self)

    def fail(self, status: int, error: str, detail: str, retry_after: int | None = None) -> None:
        if self.response_complete:
            return
        if self.response_started:  # the origin can only abort its client connection
            self.response_complete = True
            self.link.send(wire.Done(self.origin_id, f"{error}: {detail}"))
            self.on_finished(self)
            return
        self.response_started = True
        self.status = status
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        body = json.dumps({"error": error, "detail": detail, "status": status}).encode()
        self._forward(wire.Resp(self.origin_id, status, headers, body, False), False)

    # -- frames from the origin --------------------------------------------------------------
    def from_origin(self, frame: wire.Frame) -> None:
        if type(frame) is wire.Body:
            if frame.data:
                self.feed_body(frame.data)
            if not frame.more:
                self.end_body()
        elif type(frame) is wire.Credit:  # the client took response bytes: the worker may send more
            if self.worker is not None:
                self.worker.send(wire.Credit(self.id, frame.n))
        elif type(frame) is wire.Cancel:
            self.conn.closed = True
            if self.service is not None:
                self.service.client_gone(self)


async def accept_claim(runtime: ServiceView, origin: str, link: Link, claim: Claim, now: float,
                       on_finished: Callable[[RemoteExchange], None]) -> RemoteExchange | ClaimReply:
    """Runner side: place the claimed request on a free slot now, or say why not (under the
    native gateway "now" is one round trip to it: node/spill.py)."""
    if claim.remaining <= 0:
        return ClaimReply(False, reason="deadline passed")
    exchange = RemoteExchange(origin, link, claim.req, now + claim.remaining, now, on_finished)
    if not await runtime.accept_remote(exchange):
        return ClaimReply(False, reason="no free slot")
    return exchange


def describe_reply(data: bytes) -> Any:
    return reply_decoder.decode(data)
