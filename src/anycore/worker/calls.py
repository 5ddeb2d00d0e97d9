"""Calls from a service's code to another service, through the worker's own node.

``await anycore.call("shop", "GET", "/items/7")`` sends a ``CallReq`` frame on the frame
socket the worker already has with its node; the node places the call exactly like a
request from outside (a free local slot, a peer's free slot, or the queue: ``node/calls.py``)
and streams the answer back as ``CallResp``/``CallBody`` frames. No TCP, no DNS, no port.

What travels with a call, taken from the request the calling code is serving (the
``_current`` context variable, set by the ASGI and WSGI runners for each request):

- the deadline: the call's budget is what is left of the caller's (the node sends each
  request's ``remaining`` seconds in its ``Req``), or ``timeout=`` if that is shorter. When
  the budget runs out the caller gets a 504 at once, here, and the node is told to cancel
  the call (``CallCancel``): the callee's request is cancelled like a client that left;
- ``x-request-id`` and ``traceparent``/``tracestate``, unless the call sets its own;
- ``anycore-call-chain``, the services the request has passed through: the node refuses a
  chain past ``MAX_DEPTH`` (508) and a cycle that could only wait on itself (503).

Bodies stream both ways under the frames' ``WINDOW``: the request body leaves as the node
returns ``CallCredit``, the response body is credited back as the caller consumes it, so
a call never holds more than a window of body in either process.

Threads. Everything here runs on the worker's event loop. ``call_sync`` (for WSGI apps and
the thread pools of sync endpoints) hands the call to that loop with
``run_coroutine_threadsafe`` and blocks the calling thread only; while it waits, a WSGI
request's thread does not count as stuck in the app (hang detection).

Layer L1 (worker); runs in the worker process. httpx is imported only by ``transport()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json as jsonlib
import time
from collections import deque
from contextvars import ContextVar
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

from anycore import wire
from anycore.errors import CallFailed

PROPAGATED = (b"x-request-id", b"traceparent", b"tracestate")
CHAIN = b"anycore-call-chain"
_current: ContextVar[Any] = ContextVar("anycore_request", default=None)
_client: "CallClient | None" = None


class Caller:
    """What a call needs of the request the calling code serves."""

    __slots__ = ("headers", "deadline", "cycle")

    def __init__(self, headers: list[tuple[bytes, bytes]], deadline: float, cycle: Any = None) -> None:
        self.headers = headers
        self.deadline = deadline  # time.monotonic(); 0.0 if the node did not say
        self.cycle = cycle  # a WSGI request's cycle (its thread's hang accounting), else None


def enter_request(req: wire.Req, cycle: Any = None) -> None:
    """Called by the runner as a request starts, in the task (or thread) that runs it."""
    _current.set(Caller(req.headers, time.monotonic() + req.remaining if req.remaining > 0 else 0.0, cycle))


def time_left() -> float | None:
    """Seconds left before the current request's deadline; None outside a request."""
    caller = _current.get()
    if caller is None or not caller.deadline:
        return None
    return max(0.0, caller.deadline - time.monotonic())


class Response:
    """A call's answer: ``status_code``, ``headers`` (lower-case names; repeated ones joined
    by ", "), ``raw_headers``, and the body — ``content``/``text``/``json()`` once read
    (``anycore.call`` reads it), or streamed with ``aiter_bytes()`` (``anycore.stream``)."""

    def __init__(self, status: int, raw_headers: list[tuple[bytes, bytes]], state: "_Call | None") -> None:
        self.status_code = status
        self.raw_headers = raw_headers
        headers: dict[str, str] = {}
        for name, value in raw_headers:
            key, text = name.decode("latin-1").lower(), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        self.headers = headers
        self._state = state
        self._content: bytes | None = None if state is not None else b""

    @property
    def status(self) -> int:
        return self.status_code

    @property
    def content(self) -> bytes:
        if self._content is None:
            raise CallFailed("the response body was not read: use `await response.aread()` "
                             "(or anycore.call, which reads it)")
        return self._content

    @property
    def text(self) -> str:
        return self.content.decode(_charset(self.headers.get("content-type", "")), errors="replace")

    def json(self) -> Any:
        return jsonlib.loads(self.content)

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        if self._content is not None:
            if self._content:
                yield self._content
            return
        state = self._state
        assert state is not None
        while True:
            chunk = await state.next_chunk()
            if chunk is None:
                return
            if chunk:
                yield chunk

    async def aread(self) -> bytes:
        if self._content is None and self._state is not None:
            self._content = self._state.take_all()  # the common case: the answer came whole
        if self._content is None:
            self._content = b"".join([chunk async for chunk in self.aiter_bytes()])
        return self._content

    async def aclose(self) -> None:
        if self._state is not None:
            self._state.close()

    def __repr__(self) -> str:
        return f"<anycore.Response {self.status_code}>"


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        if key.lower() == "charset" and value:
            return value.strip('"')
    return "utf-8"


