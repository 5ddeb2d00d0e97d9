"""L0 — the control protocol between the node (control plane, Python) and
``anycore-gateway`` (data plane, Rust), for ``anycore up --gateway native``.

Transport: one ``SOCK_SEQPACKET`` Unix socketpair made by the node; the gateway gets its
end as fd 3 (``anycore-gateway --control-fd 3``). Each datagram is one message: a msgpack
array whose first element is the tag (msgspec ``array_like`` with ``tag``, exactly as
``anycore.wire``), at most 64 KiB. A message that carries file descriptors carries them
as ``SCM_RIGHTS`` on that same datagram, in the order its doc says. When the node's end
closes, the gateway stops at once (it serves nothing without its control plane); when
the gateway's end closes, the node sees the gateway die.

Workers. Each worker has a *data socket* besides its control socket (``SOCK_STREAM``
socketpair made by the node; the worker's end reaches it through the zygote like the
others, the node's end goes to the gateway in ``AddWorker``). On the data socket the
frames are exactly ``anycore.wire``'s: gateway -> worker ``Req``, ``Body``, ``Credit``,
``Cancel``; worker -> gateway ``Resp``, ``Body``, ``Credit``, ``Done`` — length-prefixed
msgpack, batched per loop turn, under the same credit windows. Everything else (``Ready``,
``Tick``, ``Stop``, WebSockets, Sessions, hooks) stays on the worker's control socket,
with the node. The node sends ``AddWorker`` only once the worker said ``Ready``.

Placement is the gateway's: the port of ``router/core.py`` (least-loaded accepting worker
of the service's live release with a free slot; else the bounded FIFO with deadlines;
503 + Retry-After when full or the deadline cannot be met; 504 when it expires). The node
tells it which workers exist and which accept; the gateway tells the node what the
scaler and the metrics need (``Stats``) and when a draining worker is idle.

Tags: node -> gateway 1..49, gateway -> node 50..99. New messages take new tags; a
receiver ignores a tag it does not know (so either side can be newer). A struct may gain
fields only at its end, with defaults (an older sender's shorter array still decodes).
"""

from __future__ import annotations

from typing import Union

import msgspec


# -- node -> gateway ------------------------------------------------------------------
class Listen(msgspec.Struct, array_like=True, tag=1):
    """fds: [a listening TCP socket, already bound and listening]. The gateway accepts on it."""

    address: str  # "host:port", for the logs and the ``server`` of each Req


class Settings(msgspec.Struct, array_like=True, tag=2):
    """Sent first, before any Listen. Limits as the Python gateway's ``Limits``."""

    node: str                 # the node id: the ``anycore-node`` header of node-made answers
    max_connections: int
    header_limit: int         # bytes of request line + headers (431 past it)
    header_timeout: float     # seconds to receive a request head (408)
    keepalive_timeout: float  # idle keep-alive connection closed after it
    threads: int = 0          # worker threads of the runtime; 0: the gateway's own rule
    first_id: int = 0         # the first request id (0: 1); a restarted gateway starts past the old ids
    access_log: bool = False  # --access-log: send an AccessLog record of each finished exchange


class Service(msgspec.Struct, array_like=True, tag=3):
    """Create or update a service. ``release`` is the live release (new requests go to its
    workers); "" while none is live. ``running`` False: answer 503 "stopped"."""

    name: str
    routes: list[str]       # "[host]/prefix" entries, as RequestSink.routes
    release: str
    running: bool
    max_body: int           # 413 past it
    max_queue: int          # queued requests
    max_queue_bytes: int    # buffered body bytes of queued requests
    deadline: float         # seconds, from arrival; time queued counts
    request_buffer: int = 64 * 1024  # a body is read up to this before the request takes a slot
    body_timeout: float = 30.0       # no request body byte for this long -> 408


class RemoveService(msgspec.Struct, array_like=True, tag=4):
    name: str


class AddWorker(msgspec.Struct, array_like=True, tag=5):
    """fds: [the node's end of the worker's data socket]. The worker is ready and accepts."""

    service: str
    release: str
    worker: int   # the node's worker id (unique per node)
    slots: int


class Accepting(msgspec.Struct, array_like=True, tag=6):
    """False: draining — no new request goes to it; in-flight ones finish. Once it has none
    in flight the gateway sends ``WorkerIdle``."""

    worker: int
    accepting: bool


