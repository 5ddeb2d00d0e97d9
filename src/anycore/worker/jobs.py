"""L1 — ``anycore.enqueue``: a service's code hands a job to its node. Runs in the worker.

A job is a request (method, path, headers, body) for a service, run later on a free slot
of that service on any node, at least once (see the README's "Durable jobs"). Here it is
one ``wire.Enqueue`` frame on the worker's socket to its node and one ``wire.Enqueued``
back, sent only once JetStream has stored the job: the returned id is a durable job.

``await enqueue(...)`` runs on the worker's event loop (ASGI code). ``enqueue_sync(...)``
is for code on another thread (a WSGI app's request threads): it schedules the same
coroutine onto the worker's loop (``run_coroutine_threadsafe``) and blocks until the
answer. Both raise ``anycore.errors.JobRefused`` with the node's reason.
"""

from __future__ import annotations

import asyncio
import itertools
import json as _json
from typing import Any, Callable, Mapping, Sequence

from anycore import wire
from anycore.errors import JobRefused

ANSWER_TIMEOUT = 15.0  # the node answers after JetStream's publish ack (bounded at 5 s there)
Headers = Mapping[str, str] | Sequence[tuple[str | bytes, str | bytes]]


class JobChannel:
    """The worker's side of Enqueue/Enqueued: the answers awaited, by frame id."""

    def __init__(self, send: Callable[[wire.Frame], None], loop: asyncio.AbstractEventLoop) -> None:
        self.send = send
        self.loop = loop
        self.waiting: dict[int, asyncio.Future[wire.Enqueued]] = {}
        self._ids = itertools.count(1)

    async def enqueue(self, frame_args: tuple[Any, ...]) -> str:
        frame_id = next(self._ids)
        answer: asyncio.Future[wire.Enqueued] = self.loop.create_future()
        self.waiting[frame_id] = answer
        self.send(wire.Enqueue(frame_id, *frame_args))
        try:
            done = await asyncio.wait_for(answer, ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            raise JobRefused(f"the node did not confirm the job within {ANSWER_TIMEOUT:.0f}s — it may or may not "
                             "be stored; enqueue again with the same key to be sure it runs once") from None
        finally:
            self.waiting.pop(frame_id, None)
        if done.error is not None:
            raise JobRefused(f"job for {frame_args[0]} not enqueued: {done.error}")
        return done.job

    def answered(self, frame: wire.Enqueued) -> None:
        answer = self.waiting.get(frame.id)
        if answer is not None and not answer.done():
            answer.set_result(frame)

    def lost(self) -> None:
        for answer in self.waiting.values():
            if not answer.done():
                answer.set_result(wire.Enqueued(0, "", "the node closed this worker's channel"))


_channel: JobChannel | None = None


def bind(send: Callable[[wire.Frame], None], loop: asyncio.AbstractEventLoop) -> JobChannel:
    """Called once by the worker's runner when its socket to the node is up."""
    global _channel
    _channel = JobChannel(send, loop)
    return _channel


def _frame_args(service: str, method: str, path: str, json: Any, content: bytes | str | None,
                headers: Headers | None, key: str | None) -> tuple[Any, ...]:
    if json is not None and content is not None:
        raise JobRefused("pass either json= or content=, not both")
    pairs: list[tuple[bytes, bytes]] = []
    items = headers.items() if isinstance(headers, Mapping) else (headers or [])
    for name, value in items:
        pairs.append((name.lower().encode() if isinstance(name, str) else name.lower(),
                      value.encode() if isinstance(value, str) else value))
    body = b""
    if json is not None:
        body = _json.dumps(json).encode()
        if not any(name == b"content-type" for name, _ in pairs):
            pairs.append((b"content-type", b"application/json"))
    elif content is not None:
        body = content.encode() if isinstance(content, str) else bytes(content)
    if body:
        pairs = [(n, v) for n, v in pairs if n != b"content-length"] + [(b"content-length", str(len(body)).encode())]
    return (service, method.upper(), path, pairs, body, key or "")


def _bound() -> JobChannel:
    if _channel is None:
        raise JobRefused("anycore.enqueue works only inside a service that anycore runs (`anycore up`)")
    return _channel


async def enqueue(service: str, method: str, path: str, *, json: Any = None, content: bytes | str | None = None,
                  headers: Headers | None = None, key: str | None = None) -> str:
    """Store a job for ``service`` (``method path`` with the body); returns its id once it
    is durable. With ``key``, the key is the id, and a second enqueue with the same key
    within JetStream's duplicate window (2 minutes) stores nothing and returns the same id."""
    channel = _bound()
    args = _frame_args(service, method, path, json, content, headers, key)
    if asyncio.get_running_loop() is not channel.loop:
        raise JobRefused("await anycore.enqueue on the worker's event loop; from a thread, use anycore.enqueue_sync")
    return await channel.enqueue(args)


def enqueue_sync(service: str, method: str, path: str, *, json: Any = None, content: bytes | str | None = None,
                 headers: Headers | None = None, key: str | None = None) -> str:
    """``enqueue`` for code on a thread that is not the worker's loop (a WSGI app): blocks until stored."""
    channel = _bound()
    args = _frame_args(service, method, path, json, content, headers, key)
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is channel.loop:
        raise JobRefused("anycore.enqueue_sync would block the worker's event loop: use `await anycore.enqueue(...)`")
    future = asyncio.run_coroutine_threadsafe(channel.enqueue(args), channel.loop)
    return future.result(ANSWER_TIMEOUT + 5)
