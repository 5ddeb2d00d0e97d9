"""L1 — one HTTP request/response as the gateway sees it, from parsed headers to last byte.

An exchange is created when a request's headers are parsed. Its body arrives from the
client in chunks. A request takes a slot only once its worker can make progress: it is
placed when its body is complete or ``request_buffer`` bytes of it are here (request
buffering, as nginx does), so a client trickling a small body holds no slot. Until then it
is *waiting*: it holds a reservation of its service's byte budget, not a queue place. After
placement the rest is forwarded under the worker's credit window (past
``PREDISPATCH_BUFFER`` bytes not yet forwarded the connection stops reading). The
response comes back as ``Resp``/``Body`` frames and is written to the client, returning
credit to the worker only once the client's socket has taken the bytes, so a slow reader
slows the app rather than filling the node.

Who may answer: exactly one of the worker (frames) or the node (``fail``: 413, 502, 503,
504) produces the response; the state is the switch. A failure after the response began
can only abort the connection.

The exchange's legality is one state, ``ExchangeState``, moved along one table
(``gateway.states.TRANSITIONS``, with its diagram; an edge off it raises
``IllegalTransition``). A WAITING exchange holds a reservation of its service's byte
budget; leaving WAITING for anything but QUEUED (an answer, a drop) hands it back
(``RequestSink.unreserve``), so no answer path can leak it.

The names the service runtime reads and writes (``waiting``, ``worker``, ``service``,
``response_started``, ``response_complete``) are views of the state: setting
``waiting``/``worker``/``service`` drives it, so the runtime need not know the table. The
body's own progress (``body_done``, ``end_sent``, credit) is a separate axis and stays as
plain fields: a request may be RUNNING while its body still arrives.

The state is a plain attribute and a transition a dict and a frozenset lookup: no object
per request beyond the exchange itself.
"""

from __future__ import annotations

import http
import itertools
import json
from collections import deque
from typing import Protocol

from anycore import wire
from anycore.errors import IllegalTransition
from anycore.gateway.states import (COMPLETE, QUEUED, RECEIVING, RESPONDING, RUNNING, STARTED, TRANSITIONS,
                                    WAITING, ExchangeState)
from anycore.ports import Channel, RequestSink

PREDISPATCH_BUFFER = 256 * 1024
_ids = itertools.count(1)
_STATUS_LINES = {s.value: f"HTTP/1.1 {s.value} {s.phrase}\r\n".encode() for s in http.HTTPStatus}


def status_line(status: int) -> bytes:
    return _STATUS_LINES.get(status) or f"HTTP/1.1 {status} Unknown\r\n".encode()


class Connection(Protocol):
    """What an exchange needs of the client connection it answers on
    (``gateway.http.HttpConnection``; on a peer node, ``cluster.dispatch``'s stand-in)."""

    client: tuple[str, int] | None
    closed: bool
    closing: bool
    writing_paused: bool

    @property
    def node_header(self) -> bytes: ...

    def write(self, data: bytes) -> None: ...

    def body_flow(self, ok: bool) -> None: ...

    def response_done(self, exchange: "Exchange") -> None: ...

    def abort(self) -> None: ...