class RemoveWorker(msgspec.Struct, array_like=True, tag=7):
    """The worker is gone (or going): close its data socket. Its in-flight requests are
    handled as a lost worker (``router/crash.py``'s rule: a safe request with nothing sent
    is retried once, others get 502 JSON)."""

    worker: int


class Shift(msgspec.Struct, array_like=True, tag=8):
    """One atomic step of a deploy: from now on new (and queued) requests of ``service`` go
    to ``release``'s workers."""

    service: str
    release: str


class Shutdown(msgspec.Struct, array_like=True, tag=9):
    """Stop accepting; finish current responses within ``grace`` seconds; then exit 0."""

    grace: float


class Tls(msgspec.Struct, array_like=True, tag=15):
    """Serve TLS (rustls; ALPN h2, http/1.1) on connections accepted from now on, with this
    PEM certificate chain and key. Sent before the first Listen, and again on SIGHUP: a
    new one replaces the config of *new* connections; open connections keep theirs. One the
    gateway cannot load is refused on its stderr, and the previous one stays."""

    cert: bytes
    key: bytes


class ProxyHeaders(msgspec.Struct, array_like=True, tag=16):
    """``--proxy-headers``: X-Forwarded-For/-Proto from these peers set the Req's client and
    scheme (entries as ``--forwarded-allow-ips``: addresses, networks, ``*``). Sent once,
    before the first Listen; without it the headers are passed on and nothing else."""

    trusted: list[str]
# Cluster spill-over (native/src/spill.rs has the theory; node/spill.py is the node's side).
class SpillSlots(msgspec.Struct, array_like=True, tag=20):
    """The peers' free slots for ``service`` as the node estimates them: while more than the
    requests on offer, the gateway offers its oldest queued ones (``Offer``)."""

    service: str
    free: int


class AddChannel(msgspec.Struct, array_like=True, tag=21):
    """fds: [the gateway's end of a socketpair]. A pseudo-worker of ``service`` that is not
    in the router: only claimed requests start on it (the node relays its frames to the
    peer running them; ``release``: the peer's release, its answers' ``anycore-release``)."""

    service: str
    release: str
    channel: int  # an id no worker has (node/spill.py counts them from CHANNEL_BASE)


class Claimed(msgspec.Struct, array_like=True, tag=22):
    """The node's claim for an offered request: ``channel`` 0, refused (it stays queued);
    else a peer holds a slot for it and it starts on that channel, or, if it no longer
    waits here, the channel gets a Cancel for it."""

    service: str
    id: int
    channel: int


class Reserve(msgspec.Struct, array_like=True, tag=23):
    """A peer's claim: take one free slot now, if the router can place (answer: Reserved)."""

    service: str
    token: int


class Unreserve(msgspec.Struct, array_like=True, tag=24):
    """The peer's request on ``worker`` finished: its reserved slot is free again."""

    worker: int


# -- gateway -> node ------------------------------------------------------------------
class Started(msgspec.Struct, array_like=True, tag=50):
    version: str
    threads: int


class Stats(msgspec.Struct, array_like=True, tag=51):
    """Per service, at most every 100 ms while anything changed. Counts are cumulative
    since the gateway started (the node subtracts); ``inflight`` is per worker now."""

    service: str
    queued: int
    inflight: list[tuple[int, int]]          # (worker, requests in flight)
    served: list[tuple[int, int]]            # (worker, requests done, cumulative)
    statuses: list[tuple[str, int, int]]     # (release, status, answers, cumulative)
    rejected: list[tuple[str, int]]          # (reason, count, cumulative); reasons as stats.REJECT_REASONS
    # (release, duration counts, duration sum, queue-wait counts, queue-wait sum): counts per
    # bucket of stats.BUCKETS (as stats.Histogram, not Prometheus' le), cumulative. Release ""
    # holds the answers to requests no release took (refused, expired while queued).
    histograms: list[tuple[str, list[int], float, list[int], float]] = msgspec.field(default_factory=list)
    connections: int = 0                     # client connections open on the gateway now
    # Service "" only: (status, count), cumulative — the connections' own refusals (400, 408,
    # 414, 431, 501: a request that never reached routing), for the node's gateway_errors.
    refused: list[tuple[int, int]] = msgspec.field(default_factory=list)
    buffering: int = 0  # bytes of max_queue_bytes held by request bodies being read now


