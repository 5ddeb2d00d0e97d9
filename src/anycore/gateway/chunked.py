"""L0 — a request body in the chunked transfer coding (RFC 9112 §7.1), decoded incrementally.

The gateway parses request heads with llhttp but decodes chunked bodies itself: llhttp
refuses the optional whitespace RFC 9112 allows around chunk extensions (``5 ; name=value``
is valid and is what some clients send), and gives no count of extension and trailer
bytes, which an attacker could otherwise send without limit. Rules kept here:

- a chunk-size line is ``1*HEXDIG *(BWS ";" BWS name [BWS "=" BWS (token | quoted-string)])``
  ending in CRLF; extensions are checked for syntax and ignored; at most 16 hex digits;
- chunk data is followed by CRLF exactly;
- trailer fields are checked like header fields and dropped; one that frames or routes
  the request (``Host``, ``Content-Length``, ``Transfer-Encoding``, ...) is refused, since a
  component that merged trailers into the headers would see a different request;
- no whitespace after the size unless an extension follows (``0 `` is refused, ``0 ;a``
  is not), as gunicorn and RFC 9112's grammar have it;
- every byte of chunk extensions and trailers counts against ``max_meta`` (the gateway
  passes its header limit), and no single line may be longer, so metadata is bounded
  like a request's head while a body of many small chunks is not.

``feed`` returns the body bytes decoded from the input and consumes nothing past the end
of the body; ``done`` is then True and ``rest`` holds the unconsumed input (the next
pipelined request). A violation raises ``ChunkError`` with the reason (answered 400).
"""

from __future__ import annotations

import re
from enum import Enum

_TOKEN = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = rb'"(?:[\t !#-\[\]-~\x80-\xff]|\\[\t -~\x80-\xff])*"'
_EXT = rb"(?:[ \t]*;[ \t]*" + _TOKEN + rb"(?:[ \t]*=[ \t]*(?:" + _TOKEN + rb"|" + _QUOTED + rb"))?)*"
_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})" + _EXT)  # whitespace only before a ";" (BWS)
_FIELD = re.compile(rb"(" + _TOKEN + rb"):[ \t]*([\t -~\x80-\xff]*?)[ \t]*")
FORBIDDEN_TRAILERS = frozenset({  # framing and routing (RFC 9110 §6.5.1); other trailers are just dropped
    b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"te", b"trailer", b"upgrade",
    b"keep-alive",
})


class ChunkError(Exception):
    """The chunked body is malformed; the message says how."""


class _State(Enum):
    SIZE = "size"  # reading a chunk-size line
    DATA = "data"  # reading chunk data
    DATA_END = "data-end"  # the CRLF after chunk data
    TRAILER = "trailer"  # reading trailer lines, until an empty one
    DONE = "done"


class ChunkedDecoder:
    __slots__ = ("state", "left", "line", "meta", "max_meta", "rest")

    def __init__(self, max_meta: int) -> None:
        self.state = _State.SIZE
        self.left = 0  # bytes of chunk data (or of its CRLF) still expected
        self.line = b""  # a partial size or trailer line
        self.meta = 0
        self.max_meta = max_meta
        self.rest = b""

    @property
    def done(self) -> bool:
        return self.state is _State.DONE

    def feed(self, data: bytes) -> list[bytes]:
        out: list[bytes] = []
        pos, end = 0, len(data)
        while pos < end and self.state is not _State.DONE:
            state = self.state
            if state is _State.DATA:
                take = min(self.left, end - pos)
                out.append(data[pos:pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.state, self.left = _State.DATA_END, 2
            elif state is _State.DATA_END:
                expected = b"\r\n"[2 - self.left:]
                take = min(self.left, end - pos)
                if data[pos:pos + take] != expected[:take]:
                    raise ChunkError("chunk data is not followed by CRLF")
                pos += take
                self.left -= take
                if not self.left:
                    self.state = _State.SIZE
            else:
                newline = data.find(b"\n", pos)
                stop = end if newline < 0 else newline + 1
                if len(self.line) + stop - pos > self.max_meta:
                    raise ChunkError(f"a chunk line exceeds {self.max_meta} bytes")
                self.line += data[pos:stop]
                pos = stop
                if newline >= 0:
                    line, self.line = self.line, b""
                    if not line.endswith(b"\r\n"):
                        raise ChunkError("a chunk line does not end with CRLF")
                    self._line(line[:-2])
        if self.state is _State.DONE:
            self.rest = data[pos:]
        return out

    def _line(self, line: bytes) -> None:
        if self.state is _State.SIZE:
            found = _SIZE_LINE.fullmatch(line)
            if found is None:
                raise ChunkError(f"bad chunk size line {line[:40]!r}")
            size = int(found.group(1), 16)
            self._count(len(line) - len(found.group(1)))  # the extensions
            if size:
                self.state, self.left = _State.DATA, size
            else:
                self.state = _State.TRAILER
        elif not line:
            self.state = _State.DONE
        else:
            self._count(len(line) + 2)
            field = _FIELD.fullmatch(line)
            if field is None:
                raise ChunkError(f"bad trailer field {line[:40]!r}")
            name = field.group(1).lower()
            if name in FORBIDDEN_TRAILERS or name.find(b"_") >= 0:
                raise ChunkError(f"trailer field {name.decode()!r} is not allowed")

    def _count(self, n: int) -> None:
        self.meta += n
        if self.meta > self.max_meta:
            raise ChunkError(f"chunk extensions and trailers exceed {self.max_meta} bytes")
