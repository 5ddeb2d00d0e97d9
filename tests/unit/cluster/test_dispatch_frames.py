"""Dispatch framing: batches of wire frames in one NATS message, big bodies cut in chunks."""

from __future__ import annotations

from anycore import wire
from anycore.cluster.dispatch import Claim, claim_decoder, claim_encoder, decode_batch, split


def test_a_batch_of_frames_decodes_in_order():
    frames = [wire.Body(1, b"abc", True), wire.Credit(2, 10), wire.Cancel(3), wire.Done(1, None)]
    assert decode_batch(b"".join(wire.encode(f) for f in frames)) == frames


def test_a_big_body_is_cut_into_chunks_that_keep_more_until_the_end():
    data = bytes(range(256)) * 1000  # 256000 bytes
    pieces = split(wire.Body(7, data, False))
    assert all(len(p.data) <= wire.CHUNK for p in pieces)
    assert b"".join(p.data for p in pieces) == data
    assert [p.more for p in pieces] == [True] * (len(pieces) - 1) + [False]
    streaming = split(wire.Body(7, data, True))
    assert all(p.more for p in streaming)


def test_a_big_first_response_frame_becomes_resp_then_bodies():
    data = b"y" * (wire.CHUNK * 2 + 5)
    pieces = split(wire.Resp(9, 200, [(b"a", b"b")], data, False))
    assert type(pieces[0]) is wire.Resp and pieces[0].more and len(pieces[0].body) == wire.CHUNK
    assert all(type(p) is wire.Body for p in pieces[1:]) and not pieces[-1].more
    assert pieces[0].body + b"".join(p.data for p in pieces[1:]) == data
    small = wire.Resp(9, 200, [], b"ok", False)
    assert split(small) == [small]


def test_a_claim_round_trips():
    req = wire.Req(5, "GET", "/x", b"/x", b"q=1", [(b"host", b"h")], "1.1", "http", ("127.0.0.1", 5), None, "", b"", False)
    claim = Claim("node-a", 12.5, req)
    assert claim_decoder.decode(claim_encoder.encode(claim)) == claim


def _runner(body: bytes = b"", more: bool = False):
    """A RemoteExchange whose frames to the origin are recorded (in memory, no NATS)."""
    from anycore.cluster.dispatch import Link, RemoteExchange

    sent: list[bytes] = []
    link = Link(lambda subject, data: sent.append(data), "anycore.node.a.out.b")
    req = wire.Req(41, "POST", "/x", b"/x", b"", [(b"host", b"h")], "1.1", "http", None, None, "", body, more)
    finished: list[object] = []
    remote = RemoteExchange("a", link, req, deadline=30.0, now=0.0, on_finished=finished.append)
    return remote, link, sent, finished


def _flushed(link, sent):
    link.flush()
    return [f for data in sent for f in decode_batch(data)]


def test_a_node_answer_before_the_response_goes_back_as_a_json_response_for_the_origin_id():
    import asyncio
    import json

    async def run() -> None:
        remote, link, sent, finished = _runner(b"abc")
        assert remote.body_done and remote.buffered == 3  # the whole body came with the claim
        remote.fail(503, "overloaded", "busy", retry_after=2)
        (frame,) = _flushed(link, sent)
        assert type(frame) is wire.Resp and frame.id == 41 and frame.status == 503 and not frame.more
        assert json.loads(frame.body)["error"] == "overloaded" and (b"retry-after", b"2") in frame.headers
        assert finished == [remote] and remote.response_complete

    asyncio.run(run())


def test_a_failure_after_the_response_started_tells_the_origin_to_abort():
    import asyncio

    async def run() -> None:
        remote, link, sent, finished = _runner()
        remote.on_frame(wire.Resp(remote.id, 200, [], b"part", True))
        remote.fail(504, "deadline passed", "too slow")
        frames = _flushed(link, sent)
        assert [type(f) for f in frames] == [wire.Resp, wire.Done]
        assert frames[1].id == 41 and "deadline passed" in frames[1].error
        assert finished == [remote]

    asyncio.run(run())


def test_credit_is_relayed_both_ways_and_a_streamed_body_is_fed_in_order():
    import asyncio

    async def run() -> None:
        remote, link, sent, _ = _runner(more=True)
        assert not remote.body_done
        remote.from_origin(wire.Body(41, b"one", True))
        remote.from_origin(wire.Body(41, b"two", False))
        assert list(remote.body) == [b"one", b"two"] and remote.body_done
        remote.on_frame(wire.Credit(remote.id, 100))  # the worker consumed request body
        (frame,) = _flushed(link, sent)
        assert frame == wire.Credit(41, 100)

    asyncio.run(run())