class WorkerIdle(msgspec.Struct, array_like=True, tag=52):
    """A worker that is not accepting has nothing in flight any more: the node may stop it."""

    worker: int


class WorkerLost(msgspec.Struct, array_like=True, tag=53):
    """The worker's data socket closed under the gateway (EOF, error) without RemoveWorker."""

    worker: int
    inflight: int


class Upgrade(msgspec.Struct, array_like=True, tag=54):
    """fds: [the client's TCP connection]. The gateway read a request head asking for
    ``Upgrade: websocket`` (routed to ``service``) and stopped reading: the node takes the
    connection over (its Python HTTP code, as if it had accepted it) and feeds it
    ``buffered`` first — every byte the gateway read from the client and did not consume,
    starting at that request's head. The gateway forgets the connection once sent; under
    TLS (``scheme`` "https") the socket is one end of a socket pair the gateway relays to
    the client, decrypted."""

    service: str
    buffered: bytes
    client: tuple[str, int]          # the socket's peer, as accepted (not from proxy headers)
    server: tuple[str, int] | None   # the socket's local address
    scheme: str = "http"             # "https" under TLS: the socket is then the gateway's relay
    http_version: str = "1.1"        # "2": an HTTP/2 WebSocket stream (RFC 8441), relayed as HTTP/1.1


class RequestCrashed(msgspec.Struct, array_like=True, tag=60):
    """A request was running on a worker that died: the verdict of ``router/crash.py``'s
    rule the gateway applied (``outcome``: "retry", "quarantine" or "fail"), for the node's
    log. ``path`` is the raw path when the gateway kept the request (safe, bodiless), else "";
    ``blame`` the workers' worth of crashes it was in (``crashed_workers``);
    ``request_id`` its ``x-request-id``."""

    service: str
    worker: int
    outcome: str
    method: str
    path: str
    blame: float
    request_id: str = ""


class Offer(msgspec.Struct, array_like=True, tag=65):
    """A queued request a peer could run (``SpillSlots``): ``req`` is its ``wire.Req`` frame
    (msgpack, no length prefix), ``remaining`` the seconds left before its deadline. It
    stays queued until the node's ``Claimed``."""

    service: str
    id: int
    remaining: float
    req: bytes


class Reserved(msgspec.Struct, array_like=True, tag=66):
    """The answer to ``Reserve``: ``worker`` 0, refused; else the worker holding the slot
    (``free``: the service's free slots left)."""

    token: int
    worker: int
    free: int


class Shifted(msgspec.Struct, array_like=True, tag=67):
    """A ``Shift`` is applied: every request placed from now on goes to ``release`` (the
    node logs ``service.shifted`` on it, so the line's instant is the gateway's)."""

    service: str
    release: str



class AccessRecord(msgspec.Struct, array_like=True):
    """One finished HTTP/1.1 exchange for the access log (native/src/access.rs). ``path``
    is the raw path, ``target`` it with ``?query``; ``ms`` from its head to its answer's
    end, ``queued_ms`` in the queue (both in seconds here); ``node`` the peer that ran it,
    "" if this node; ``received`` the epoch seconds it arrived (combined's ``%t``)."""

    service: str
    method: str
    path: bytes
    target: bytes
    status: int
    seconds: float
    queued: float
    release: str
    client: str
    size: int  # body bytes sent
    node: str
    request_id: bytes
    http_version: str
    referer: bytes | None
    agent: bytes | None
    received: float


class AccessLog(msgspec.Struct, array_like=True, tag=68):
    """The access records of a tick (sent only with ``Settings.access_log``)."""

    records: list[AccessRecord]

ToGateway = Union[Listen, Settings, Service, RemoveService, AddWorker, Accepting, RemoveWorker, Shift, Shutdown,
                  Tls, ProxyHeaders, SpillSlots, AddChannel, Claimed, Reserve, Unreserve]
FromGateway = Union[Started, Stats, WorkerIdle, WorkerLost, Upgrade, RequestCrashed, Offer, Reserved, Shifted,
                    AccessLog]

_encoder = msgspec.msgpack.Encoder()
from_gateway = msgspec.msgpack.Decoder(FromGateway)
to_gateway = msgspec.msgpack.Decoder(ToGateway)


def encode(message: ToGateway | FromGateway) -> bytes:
    return _encoder.encode(message)