class _Call:
    """One call in flight, on the worker's loop: the frames of its ``id`` land here."""

    __slots__ = ("id", "client", "head", "chunks", "waiter", "done", "error", "credit", "credit_waiter",
                 "deadline", "what", "sender", "timer", "expired")

    def __init__(self, client: "CallClient", call_id: int, deadline: float, what: str) -> None:
        self.id = call_id
        self.client = client
        self.head: asyncio.Future[wire.CallResp] = client.loop.create_future()
        self.chunks: deque[bytes] = deque()
        self.waiter: asyncio.Future[None] | None = None
        self.done = False  # the response's last byte is here (or it was cut: ``error``)
        self.error = ""
        self.credit = wire.WINDOW  # request body bytes we may still send
        self.credit_waiter: asyncio.Future[None] | None = None
        self.deadline = deadline  # time.monotonic(), 0.0: none here (the node keeps the target's)
        self.what = what
        self.sender: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None  # one per call, at its deadline (no wait_for per await)
        self.expired = False

    def arm(self, left: float) -> None:
        self.timer = self.client.loop.call_later(left, self._expire)

    def _expire(self) -> None:
        """The budget ran out: whatever the caller awaits wakes up and sees ``expired``."""
        self.timer = None
        self.expired = True
        if not self.head.done():
            self.head.set_exception(_Expired())
            self.head.exception()  # retrieved here: open_call turns it into a 504
        _wake(self.waiter)

    def _disarm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    # -- frames from the node -------------------------------------------------------------
    def on_frame(self, frame: wire.Frame) -> None:
        kind = type(frame)
        if kind is wire.CallResp:
            if frame.body:  # type: ignore[union-attr]
                self.chunks.append(frame.body)  # type: ignore[union-attr]
            self.done = not frame.more  # type: ignore[union-attr]
            if not self.head.done():
                self.head.set_result(frame)  # type: ignore[arg-type]
        elif kind is wire.CallBody:
            if frame.data:  # type: ignore[union-attr]
                self.chunks.append(frame.data)  # type: ignore[union-attr]
            self.done = not frame.more  # type: ignore[union-attr]
        elif kind is wire.CallCredit:
            self.credit += frame.n  # type: ignore[union-attr]
            _wake(self.credit_waiter)
            return
        elif kind is wire.CallEnd:
            self.fail(frame.error)  # type: ignore[union-attr]
            return
        if self.done:
            self.client.calls.pop(self.id, None)
            self._disarm()
            self._stop_sender()
        _wake(self.waiter)

    def fail(self, error: str) -> None:
        """The call ended without its whole answer (cut, or the node went away)."""
        self.error, self.done = error, True
        self.client.calls.pop(self.id, None)
        self._disarm()
        if not self.head.done():
            self.head.set_exception(CallFailed(f"{self.what}: {error}"))
            self.head.exception()  # retrieved: whoever awaits it sees it, nobody else warns
        self._stop_sender()
        _wake(self.waiter)
        _wake(self.credit_waiter)

    def _stop_sender(self) -> None:
        if self.sender is not None and not self.sender.done() and self.sender is not asyncio.current_task():
            self.sender.cancel()

    # -- the caller's side ----------------------------------------------------------------------
    def left(self) -> float | None:
        return None if not self.deadline else self.deadline - time.monotonic()

    async def next_chunk(self) -> bytes | None:
        """The next response body chunk (credited back to the node); None at the end."""
        while not self.chunks:
            if self.done:
                if self.error:
                    raise CallFailed(f"{self.what}: the response was cut: {self.error}")
                return None
            if self.expired:
                self.close()
                raise CallFailed(f"{self.what}: the deadline passed while the response body was being read")
            self.waiter = self.client.loop.create_future()
            try:
                await self.waiter
            finally:
                self.waiter = None
        chunk = self.chunks.popleft()
        if chunk and not self.done:
            self.client.send(wire.CallCredit(self.id, len(chunk)))
        return chunk

    async def send_body(self, chunks: AsyncIterator[bytes]) -> None:
        """The rest of the request body, as the node's credit allows."""
        async for chunk in chunks:
            for i in range(0, len(chunk), wire.CHUNK):
                while self.credit <= 0 and not self.done:
                    self.credit_waiter = self.client.loop.create_future()
                    await self.credit_waiter
                    self.credit_waiter = None
                if self.done:
                    return
                piece = chunk[i:i + wire.CHUNK]
                self.credit -= len(piece)
                self.client.send(wire.CallBody(self.id, piece, True))
        if not self.done:
            self.client.send(wire.CallBody(self.id, b"", False))

    def take_all(self) -> bytes | None:
        """The whole body if it is all here already (most answers: one ``CallResp``), else None."""
        if not self.done or self.error:
            return None
        body = b"".join(self.chunks) if len(self.chunks) != 1 else self.chunks[0]
        self.chunks.clear()
        return body

    def close(self) -> None:
        """The caller is done with the call: if it is not finished, the node cancels it."""
        self._disarm()
        if not self.done:
            self.done = True
            self.client.calls.pop(self.id, None)
            self.client.send(wire.CallCancel(self.id))
        self._stop_sender()


