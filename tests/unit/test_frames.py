"""Node <-> worker frames (anycore.wire) through a real FrameProtocol and a fake transport.

Every frame type (read from ``wire.Frame``, so a new type is covered without editing this
file) is encoded and decoded back through ``FrameProtocol.data_received``, with the bytes
arriving one at a time and all coalesced in one read. Writes are batched: frames sent in
one loop iteration leave in one ``transport.write``.
"""

from __future__ import annotations

import asyncio
import typing
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest

from anycore import wire
from anycore.framing import FrameProtocol


class FakeTransport(asyncio.Transport):
    """A real, minimal transport: it records what is written and whether it was closed."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        assert not self.closed, "write after close"
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0  # every write is taken whole


FRAME_TYPES: list[type[msgspec.Struct]] = list(typing.get_args(wire.Frame))


def _sample(t: mi.Type, seed: int, none: bool) -> Any:
    """A value of type ``t``; ``none`` picks None for optional fields."""
    if isinstance(t, mi.UnionType):
        options = [x for x in t.types if not isinstance(x, mi.NoneType)]
        if none and len(options) < len(t.types):
            return None
        return _sample(options[0], seed, none)
    if isinstance(t, mi.BoolType):
        return bool(seed % 2)
    if isinstance(t, mi.IntType):
        return 1_000_003 * seed + 7
    if isinstance(t, mi.FloatType):
        return seed + 0.5
    if isinstance(t, mi.StrType):
        return f"s{seed}-é✓"
    if isinstance(t, mi.BytesType):
        return bytes(range(seed % 7, seed % 7 + 40)) + b"\x00\xff"
    if isinstance(t, mi.ListType):
        return [_sample(t.item_type, seed + i, none) for i in range(3)]
    if isinstance(t, mi.TupleType):
        return tuple(_sample(x, seed + i, none) for i, x in enumerate(t.item_types))
    if isinstance(t, mi.DictType):
        return {_sample(t.key_type, seed, none): _sample(t.value_type, seed + 1, none)}
    if isinstance(t, mi.NoneType):
        return None
    raise AssertionError(f"no sample for {t!r}: teach _sample this type")


def generated(cls: type[msgspec.Struct], seed: int, none: bool = False) -> msgspec.Struct:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return cls(**{f.name: _sample(f.type, seed + i, none) for i, f in enumerate(info.fields)})


REALISTIC: list[msgspec.Struct] = [
    wire.Req(1, "POST", "/api/items", b"/api/items", b"a=1&b=%20", [(b"host", b"x"), (b"content-length", b"5")],
             "1.1", "http", ("127.0.0.1", 50123), ("127.0.0.1", 8000), "", b"hello", False),
    wire.Req(2, "GET", "/", b"/", b"", [], "1.1", "http", None, None, "", b"", True),
    wire.Body(1, b"x" * wire.CHUNK, True),
    wire.Body(1, b"", False),
    wire.Credit(1, wire.WINDOW),
    wire.Cancel(9),
    wire.Stop(),
    wire.Resp(1, 200, [(b"content-type", b"application/json")], b'{"ok": true}', False),
    wire.Done(1, None),
    wire.Done(2, "ZeroDivisionError: division by zero"),
    wire.Ready(4242),
    wire.StartFailed("ModuleNotFoundError: No module named 'redis'", "Traceback (most recent call last):\n ..."),
    wire.Tick(),
]


def all_samples() -> list[msgspec.Struct]:
    frames = list(REALISTIC)
    for i, cls in enumerate(FRAME_TYPES):
        frames.append(generated(cls, seed=10 * i + 1))
        frames.append(generated(cls, seed=10 * i + 2, none=True))
    return frames


def test_every_frame_type_has_a_sample() -> None:
    assert {type(f) for f in all_samples()} == set(FRAME_TYPES)
    assert len(FRAME_TYPES) >= 10


def receive_all(chunks: list[bytes]) -> list[Any]:
    """Feed ``chunks`` to a FrameProtocol inside a running loop; return the decoded frames."""
    got: list[Any] = []

    async def main() -> None:
        proto = FrameProtocol(got.append, lambda exc: None)
        proto.connection_made(FakeTransport())
        for chunk in chunks:
            proto.data_received(chunk)
        assert not proto._buf, "bytes left over after whole frames"

    asyncio.run(main())
    return got


@pytest.mark.parametrize("split", ["one_byte_at_a_time", "all_coalesced", "frame_by_frame"])
def test_every_frame_roundtrips_through_data_received(split: str) -> None:
    frames = all_samples()
    encoded = [wire.encode(f) for f in frames]
    data = b"".join(encoded)
    if split == "one_byte_at_a_time":
        chunks = [data[i : i + 1] for i in range(len(data))]
    elif split == "all_coalesced":
        chunks = [data]
    else:
        chunks = encoded
    got = receive_all(chunks)
    assert got == frames
    assert [type(g) for g in got] == [type(f) for f in frames]


def test_a_frame_split_across_reads_is_held_until_complete() -> None:
    got: list[Any] = []

    async def main() -> None:
        proto = FrameProtocol(got.append, lambda exc: None)
        a, b = wire.encode(wire.Credit(3, 100)), wire.encode(wire.Body(3, b"abc", True))
        proto.data_received(a + b[:2])  # the second frame's length is not even complete
        assert got == [wire.Credit(3, 100)]
        proto.data_received(b[2:-1])
        assert len(got) == 1
        proto.data_received(b[-1:])
        assert got == [wire.Credit(3, 100), wire.Body(3, b"abc", True)]

    asyncio.run(main())


def test_the_length_prefix_is_four_bytes_big_endian() -> None:
    data = wire.encode(wire.Cancel(5))
    assert int.from_bytes(data[:4], "big") == len(data) - 4
    assert msgspec.msgpack.decode(data[4:]) == [wire.Cancel.__struct_config__.tag, 5]


def test_frames_sent_in_one_loop_iteration_leave_in_one_write() -> None:
    frames = [wire.Resp(1, 200, [], b"a", True), wire.Body(1, b"b", False), wire.Done(1, None), wire.Credit(2, 10)]

    async def main() -> FakeTransport:
        transport = FakeTransport()
        proto = FrameProtocol(lambda f: None, lambda exc: None)
        proto.connection_made(transport)
        for f in frames:
            proto.send(f)
        assert transport.writes == []  # nothing leaves before the scheduled flush
        await asyncio.sleep(0)  # one loop iteration: the flush runs
        assert len(transport.writes) == 1
        proto.send(wire.Tick())  # a later iteration: a second write
        await asyncio.sleep(0)
        assert len(transport.writes) == 2
        await asyncio.sleep(0)
        assert len(transport.writes) == 2  # no empty writes
        return transport

    transport = asyncio.run(main())
    assert transport.writes[0] == b"".join(wire.encode(f) for f in frames)
    assert receive_all(transport.writes) == [*frames, wire.Tick()]


def test_close_flushes_pending_frames_before_closing() -> None:
    async def main() -> FakeTransport:
        transport = FakeTransport()
        proto = FrameProtocol(lambda f: None, lambda exc: None)
        proto.connection_made(transport)
        proto.send(wire.Stop())
        proto.close()
        assert transport.closed
        assert transport.writes == [wire.encode(wire.Stop())]
        await asyncio.sleep(0)  # the scheduled flush finds nothing left to write
        return transport

    assert asyncio.run(main()).writes == [wire.encode(wire.Stop())]


def test_frames_sent_after_the_peer_is_gone_are_dropped_and_on_lost_is_called() -> None:
    lost: list[Exception | None] = []

    async def main() -> FakeTransport:
        transport = FakeTransport()
        proto = FrameProtocol(lambda f: None, lost.append)
        proto.connection_made(transport)
        proto.send(wire.Tick())
        err = ConnectionResetError("peer gone")
        proto.connection_lost(err)
        proto.send(wire.Tick())
        await asyncio.sleep(0)
        assert lost == [err]
        return transport

    assert asyncio.run(main()).writes == []


def test_discard_input_forgets_a_half_frame_and_pending_output_counts_what_is_not_written() -> None:
    # A native gateway killed mid-frame (wire.GatewayReset): the next writer starts afresh.
    got: list[Any] = []

    async def main() -> None:
        proto = FrameProtocol(got.append, lambda exc: None)
        transport = FakeTransport()
        proto.connection_made(transport)
        cut = wire.encode(wire.Body(3, b"abcdef", True))
        proto.data_received(cut[:7])  # the dead writer's half frame
        proto.discard_input()
        proto.data_received(wire.encode(wire.Credit(4, 10)))
        assert got == [wire.Credit(4, 10)]
        proto.send(wire.Cancel(1))
        assert proto.pending_output() == len(wire.encode(wire.Cancel(1)))  # batched, not yet written
        await asyncio.sleep(0)
        assert proto.pending_output() == 0 and transport.writes == [wire.encode(wire.Cancel(1))]

    asyncio.run(main())
