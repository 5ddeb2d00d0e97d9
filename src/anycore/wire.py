"""Frames between the node and its workers.

Each frame on a worker's Unix socket is a 4-byte big-endian length followed by a msgpack
array whose first element is the message tag. Requests are multiplexed by ``id``. Bodies
travel in chunks both ways under a per-request credit window: a sender may have at most
``WINDOW`` unacknowledged body bytes in flight, and the receiver returns ``Credit`` as the
bytes are consumed (by the app, or by the client's socket). Nothing is buffered whole.

Writers batch: all frames produced in one loop iteration leave in one ``write`` (this
halved CPU per request in the prototype, see MEASURED.md).
"""

from __future__ import annotations

import struct
from typing import Union

import msgspec

WINDOW = 1024 * 1024
CHUNK = 64 * 1024
# WebSocket messages from a worker to a client: at most this many bytes (``ws_size``) per
# connection unacknowledged; the node returns ``Credit`` once the client's socket took them.
WS_WINDOW = 256 * 1024
LENGTH = struct.Struct(">I")


class Req(msgspec.Struct, array_like=True, tag=1):
    id: int
    method: str
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    http_version: str
    scheme: str
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    root_path: str
    body: bytes
    more: bool
    # Seconds left before the request's deadline when the node sent it (0.0: not said). The
    # worker keeps it for the request's calls to other services (``worker/calls.py``).
    remaining: float = 0.0


class Body(msgspec.Struct, array_like=True, tag=2):
    id: int
    data: bytes
    more: bool


class Credit(msgspec.Struct, array_like=True, tag=3):
    id: int
    n: int


class Cancel(msgspec.Struct, array_like=True, tag=4):
    """The client went away: deliver ``http.disconnect``, then cancel the task."""

    id: int


class GatewayReset(msgspec.Struct, array_like=True, tag=45):
    """Node -> worker, on its frame socket, under the native gateway: the gateway died and a
    new one takes the data socket over. Every request that came on the data socket with an
    id below ``below`` (the new gateway's first id) is the dead gateway's: its client is
    gone, so it is cancelled as by ``Cancel`` (a response waiting for credit would wait
    forever). Then the worker brings the data socket to a frame boundary and answers
    ``GatewayResetDone``; the node starts the new gateway after that."""

    below: int


class GatewayResetDone(msgspec.Struct, array_like=True, tag=46):
    """Worker -> node: done with ``GatewayReset``. The worker dropped what the dead gateway
    wrote and it had not read (a frame cut in half among it), and everything it wrote
    itself is in the kernel, whole frames: the node discards those, and the data socket is
    at a frame boundary both ways for the next gateway."""

    below: int


class Stop(msgspec.Struct, array_like=True, tag=5):
    """Drain: finish in-flight requests, run lifespan shutdown, exit."""


class Resp(msgspec.Struct, array_like=True, tag=6):
    """``http.response.start`` plus the first body chunk (often the whole response)."""

    id: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    more: bool


class Done(msgspec.Struct, array_like=True, tag=7):
    """The app returned for request ``id``: its slot is free. ``error`` when it raised."""

    id: int
    error: str | None


class Ready(msgspec.Struct, array_like=True, tag=8):
    pid: int


class StartFailed(msgspec.Struct, array_like=True, tag=9):
    reason: str
    traceback: str


class Tick(msgspec.Struct, array_like=True, tag=10):
    """Sent by the worker's own event loop: proof of loop progress (hang detection)."""


class WsOpen(msgspec.Struct, array_like=True, tag=11):
    """A WebSocket the gateway holds open: the worker runs the app's websocket scope, or
    (``handler`` set) an ``anycore.Session``: new (``mode`` "connect"), carried over from
    another worker or release (``mode`` "migrate", ``state`` from ``snapshot()``), or
    restarted after its worker died (``mode`` "recover", ``state`` the last checkpoint if
    any). ``seq`` counts the client messages the state already reflects."""

    id: int
    path: str
    raw_path: bytes
    query: bytes
    headers: list[tuple[bytes, bytes]]
    subprotocols: list[str]
    client: tuple[str, int] | None
    server: tuple[str, int] | None
    root_path: str
    handler: str = ""
    key: str = ""
    params: dict[str, str] = {}
    mode: str = "connect"
    state: bytes | None = None
    from_release: str = ""
    seq: int = 0
    group: str = ""  # a key's sessions opened together: none handles a message before all are open
    size: int = 1
    scheme: str = "ws"  # "wss" behind a TLS proxy (proxy headers, gateway/proxy.py)
    http_version: str = "1.1"  # "2": an HTTP/2 stream (RFC 8441) the native gateway turned into this socket


class WsAccept(msgspec.Struct, array_like=True, tag=12):
    """The app accepted. A Session sends it on every open (again after a move) to say
    whether its class checkpoints: then the node keeps the messages since the last checkpoint."""

    id: int
    subprotocol: str | None
    headers: list[tuple[bytes, bytes]]
    checkpoint: bool = False


class WsMsg(msgspec.Struct, array_like=True, tag=13):
    """One whole WebSocket message, either direction: ``text`` or ``data``."""

    id: int
    text: str | None
    data: bytes | None


