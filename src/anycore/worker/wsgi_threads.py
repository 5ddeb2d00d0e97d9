"""The WSGI worker's threads: one per slot, fixed, and the hand-offs between them and the loop.

A WSGI app blocks, so it cannot run on the frame loop; but every hop between threads
costs a wake-up (a futex, often a context switch on 2 cores), so the runner keeps them
to the one that cannot be avoided:

- **Loop → thread, once per request.** The loop decodes a ``Req`` and puts its
  ``WsgiCycle`` on one ``queue.SimpleQueue`` that every app thread takes from. A thread
  that has just finished a request takes the next one without sleeping, so under load
  most requests cost no wake-up at all; measured (``bench/wsgi_handoff.py``) this is about
  twice the throughput of one queue per thread fed from a stack of idle threads, which
  wakes a sleeping thread for every request. The node never gives a worker more requests
  than slots, so a request never waits in this queue behind a busy thread while another
  thread is free.
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

Layer L1 (worker); runs in a WSGI worker process, on its loop and its slot threads.
"""

from __future__ import annotations

import asyncio
import os
import select
import threading
from queue import SimpleQueue
from typing import Any, Callable

from anycore import wire
from anycore.framing import FrameProtocol
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


class LockedFrameProtocol(FrameProtocol):
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


class WsgiThreads:
    """The fixed set of app threads of one WSGI worker (see the module doc)."""

    def __init__(self, app: WSGIApp, slots: int, write: Callable[[bytes], None]) -> None:
        self.app = app
        self.write = write
        self.base = base_environ(multithread=slots > 1)
        self.cycles: dict[int, WsgiCycle] = {}
        # (cycle, its socket's writer): a request's frames leave on the socket its Req came
        # from (the frame socket, or the native gateway's data socket)
        self.inbox: SimpleQueue[tuple[WsgiCycle, Callable[[bytes], None]] | None] = SimpleQueue()
        # One condition for every cycle's waits (body chunks, credit): a Condition costs ~4 µs
        # to make, a third of a hello request's runner overhead; only streaming requests wait.
        self.cond = threading.Condition(threading.Lock())
        self.threads = [threading.Thread(target=self._serve, name=f"anycore-wsgi-{i}", daemon=True)
                        for i in range(max(1, slots))]
        self.waiter: tuple[asyncio.AbstractEventLoop, asyncio.Future[None]] | None = None

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def _serve(self) -> None:
        inbox, cycles = self.inbox, self.cycles
        while True:
            item = inbox.get()
            if item is None:
                return
            cycle, write = item
            tail = run_cycle(self.app, cycle, self.base, write)
            cycles.pop(cycle.id, None)  # before Done: the node may reuse nothing, but frames for it stop here
            try:
                write(tail)
            except OSError:
                pass  # the node is gone; the loop ends the worker
            if self.waiter is not None and not cycles:
                self.notify_drained()

    # -- from the loop -------------------------------------------------------------------------
    def submit(self, req: wire.Req, write: Callable[[bytes], None] | None = None) -> None:
        """Run ``req`` on a free thread; its frames go to ``write`` (default: the frame socket)."""
        cycle = WsgiCycle(req, self.cond)
        self.cycles[req.id] = cycle
        self.inbox.put((cycle, write or self.write))

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
        for _ in self.threads:
            self.inbox.put(None)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
