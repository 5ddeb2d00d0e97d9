"""The chunked body decoder (gateway.chunked): pure, fed byte strings, no sockets."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from anycore.gateway.chunked import ChunkedDecoder, ChunkError


def decode(data: bytes, split: int | None = None, max_meta: int = 1024) -> tuple[bytes, bytes]:
    decoder = ChunkedDecoder(max_meta)
    parts = [data] if split is None else [data[i:i + split] for i in range(0, len(data), split)]
    out = b""
    for part in parts:
        out += b"".join(decoder.feed(part))
        if decoder.done:
            break
    assert decoder.done
    return out, decoder.rest


@pytest.mark.parametrize("size_line", [b"5", b"5;a", b"5;a=b", b"5; a=b", b"5 ; a = b", b'5;a="x \\"y\\" z"',
                                       b"5;a;b=c;d", b"5\t;a", b"0005"])
def test_chunk_extensions_are_accepted_with_the_whitespace_rfc_9112_allows(size_line: bytes) -> None:
    assert decode(size_line + b"\r\nhello\r\n0\r\n\r\n") == (b"hello", b"")


@pytest.mark.parametrize("body", [
    b"zz\r\nhello\r\n0\r\n\r\n", b"-5\r\nhello\r\n0\r\n\r\n", b"0x5\r\nhello\r\n0\r\n\r\n", b" 5\r\nhello\r\n0\r\n\r\n",
    b"11111111111111111\r\n", b"5\r\nhelloXX", b"5\nhello\r\n0\r\n\r\n", b"5;=b\r\nhello\r\n", b"5;a=\"x\r\nhello\r\n",
    b"0\r\nHost: evil\r\n\r\n", b"0\r\ncontent-length: 5\r\n\r\n", b"0\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"0\r\nX_Under: a\r\n\r\n", b"5 \r\nhello\r\n", b"0\t\r\n\r\n", b"0\r\nno colon\r\n\r\n", b"0\r\n : a\r\n\r\n",
])
def test_malformed_chunked_bodies_are_refused(body: bytes) -> None:
    decoder = ChunkedDecoder(1024)
    with pytest.raises(ChunkError):
        decoder.feed(body)


def test_allowed_trailers_are_dropped_and_the_next_request_is_left_over() -> None:
    assert decode(b"3\r\nabc\r\n0\r\nX-Checksum: 1\r\nX-B:\r\n\r\nGET / HTTP/1.1\r\n") == (b"abc", b"GET / HTTP/1.1\r\n")


def test_extensions_and_trailers_count_toward_the_limit_but_many_chunks_do_not() -> None:
    many = b"".join(b"1\r\nx\r\n" for _ in range(5000)) + b"0\r\n\r\n"
    assert decode(many, max_meta=64) == (b"x" * 5000, b"")
    with pytest.raises(ChunkError, match="exceed"):
        ChunkedDecoder(64).feed(b"".join(b"1;ext=" + b"v" * 10 + b"\r\nx\r\n" for _ in range(10)))
    with pytest.raises(ChunkError, match="exceed"):
        ChunkedDecoder(64).feed(b"0\r\n" + b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 10) for i in range(10)))
    with pytest.raises(ChunkError, match="line exceeds"):
        ChunkedDecoder(64).feed(b"5;" + b"a" * 100)  # no CRLF yet: a line cannot grow without bound


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=8), st.integers(1, 40))
def test_any_split_of_the_input_decodes_the_same(chunks: list[bytes], split: int) -> None:
    body = b"".join(b"%x;n=v\r\n%b\r\n" % (len(c), c) for c in chunks) + b"0\r\nX-T: 1\r\n\r\nNEXT"
    out, rest = decode(body, split)
    assert out == b"".join(chunks)
    assert b"NEXT".startswith(rest)  # what followed the body in the part where it ended
    assert decode(body) == (b"".join(chunks), b"NEXT")