class Exchange:
    # The scope's scheme and client: the connection's, unless proxy headers from a trusted
    # peer say otherwise (gateway/proxy.py; set by the connection when it parses the head).
    scheme = "http"
    client: tuple[str, int] | None = None

    def __init__(self, conn: Connection, method: str, raw_path: bytes, query: bytes,
                 headers: list[tuple[bytes, bytes]], http_version: str, keep_alive: bool,
                 content_length: int | None, chunked: bool, now: float) -> None:
        self.id = next(_ids)
        self.state = RECEIVING
        self.conn = conn
        self.method = method
        self.raw_path = raw_path
        self.query = query
        self.headers = headers
        self.http_version = http_version
        self.content_length = content_length
        self.chunked = chunked
        self.created = now
        self.dispatched_at = 0.0
        self._service: RequestSink | None = None
        self.root_path = ""
        self.path = ""  # decoded, set by the gateway when routed
        self.host = ""
        self.header_bytes = 0  # request line + headers, as counted by the parser
        self.expect_continue = False
        self.reserved = 0  # bytes of the service's budget held while waiting
        self.buffer_limit = PREDISPATCH_BUFFER  # the service's request_buffer
        self.pause_at = PREDISPATCH_BUFFER  # unforwarded body bytes past which the client is not read
        self.body_timeout = 30.0  # the service's body_timeout
        self.deadline = 0.0
        self._worker: Channel | None = None
        self.attempts = 0
        self.crashes = 0.0  # share of the blame for workers that died running it
        # request body
        self.body: deque[bytes] = deque()
        self.buffered = 0
        self.body_done = content_length in (None, 0) and not chunked
        self.body_received = 0
        self.body_forwarded = 0
        self.credit = wire.WINDOW
        self.end_sent = False
        # response
        self.status = 0
        self.chunked_response = False
        self.close_after = not keep_alive
        self.owed_credit = 0
        self.release = ""
        self.node = ""  # the peer node that ran it (cross-node dispatch); "" for this node
        self.rid = b""  # x-request-id (gateway.requestid), also in ``headers``; b"": none (e.g. a job)
        self.body_sent = 0  # response body bytes written (the access log's size)

    @property
    def request_id(self) -> str:
        """The request id as logs show it ("" if the exchange has none)."""
        return self.rid.decode("latin-1")

    @request_id.setter
    def request_id(self, value: str) -> None:
        self.rid = value.encode("latin-1")

    # -- the state ------------------------------------------------------------------------
    def _to(self, target: ExchangeState) -> None:
        """Move along the table (``on_dispatched`` does the same lookup inline: it is on every
        request's path, and a method call costs more than the lookup)."""
        state = self.state
        if target not in TRANSITIONS[state]:
            self._illegal(target)
        self.state = target
        if state is WAITING and target is not QUEUED and self._service is not None:
            # Answered (413, 503) or dropped while its body was being buffered: the
            # reservation is held exactly while WAITING, so it goes now.
            self._service.unreserve(self)

    def _illegal(self, target: ExchangeState) -> None:
        raise IllegalTransition(f"exchange {self.id} ({self.method} {self.raw_path!r})", self.state.value, target.value)

    def admit(self) -> None:
        """Its connection hands it on (to routing, then its service): the RECEIVING -> QUEUED
        edge, and only that one (WAITING -> QUEUED is the end of body buffering, not an admission)."""
        if self.state is not RECEIVING:
            self._illegal(QUEUED)
        self.state = QUEUED

    @property
    def admitted(self) -> bool:
        return self.state is not RECEIVING

    @property
    def service(self) -> RequestSink | None:
        return self._service

    @service.setter
    def service(self, service: RequestSink | None) -> None:
        """A service taking the exchange admits it (a peer's request has no connection to)."""
        self._service = service
        if self.state is RECEIVING and service is not None:
            self._to(QUEUED)

    @property
    def waiting(self) -> bool:
        """Admitted, its body being buffered before placement (it holds ``reserved`` bytes)."""
        return self.state is WAITING

    @waiting.setter
    def waiting(self, waiting: bool) -> None:
        if waiting:
            self._to(WAITING)
        elif self.state is WAITING:  # unreserving an exchange that no longer waits changes nothing
            self._to(QUEUED)

    @property
    def worker(self) -> Channel | None:
        return self._worker

    @worker.setter
    def worker(self, worker: Channel | None) -> None:
        """``None``: the worker (or peer) is gone; a request it had not answered is queued again
        (or failed by the caller). A worker is set through ``on_dispatched``."""
        self._worker = worker
        if worker is None and self.state is RUNNING:
            self._to(QUEUED)

    @property
    def response_started(self) -> bool:
        return self.state in STARTED

    @response_started.setter
    def response_started(self, started: bool) -> None:
        """Set by an exchange that writes its own response (``cluster.dispatch.RemoteExchange``:
        a peer's request, run here, answered as frames). No connection admits a peer's
        request: being answered admits it, like being taken by a service (``service``)."""
        if not started:
            raise IllegalTransition(f"exchange {self.id}", self.state.value, "not started")
        if self.state is RECEIVING:
            self.admit()
        if self.state not in STARTED:
            self._to(RESPONDING)

    @property
    def response_complete(self) -> bool:
        return self.state is COMPLETE

    @response_complete.setter
    def response_complete(self, complete: bool) -> None:
        if not complete:
            raise IllegalTransition(f"exchange {self.id}", self.state.value, "not complete")
        if self.state is not COMPLETE:
            self._to(COMPLETE)

    def drop(self) -> None:
        """Refused mid-body by its connection: whatever the worker answers is not written."""
        if self.state is not COMPLETE:
            self._to(COMPLETE)

    @property
    def size(self) -> int:
        """Bytes this request holds in the node while queued (request line, headers, buffered body)."""
        return self.header_bytes + self.buffered

    # -- request body from the client ----------------------------------------------
    def feed_body(self, data: bytes) -> None:
        self.body_received += len(data)
        self.body.append(data)
        self.buffered += len(data)
        if self.state is WAITING:
            if self.buffered >= self.buffer_limit:
                self._place()
            return
        self._pump()

    def end_body(self) -> None:
        self.body_done = True
        if self.state is WAITING:
            self._place()
        elif not self.end_sent:  # a body-less request already went whole in its first frame
            self._pump()

    def _place(self) -> None:
        if self._service is None:
            self.waiting = False
        else:  # an answer meanwhile (413, 503) left WAITING and released the reservation itself
            self._service.place_buffered(self)

    def _pump(self) -> None:
        """Forward buffered body chunks to the worker while credit lasts."""
        worker = self._worker
        if worker is not None and not self.end_sent:
            while self.body and self.credit > 0:
                data = self.body.popleft()
                self.buffered -= len(data)
                self.credit -= len(data)
                self.body_forwarded += len(data)
                self.end_sent = not self.body and self.body_done
                worker.send(wire.Body(self.id, data, not self.end_sent))
            if not self.body and self.body_done and not self.end_sent:
                self.end_sent = True
                worker.send(wire.Body(self.id, b"", False))
        # Stop reading the client while this request holds too much unforwarded body.
        self.conn.body_flow(self.buffered <= self.pause_at)

    def request_frame(self, path: str, server: tuple[str, int] | None) -> wire.Req:
        """The frame that starts this request on a worker; takes the body if it is all here."""
        self.attempts += 1
        whole = self.body_done and self.buffered <= wire.CHUNK
        body = b"".join(self.body) if whole else b""
        if whole:
            self.end_sent = True
            self.body_forwarded += len(body)
            self.body.clear()
            self.buffered = 0
        return wire.Req(
            self.id, self.method, path, self.raw_path, self.query, self.headers, self.http_version,
            self.scheme, self.client or self.conn.client, server, self.root_path, body, not whole,
        )

    def on_dispatched(self, worker: Channel, now: float) -> None:
        """Started on ``worker``. An exchange answered meanwhile (a peer confirmed a claim
        after the client was refused) keeps its state: the worker's answer is not written."""
        self._worker = worker
        state = self.state
        if state is not COMPLETE:
            if RUNNING not in TRANSITIONS[state]:  # _to(RUNNING), inline: never from WAITING
                self._illegal(RUNNING)
            self.state = RUNNING
        self.dispatched_at = now
        self.release = worker.release
        self._pump()

    # -- response from the worker -----------------------------------------------------
    def on_frame(self, frame: wire.Frame) -> None:
        if type(frame) is wire.Credit:
            self.credit += frame.n
            self._pump()
        elif type(frame) is wire.Resp:
            self._start_response(frame.status, frame.headers, frame.body, frame.more)
        elif type(frame) is wire.Body:
            self._write_body(frame.data, frame.more)

    def _start_response(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes, more: bool) -> None:
        if self.state in STARTED or self.conn.closed:
            return
        self._to(RESPONDING)
        self.status = status
        parts = [status_line(status)]
        has_length = False
        for name, value in headers:
            lname = name.lower()
            if lname == b"content-length":
                has_length = True
            elif lname == b"connection" and value.lower() == b"close":
                self.close_after = True
                continue
            elif lname == b"transfer-encoding":
                continue  # the gateway frames the body itself
            elif lname == b"x-request-id" and self.rid:
                continue  # the gateway's id (the one the app was given, and the logs name) goes out
            parts += [name, b": ", value, b"\r\n"]
        no_body = status < 200 or status in (204, 304) or self.method == "HEAD"
        if not has_length:
            if not more and (status >= 200 and status not in (204, 304)):
                parts.append(b"content-length: %d\r\n" % len(body))
            elif more and not no_body:
                if self.http_version == "1.1":
                    self.chunked_response = True
                    parts.append(b"transfer-encoding: chunked\r\n")
                else:
                    self.close_after = True
        release = self.release or (self._service.release_id if self._service is not None else "")
        if release:  # a node-made answer names the service's live release; a 404 names none
            parts.append(b"anycore-release: " + release.encode() + b"\r\n")
        parts.append(b"anycore-node: " + self.node.encode() + b"\r\n" if self.node else self.conn.node_header)
        if self.rid:
            parts += (b"x-request-id: ", self.rid, b"\r\n")
        if self.close_after or self.conn.closing:
            parts.append(b"connection: close\r\n")
        parts.append(b"\r\n")
        self._write_body(body, more, skip=no_body, head=b"".join(parts))

    def _write_body(self, data: bytes, more: bool, skip: bool = False, head: bytes = b"") -> None:
        """Write one body chunk (after ``head``, the status line and headers, if given) in a
        single ``write``: one syscall per small response is most of the gateway's cost."""
        if self.state is COMPLETE or self.conn.closed:
            return
        out = head
        if data and not skip and self.method != "HEAD":
            out += b"%x\r\n%b\r\n" % (len(data), data) if self.chunked_response else data
            self.body_sent += len(data)
        if not more and self.chunked_response:
            out += b"0\r\n\r\n"
        if out:
            self.conn.write(out)
        if data and more:  # credit matters only while the response goes on
            self._credit_back(len(data))
        if not more:
            self._to(COMPLETE)
            self.conn.response_done(self)

    def _credit_back(self, n: int) -> None:
        if self.conn.writing_paused:
            self.owed_credit += n
        elif self._worker is not None:
            self._worker.send(wire.Credit(self.id, n))

    def writable(self) -> None:
        """The client's socket drained below its high-water mark: pay the owed credit."""
        if self.owed_credit and self._worker is not None:
            self._worker.send(wire.Credit(self.id, self.owed_credit))
        self.owed_credit = 0

    # -- answers from the node -----------------------------------------------------------
    def fail(self, status: int, error: str, detail: str, retry_after: int | None = None) -> None:
        """Answer with a JSON error if nothing was sent yet; otherwise abort the connection."""
        if self.state is COMPLETE:
            return
        if self.state is RESPONDING:
            self._to(COMPLETE)
            self.conn.abort()
            return
        body = json.dumps({"error": error, "detail": detail, "status": status}).encode()
        headers = [(b"content-type", b"application/json")]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        if status in (400, 408, 413, 431) or not self.body_done:
            self.close_after = True  # the rest of the body will not be read, or framing is lost
        self._start_response(status, headers, body, False)
