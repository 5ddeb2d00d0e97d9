"""L2 — a job run as a request: an ``Exchange`` with no client socket.

``node.jobs`` hands a pulled job to its service as a ``JobExchange``: the router places it
like any request (on the live release's least-loaded free slot), the sweep enforces its
deadline, a dead worker's crash handling answers it. What a client socket would receive is
kept instead — the status and the first ``ERROR_BYTES`` of the body, for a failed
attempt's error — and credit goes back to the worker at once (nobody reads slower than the
node). When the answer is complete, or the node answered for it (``fail``: 502, 503, 504),
``on_finished`` tells the executor, exactly once. The pattern is
``cluster.dispatch.RemoteExchange``'s (a peer's request run here); this one answers no one.
"""

from __future__ import annotations

from typing import Callable
from urllib.parse import unquote

from anycore import wire
from anycore.gateway import requestid
from anycore.cluster import jobs as store
from anycore.gateway.exchange import Exchange

ERROR_BYTES = 1024  # how much of a failed job's answer is kept for its error


class _NoClient:
    """The client socket a job does not have (cf. ``cluster.dispatch._NoClient``)."""

    client = None
    closing = False
    writing_paused = False
    node_header = b""

    def __init__(self) -> None:
        self.closed = False

    def body_flow(self, ok: bool) -> None:
        pass

    def write(self, data: bytes) -> None:
        pass

    def response_done(self, exchange: Exchange) -> None:
        pass

    def abort(self) -> None:
        self.closed = True


class JobExchange(Exchange):
    """A job run as a request: the answer is kept (status, the start of the body), not written."""

    def __init__(self, job: store.Job, delivered: int, now: float, on_finished: Callable[["JobExchange"], None]) -> None:
        path, _, query = job.path.partition("?")
        headers = [*job.headers, (b"anycore-job", job.id.encode()), (b"anycore-job-attempt", str(delivered).encode())]
        super().__init__(_NoClient(), job.method, path.encode(), query.encode(), headers,  # type: ignore[arg-type]
                         "1.1", True, None, False, now)
        self.job = job
        self.rid = requestid.find(job.headers) or requestid.accept(job.id.encode()) or b""  # lines about it name it
        self.path = unquote(path)
        self.header_bytes = len(job.path) + sum(len(k) + len(v) for k, v in headers)
        self.answer = b""
        self.error = ""
        self.on_finished = on_finished
        if job.body:
            self.feed_body(job.body)

    def on_frame(self, frame: wire.Frame) -> None:
        if type(frame) is wire.Credit:
            self.credit += frame.n
            self._pump()
        elif type(frame) is wire.Resp:
            if self.response_started:
                return
            self.response_started = True
            self.status = frame.status
            self._take(frame.body, frame.more)
        elif type(frame) is wire.Body:
            self._take(frame.data, frame.more)

    def _take(self, data: bytes, more: bool) -> None:
        if self.response_complete:
            return
        if len(self.answer) < ERROR_BYTES:
            self.answer += data[:ERROR_BYTES - len(self.answer)]
        if more:
            self._credit_back(len(data))  # nobody reads slower than the node: credit at once
            return
        self.response_complete = True
        self.on_finished(self)

    def fail(self, status: int, error: str, detail: str, retry_after: int | None = None) -> None:
        if self.response_complete:
            return
        if not self.response_started:
            self.response_started = True
            self.status = status
        elif 200 <= self.status < 300:
            self.status = 500  # a 2xx cut short is not a success
        self.error = f"{status} {error}: {detail}"
        self.response_complete = True
        self.on_finished(self)