class _Expired(Exception):
    """A call's budget ran out before its response head came."""


def _wake(future: "asyncio.Future[None] | None") -> None:
    if future is not None and not future.done():
        future.set_result(None)


class CallClient:
    """The worker's end of calls: installed by the runner with the frame socket's ``send``."""

    def __init__(self, send: Callable[[wire.Frame], None], loop: asyncio.AbstractEventLoop) -> None:
        self.send = send
        self.loop = loop
        self.calls: dict[int, _Call] = {}
        self.ids = itertools.count(1)

    def on_frame(self, frame: wire.Frame) -> None:
        call = self.calls.get(frame.id)  # type: ignore[union-attr]
        if call is not None:
            call.on_frame(frame)

    def lost(self) -> None:
        """The node is gone: no call can be answered any more."""
        for call in list(self.calls.values()):
            call.fail("the worker lost its node")


def install(send: Callable[[wire.Frame], None], loop: asyncio.AbstractEventLoop) -> CallClient:
    global _client
    _client = CallClient(send, loop)
    return _client


def _body_of(json: Any, content: Any, headers: list[tuple[bytes, bytes]]) -> tuple[bytes, AsyncIterator[bytes] | None]:
    """The first body chunk and, for a streamed body, the iterator of the rest."""
    if json is not None:
        if content is not None:
            raise TypeError("give json= or content=, not both")
        content = jsonlib.dumps(json, separators=(",", ":")).encode()
        if not any(k == b"content-type" for k, _ in headers):
            headers.append((b"content-type", b"application/json"))
    if content is None:
        return b"", None
    if isinstance(content, str):
        content = content.encode()
    if isinstance(content, (bytes, bytearray, memoryview)):
        data = bytes(content)
        if not any(k == b"content-length" for k, _ in headers):
            headers.append((b"content-length", str(len(data)).encode()))
        if len(data) <= wire.CHUNK:
            return data, None

        async def rest() -> AsyncIterator[bytes]:
            yield data[wire.CHUNK:]

        return data[:wire.CHUNK], rest()
    if hasattr(content, "__aiter__"):
        async def stream() -> AsyncIterator[bytes]:
            async for chunk in content:
                yield bytes(chunk)

        return b"", stream()
    if hasattr(content, "__iter__"):
        async def from_iterable() -> AsyncIterator[bytes]:
            for chunk in content:
                yield bytes(chunk)

        return b"", from_iterable()
    raise TypeError(f"content must be bytes, str or an (async) iterable of bytes, not {type(content).__name__}")


def _headers_of(headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None) -> list[tuple[bytes, bytes]]:
    items = headers.items() if isinstance(headers, Mapping) else (headers or ())
    out = []
    for name, value in items:
        key = name.encode("latin-1") if isinstance(name, str) else bytes(name)
        out.append((key.lower(), value.encode("latin-1") if isinstance(value, str) else bytes(value)))
    return out


