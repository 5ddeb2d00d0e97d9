"""L1 (shared by the node and the worker): ``wire``'s frames over an asyncio stream transport.

The frame format itself (``wire``) is pure data; this is its one executor, used on both
ends of the node <-> worker channel. Frames produced in one loop iteration leave in one
``write()`` (the largest single CPU saving the prototype measured).
"""

from __future__ import annotations

import asyncio
from typing import Callable

from anycore.wire import LENGTH, Frame, decoder, encode


class FrameProtocol(asyncio.Protocol):
    """Length-prefixed frames over a stream transport, with per-iteration write batching.

    ``on_frame`` is called for each decoded frame; ``on_lost`` once when the peer is gone.
    """

    def __init__(self, on_frame: Callable[[Frame], None], on_lost: Callable[[Exception | None], None]) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_event_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        start = 0
        end = len(buf)
        while end - start >= 4:
            (size,) = LENGTH.unpack_from(buf, start)
            if end - start - 4 < size:
                break
            frame = decoder.decode(memoryview(buf)[start + 4 : start + 4 + size])
            start += 4 + size
            self._on_frame(frame)
        if start:
            del buf[:start]

    def discard_input(self) -> None:
        """Forget a partial frame read so far: its writer is gone (a dead native gateway),
        and the next writer starts at a frame boundary."""
        self._buf.clear()

    def pending_output(self) -> int:
        """Bytes sent but not yet handed to the kernel (batched here, or in the transport)."""
        size = sum(map(len, self._out))
        if self.transport is not None:
            size += self.transport.get_write_buffer_size()
        return size

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost(exc)

    def send(self, frame: Frame) -> None:
        self._out.append(encode(frame))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if self.transport is not None and out:
            self.transport.write(b"".join(out))

    def close(self) -> None:
        self._flush()
        if self.transport is not None:
            self.transport.close()
