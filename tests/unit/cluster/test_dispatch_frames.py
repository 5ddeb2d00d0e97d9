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
