"""The WSGI worker's threads: one per slot, fixed, and the hand-offs between them and the loop.

A WSGI app blocks, so it cannot run on the frame loop; but every hop between threads
costs a wake-up (a futex, often a context switch on 2 cores), so the runner keeps them
to the one that cannot be avoided:

- **Loop → thread, once per request.** The loop decodes a ``Req`` and puts its
  ``WsgiCycle`` on the ``queue.SimpleQueue`` of an idle thread, taken from a LIFO stack
  (the thread that finished last is the warmest). The node never gives a worker more
  requests than slots, so there is always an idle thread; a ``backlog`` covers the moment
  a thread has written ``Done`` but not yet pushed itself back (and a readiness probe).
- **Thread → node, no hop.** The thread writes its frames itself, straight to the frame
  socket through ``ChannelWriter`` (a lock and a ``write`` that waits for ``POLLOUT`` in
  the calling thread). The loop's own frames (ticks, sessions of other routes) take the
  same lock, so frames never interleave. A small response is one write: ``Resp`` (whole
  body) and ``Done`` together.
- **Loop → thread during a request**, only for streaming: body chunks, credit and
  ``Cancel`` go through the cycle's condition (see ``wsgi.py``), and wake the thread only
  if it waits.
- **Thread → loop**: never per request. Only a drain that waits for the last request
  asks for a ``call_soon_threadsafe``.

Hang detection: the loop's ticker does not tick while an app thread has held control for
longer than a tick without coming back to the runner (reading the body or writing the
response counts as coming back; waiting for the client does not count as stuck). The
node's hang check (no tick for ``hang_timeout``) then fires for a stuck thread exactly
as for a stuck loop, and faulthandler dumps every thread's stack.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from collections import deque
from queue import SimpleQueue
from typing import Any, Callable

from anycore import wire
from anycore.worker.wsgi import WSGIApp, WsgiCycle, base_environ, run_cycle


class ChannelWriter:
    """Writes to the worker's frame socket from any thread, whole buffers under one lock.

    The socket is non-blocking (the loop reads it); a writer that meets a full socket
    waits for it to drain in its own thread. The node reads its workers continuously, so
    a wait here means the node is busy, and the writer slowing down is what is wanted."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            if written == len(data):
                return
            view = memoryview(data)[written:]
            while view:
                select.select([], [self.fd], [])
                try:
                    view = view[os.write(self.fd, view):]
                except BlockingIOError:
                    continue


class LockedFrameProtocol(wire.FrameProtocol):
    """The loop's frame protocol in a WSGI worker: batched per loop iteration as usual,
    but flushed through the ``ChannelWriter`` the app threads share."""

    writer: ChannelWriter | None = None

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and out and self.writer is not None:
            try:
                self.writer.write(b"".join(out))
            except OSError:
                pass  # the node is gone: connection_lost follows


class AppThread(threading.Thread):
    def __init__(self, pool: "WsgiThreads", index: int) -> None:
        super().__init__(name=f"anycore-wsgi-{index}", daemon=True)
        self.pool = pool
        self.inbox: SimpleQueue[WsgiCycle | None] = SimpleQueue()

    def run(self) -> None:
        pool = self.pool
        while True:
            cycle = self.inbox.get()
            while cycle is not None:
                tail = run_cycle(pool.app, cycle, pool.base, pool.write)
                pool.cycles.pop(cycle.id, None)
                with pool.lock:
                    cycle = pool.backlog.popleft() if pool.backlog else None
                    if cycle is None:
                        pool.idle.append(self)
                try:
                    pool.write(tail)
                except OSError:
                    pass  # the node is gone; the loop ends the worker
                if pool.waiter is not None and not pool.cycles:
                    pool.notify_drained()
            if self.pool.closing:
                return


class WsgiThreads:
    """The fixed set of app threads of one WSGI worker (see the module doc)."""

    def __init__(self, app: WSGIApp, slots: int, write: Callable[[bytes], None]) -> None:
        self.app = app
        self.write = write
        self.base = base_environ(multithread=slots > 1)
        self.cycles: dict[int, WsgiCycle] = {}
        self.lock = threading.Lock()
        self.threads = [AppThread(self, i) for i in range(max(1, slots))]
        self.idle: list[AppThread] = list(self.threads)
        self.backlog: deque[WsgiCycle] = deque()
        self.waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None
        self.closing = False

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    # -- from the loop -------------------------------------------------------------------------
    def submit(self, req: wire.Req) -> None:
        cycle = WsgiCycle(req)
        self.cycles[req.id] = cycle
        with self.lock:
            thread = self.idle.pop() if self.idle else None
            if thread is None:
                self.backlog.append(cycle)
                return
        thread.inbox.put(cycle)

    def on_frame(self, frame: Any) -> bool:
        """Route a Body, Credit or Cancel frame to its cycle; False if the id is not ours."""
        cycle = self.cycles.get(frame.id)
        if cycle is None:
            return False
        kind = type(frame)
        if kind is wire.Body:
            cycle.feed(frame.data, frame.more)
        elif kind is wire.Credit:
            cycle.add_credit(frame.n)
        elif kind is wire.Cancel:
            cycle.disconnect()  # the thread goes on until the app returns; its output is dropped
        return True

    def disconnect_all(self) -> None:
        for cycle in list(self.cycles.values()):
            cycle.disconnect()

    def stuck_for(self, now: float) -> float:
        """How long the longest-running app call has held its thread without coming back."""
        longest = 0.0
        for cycle in list(self.cycles.values()):
            since = cycle.active_since
            if since and now - since > longest:
                longest = now - since
        return longest

    async def drained(self) -> None:
        """Return once no request is in flight (the node sent Stop after routing away)."""
        if not self.cycles:
            return
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.waiter = (loop, future)
        if self.cycles:
            await future

    def notify_drained(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            waiter[0].call_soon_threadsafe(_resolve, waiter[1])

    def close(self) -> None:
        self.closing = True
        for thread in self.threads:
            thread.inbox.put(None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
