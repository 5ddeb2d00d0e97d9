"""Node<->worker frames: every frame survives encode -> FrameProtocol.data_received however
the bytes are split or coalesced, and send() batches the frames of one loop iteration into
one write. The transport is a small in-memory class; the loop runs only to flush."""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from anycore.wire import (
    CHUNK, Body, Cancel, Credit, Done, Frame, FrameProtocol, Ready, Req, Resp, StartFailed, Stop, Tick, encode,
)

FRAMES: list[Frame] = [
    Req(
        id=1, method="POST", path="/items/ü", raw_path=b"/items/%C3%BC", query=b"a=1&b=2",
        headers=[(b"host", b"example.com"), (b"content-length", b"5")], http_version="1.1", scheme="http",
        client=("127.0.0.1", 50123), server=("127.0.0.1", 8000), root_path="", body=b"hello", more=True,
    ),
    Req(
        id=2, method="GET", path="/", raw_path=b"/", query=b"", headers=[], http_version="1.0", scheme="https",
        client=None, server=None, root_path="/api", body=b"", more=False,
    ),
    Body(id=1, data=b"\x00\xff" * 1000, more=True),
    Body(id=1, data=b"", more=False),
    Credit(id=1, n=65536),
    Cancel(id=2),
    Stop(),
    Resp(id=1, status=201, headers=[(b"content-type", b"text/plain")], body=b"created", more=False),
    Done(id=1, error=None),
    Done(id=2, error="ZeroDivisionError: division by zero"),
    Ready(pid=4242),
    StartFailed(reason="ModuleNotFoundError: No module named 'redis'", traceback="Traceback ...\n"),
    Tick(),
    Body(id=3, data=bytes(range(256)) * (CHUNK // 256), more=True),
]


class FakeTransport:
    """Records what the protocol writes; the in-memory stand-in for a socket transport."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


class Received:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.lost: list[Exception | None] = []


def run(body: Callable[[FrameProtocol, Received, FakeTransport], Any]) -> Received:
    """Build a protocol on a fake transport inside a running loop, run ``body``, and let the
    loop turn a few times so scheduled flushes happen."""
    received = Received()

    async def main() -> None:
        protocol = FrameProtocol(received.frames.append, received.lost.append)
        transport = FakeTransport()
        protocol.connection_made(transport)  # type: ignore[arg-type]
        result = body(protocol, received, transport)
        if asyncio.iscoroutine(result):
            await result

    asyncio.run(main())
    return received


def feed(chunks: list[bytes]) -> list[Frame]:
    def body(protocol: FrameProtocol, received: Received, transport: FakeTransport) -> None:
        for chunk in chunks:
            protocol.data_received(chunk)

    return run(body).frames


def test_a_frame_is_a_length_prefix_and_a_msgpack_array() -> None:
    data = encode(Credit(id=7, n=10))
    (size,) = struct.unpack(">I", data[:4])
    assert size == len(data) - 4
    assert data[4] == 0x93  # fixarray of 3: tag, id, n
    assert data[5] == 3  # Credit's tag


@pytest.mark.parametrize("frame", FRAMES, ids=lambda f: type(f).__name__)
def test_each_frame_roundtrips_whole(frame: Frame) -> None:
    assert feed([encode(frame)]) == [frame]


@pytest.mark.parametrize("frame", FRAMES[:-1], ids=lambda f: type(f).__name__)
def test_each_frame_roundtrips_one_byte_at_a_time(frame: Frame) -> None:
    data = encode(frame)
    assert feed([data[i : i + 1] for i in range(len(data))]) == [frame]


def test_all_frames_coalesced_in_one_chunk_arrive_in_order() -> None:
    data = b"".join(encode(f) for f in FRAMES)
    assert feed([data]) == FRAMES


def test_all_frames_fed_one_byte_at_a_time_arrive_in_order() -> None:
    small = FRAMES[:-1]  # the 64 KiB body is covered by the chunked tests
    data = b"".join(encode(f) for f in small)
    assert feed([data[i : i + 1] for i in range(len(data))]) == small


@pytest.mark.parametrize("size", [2, 3, 5, 4096, 70_000])
def test_all_frames_in_fixed_size_chunks_arrive_in_order(size: int) -> None:
    data = b"".join(encode(f) for f in FRAMES)
    assert feed([data[i : i + size] for i in range(0, len(data), size)]) == FRAMES


@settings(max_examples=50, deadline=None)
@given(cuts=st.lists(st.integers(0, sum(len(encode(f)) for f in FRAMES[:-1])), max_size=40))
def test_frames_split_anywhere_arrive_whole_and_in_order(cuts: list[int]) -> None:
    small = FRAMES[:-1]
    data = b"".join(encode(f) for f in small)
    points = [0, *sorted(cuts), len(data)]
    assert feed([data[a:b] for a, b in zip(points, points[1:])]) == small


def test_a_partial_frame_is_held_until_its_last_byte() -> None:
    data = encode(Done(id=9, error=None)) + encode(Tick())

    def body(protocol: FrameProtocol, received: Received, transport: FakeTransport) -> None:
        protocol.data_received(data[:3])  # not even the length
        assert received.frames == []
        protocol.data_received(data[3:-1])  # Done complete, Tick missing its last byte
        assert received.frames == [Done(id=9, error=None)]
        protocol.data_received(data[-1:])
        assert received.frames == [Done(id=9, error=None), Tick()]

    run(body)


def test_sends_in_one_iteration_leave_in_one_write() -> None:
    frames = [Resp(id=1, status=200, headers=[], body=b"ok", more=False), Done(id=1, error=None), Tick()]

    async def body(protocol: FrameProtocol, received: Received, transport: FakeTransport) -> None:
        for frame in frames:
            protocol.send(frame)
        assert transport.writes == []  # nothing written before the loop turns
        await asyncio.sleep(0)  # one loop iteration: the scheduled flush runs
        assert transport.writes == [b"".join(encode(f) for f in frames)]
        protocol.send(Credit(id=1, n=5))
        await asyncio.sleep(0)
        assert transport.writes[1:] == [encode(Credit(id=1, n=5))]

    run(body)


def test_written_bytes_decode_back_on_the_other_side() -> None:
    wrote: list[bytes] = []

    async def body(protocol: FrameProtocol, received: Received, transport: FakeTransport) -> None:
        for frame in FRAMES:
            protocol.send(frame)
        await asyncio.sleep(0)
        wrote.extend(transport.writes)

    run(body)
    assert len(wrote) == 1
    assert feed(wrote) == FRAMES


def test_close_flushes_pending_frames_then_closes() -> None:
    async def body(protocol: FrameProtocol, received: Received, transport: FakeTransport) -> None:
        protocol.send(Stop())
        protocol.close()
        assert transport.writes == [encode(Stop())]
        assert transport.closed
        await asyncio.sleep(0)  # the flush already scheduled finds nothing more to write
        assert transport.writes == [encode(Stop())]

    run(body)


def test_connection_lost_is_reported_and_later_sends_write_nothing() -> None:
    error = ConnectionResetError("peer gone")

    async def body(protocol: FrameProtocol, received: Received, transport: FakeTransport) -> None:
        protocol.connection_lost(error)
        protocol.send(Tick())
        await asyncio.sleep(0)
        assert transport.writes == []

    received = run(body)
    assert received.lost == [error]