class WsClose(msgspec.Struct, array_like=True, tag=14):
    """Worker -> node: the app closed (or rejected, before accept). Node -> worker: the client left."""

    id: int
    code: int
    reason: str


def ws_size(message: WsMsg) -> int:
    """What a WebSocket message counts against ``WS_WINDOW`` (characters for text: both
    sides count the same way without encoding twice)."""
    return len(message.text) if message.text is not None else len(message.data or b"")


SNAPSHOT, CHECKPOINT, DRY_RUN = 0, 1, 2


class SessSnap(msgspec.Struct, array_like=True, tag=15):
    """Node -> worker: snapshot Session ``id`` after the messages already sent to it. With
    ``detach`` the session then leaves this worker (no ``on_close``): it is moving. The
    ``size`` sessions of one ``group`` (a key's sessions, moving together) snapshot only
    once all of them have handled their earlier messages, so a broadcast from one of them
    reaches the others before any leaves."""

    id: int
    detach: bool
    group: str = ""
    size: int = 1


class SessState(msgspec.Struct, array_like=True, tag=16):
    """Worker -> node: a Session's ``snapshot()`` (msgpack), after ``seq`` client messages.
    ``kind``: SNAPSHOT (answer to a detaching SessSnap), DRY_RUN (answer to a non-detaching
    one) or CHECKPOINT (sent by itself after each message when the class checkpoints)."""

    id: int
    kind: int
    seq: int
    state: bytes | None
    error: str | None


class MigrateCheck(msgspec.Struct, array_like=True, tag=17):
    """Node -> worker of a release not yet live: would ``handler.migrate(state, from_release)`` work?"""

    id: int
    handler: str
    state: bytes
    from_release: str


class MigrateChecked(msgspec.Struct, array_like=True, tag=18):
    id: int
    error: str | None


class Notify(msgspec.Struct, array_like=True, tag=19):
    """Node -> a worker of the new release at shift: run the client-notify hook."""

    hook: str
    from_release: str
    to_release: str


class Notice(msgspec.Struct, array_like=True, tag=20):
    """The hook's answer: the message for every open WebSocket of the old release (none if both None)."""

    text: str | None
    data: bytes | None
    error: str | None


# -- calls between services (``worker/calls.py`` <-> ``node/calls.py``) --------------------
# A worker's call to another service, keyed by a call id of the calling worker's own (not
# a request id: the two never mix, so a call's frames have their own tags). The request
# body and the response body travel under the same ``WINDOW`` as a request's, each side
# returning ``CallCredit`` as it consumes. The response is complete with the first frame
# that says ``more=False``; ``CallEnd`` cuts it (the callee failed mid-response).


class CallReq(msgspec.Struct, array_like=True, tag=21):
    """Worker -> node: call ``method path`` of ``service``; ``timeout`` is the call's budget
    in seconds (0.0: the target service's own request timeout)."""

    id: int
    service: str
    method: str
    path: str
    query: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    more: bool
    timeout: float


class CallBody(msgspec.Struct, array_like=True, tag=22):
    """A body chunk of call ``id``: the request's (worker -> node) or the response's (node -> worker)."""

    id: int
    data: bytes
    more: bool


class CallCredit(msgspec.Struct, array_like=True, tag=23):
    """``n`` body bytes of call ``id`` were consumed by the other side: send that many more."""

    id: int
    n: int


class CallResp(msgspec.Struct, array_like=True, tag=24):
    """Node -> worker: the response head of call ``id`` and its first body chunk."""

    id: int
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes
    more: bool


class CallCancel(msgspec.Struct, array_like=True, tag=25):
    """Worker -> node: the caller gave up on call ``id`` (its budget ran out, or it was cancelled)."""

    id: int


class CallEnd(msgspec.Struct, array_like=True, tag=26):
    """Node -> worker: call ``id``'s response was cut after it began (``error`` says why)."""

    id: int
    error: str



# -- durable jobs (tags 30-34; anycore.worker.jobs, anycore.node.jobs) --------------------

class Enqueue(msgspec.Struct, array_like=True, tag=30):
    """Worker -> node: put a job for ``service`` in its JetStream work queue. ``key`` (or
    "" for a generated id) is the job's id and its JetStream message id (deduplication)."""

    id: int  # the worker's own counter: the ``Enqueued`` answer carries it back
    service: str
    method: str
    path: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    key: str


class Enqueued(msgspec.Struct, array_like=True, tag=31):
    """Node -> worker: the job is stored (JetStream acknowledged it), or why not."""

    id: int
    job: str
    error: str | None
    duplicate: bool = False  # a job with this key was already enqueued within the duplicate window



Frame = Union[Req, Body, Credit, Cancel, GatewayReset, GatewayResetDone, Stop, Resp, Done, Ready, StartFailed, Tick, WsOpen, WsAccept, WsMsg, WsClose,
              SessSnap, SessState, MigrateCheck, MigrateChecked, Notify, Notice,
              CallReq, CallBody, CallCredit, CallResp, CallCancel, CallEnd, Enqueue, Enqueued]

_encoder = msgspec.msgpack.Encoder()
decoder = msgspec.msgpack.Decoder(Frame)


def encode(frame: Frame) -> bytes:
    payload = _encoder.encode(frame)
    return LENGTH.pack(len(payload)) + payload
