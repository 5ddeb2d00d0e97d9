"""The WSGI runner's stream objects: ``wsgi.input`` over body frames and ``wsgi.file_wrapper``.

Layer L1 (worker); runs in a WSGI worker process, on the app's threads. It knows the
request only as a ``BodySource`` (the few members of ``wsgi.WsgiCycle`` it reads), so
imports go one way: ``wsgi`` uses this module, never the reverse.

``BodyInput`` is what an app reads when its body did not arrive whole with the request:
each ``read``/``readline`` takes chunks from the request's ``WsgiCycle`` (blocking the
app's thread, never the loop, until the next ``Body`` frame arrives) into a small buffer
and returns ``Credit`` for every chunk taken while the body goes on, so the node never has
more than the credit window in flight and the worker holds at most one chunk beyond what
the app asked for. A client that leaves raises ``ClientDisconnected`` in the app, rather
than a short body that looks complete.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Protocol

from anycore import wire


class BodySource(Protocol):
    """The request whose body ``BodyInput`` reads: ``wsgi.WsgiCycle`` is the one."""

    id: int
    body_done: bool
    chunks: deque[bytes]

    def next_chunk(self) -> bytes: ...


class ClientDisconnected(OSError):
    """Raised by ``wsgi.input`` when the client went away before the body was complete."""


class BodyInput:
    """``wsgi.input`` over body frames: read/readline/readlines/iteration, blocking the app's
    thread while the next chunk travels; credit goes back as chunks are taken."""

    def __init__(self, cycle: BodySource, write: Callable[[bytes], None], first: bytes) -> None:
        self._cycle = cycle
        self._write = write
        self._buf = bytearray(first)
        self._eof = False

    def _fill(self) -> bool:
        """Append one more chunk to the buffer; False at the end of the body."""
        if self._eof:
            return False
        data = self._cycle.next_chunk()
        if not data and self._cycle.body_done and not self._cycle.chunks:
            self._eof = True
            return False
        if data:
            self._buf += data
            if not self._cycle.body_done:  # credit matters only while the body goes on
                self._write(wire.encode(wire.Credit(self._cycle.id, len(data))))
        return True

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            while self._fill():
                pass
            size = len(self._buf)
        while len(self._buf) < size and self._fill():
            pass
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:
        limit = size if size is not None and size >= 0 else None
        while True:
            end = self._buf.find(b"\n")
            if end >= 0 and (limit is None or end < limit):
                return self.read(end + 1)
            if limit is not None and len(self._buf) >= limit:
                return self.read(limit)
            if not self._fill():
                return self.read(len(self._buf) if limit is None else min(limit, len(self._buf)))

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> "BodyInput":
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks; the runner streams it like any iterable."""

    def __init__(self, filelike: Any, block_size: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> "FileWrapper":
        return self

    def __next__(self) -> bytes:
        data = self.filelike.read(self.block_size)
        if data:
            return data  # type: ignore[no-any-return]
        raise StopIteration