def _deadline_timeout(what: str) -> Response:
    body = jsonlib.dumps({"error": "deadline passed", "status": 504,
                          "detail": f"{what} got no answer within the caller's deadline; it was cancelled"}).encode()
    response = Response(504, [(b"content-type", b"application/json")], None)
    response._content = body
    return response


async def open_call(service: str, method: str, path: str, *, json: Any = None, content: Any = None,
                    headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None = None,
                    timeout: float | None = None) -> Response:
    """Start a call and return once its response head is here (the body not yet read)."""
    client = _client
    if client is None:
        raise CallFailed("anycore.call works only in code run by an anycore worker "
                         "(`anycore up`/`anycore dev`); from outside, use the gateway's HTTP port")
    if asyncio.get_running_loop() is not client.loop:
        raise CallFailed("anycore.call must run on the worker's event loop; from a thread, use anycore.call_sync")
    path, _, query = path.partition("?")
    if not path.startswith("/"):
        raise ValueError(f"a call's path must start with '/' (got {path!r})")
    raw = _headers_of(headers)
    caller = _current.get()
    deadline = caller.deadline if caller is not None else 0.0
    if timeout is not None:
        deadline = min(deadline, time.monotonic() + timeout) if deadline else time.monotonic() + timeout
    if caller is not None:
        given = {k for k, _ in raw}
        raw.extend((k, v) for k, v in caller.headers if (k in PROPAGATED or k == CHAIN) and k not in given)
    first, rest = _body_of(json, content, raw)
    what = f"call to {service} {method.upper()} {path}"
    call = _Call(client, next(client.ids), deadline, what)
    left = call.left()
    if left is not None and left <= 0:
        return _deadline_timeout(what)
    client.calls[call.id] = call
    client.send(wire.CallReq(call.id, service, method.upper(), path, query.encode("latin-1"), raw, first,
                             rest is not None, max(left, 0.001) if left is not None else 0.0))
    if left is not None:
        call.arm(left)
    if rest is not None:
        call.sender = client.loop.create_task(call.send_body(rest))
    try:
        head: wire.CallResp = await call.head
    except _Expired:
        call.close()
        return _deadline_timeout(what)
    except BaseException:
        call.close()
        raise
    return Response(head.status, head.headers, call)


async def call(service: str, method: str, path: str, *, json: Any = None, content: Any = None,
               headers: Mapping[str, str] | Iterable[tuple[Any, Any]] | None = None,
               timeout: float | None = None) -> Response:
    """Call ``method path`` of ``service`` through the node; the whole response, read.

    Errors the node makes are answers, as for a request from outside, with a JSON body:
    404 (no such service), 503 (stopped, overloaded, or a cycle), 504 (the deadline passed),
    502 (the callee's worker died during a call that could not be retried), 508 (the call
    chain is too deep). ``CallFailed`` is raised only when the answer was cut mid-body."""
    response = await open_call(service, method, path, json=json, content=content, headers=headers, timeout=timeout)
    try:
        await response.aread()
    finally:
        await response.aclose()
    return response


@contextlib.asynccontextmanager
async def stream(service: str, method: str, path: str, **kwargs: Any) -> AsyncIterator[Response]:
    """``async with anycore.stream(...) as response: async for chunk in response.aiter_bytes()``.
    Leaving the block before the end cancels the rest of the call."""
    response = await open_call(service, method, path, **kwargs)
    try:
        yield response
    finally:
        await response.aclose()


def call_sync(service: str, method: str, path: str, **kwargs: Any) -> Response:
    """``call`` from a thread (a WSGI app, a sync endpoint's thread pool): the call runs on
    the worker's loop; this thread waits for the whole response."""
    client = _client
    if client is None:
        raise CallFailed("anycore.call_sync works only in code run by an anycore worker")
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is client.loop:
        raise CallFailed("anycore.call_sync would block the worker's event loop: use `await anycore.call(...)` here")
    caller = _current.get()
    cycle = caller.cycle if caller is not None else None

    async def on_loop() -> Response:
        _current.set(caller)  # the thread's request, in the loop's task
        return await call(service, method, path, **kwargs)

    future = asyncio.run_coroutine_threadsafe(on_loop(), client.loop)
    since = cycle.active_since if cycle is not None else 0.0
    if cycle is not None:
        cycle.active_since = 0.0  # waiting on the node is not being stuck in the app
    try:
        return future.result()
    finally:
        if cycle is not None and since:
            cycle.active_since = time.monotonic()
