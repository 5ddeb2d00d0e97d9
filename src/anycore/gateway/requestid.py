"""L1 — request ids and W3C trace context, as the gateway reads them from a request's headers.

Every request carries exactly one ``x-request-id`` from the gateway on: the client's own
when it is 1..``MAX_LENGTH`` bytes of visible ASCII (0x21-0x7E), else (absent, too long,
a space, a control byte, non-ASCII) one made here. An invalid one is replaced, never
echoed: the id is written into response headers and log lines, so it must not be able to
split a line or forge a field. The app sees the id in its scope's headers, the client gets
it back on every response of the request (the node's own 502/503/504/413 answers too), and
the access log and the node's lines about the request (retry, quarantine, 502, deadline)
name it. A request spilled to a peer takes its id along in the headers of its ``Req``
frame.

A made id is this process's random prefix (48 bits, new in every process, including a
forked one) and a counter: unique across the requests of a node and, with overwhelming
odds, across nodes and restarts; made without a system call or a random draw per request
(the hot path pays a bytes formatting, ~0.1 µs).

``traceparent`` is checked loosely against W3C Trace Context level 1: two hex digits of
version (not ``ff``), a 32-hex trace id and a 16-hex parent id (neither all zeros), two hex
digits of flags; version ``00`` has nothing after, a later version may. Hex is accepted in
either case. A valid one reaches the app unchanged, with its ``tracestate``; an invalid
one is dropped together with ``tracestate``, so the app's tracer starts a new trace rather
than continue a garbled one (the spec's rule for a receiver that cannot parse it).
"""

from __future__ import annotations

import itertools
import os
import re

MAX_LENGTH = 200
HEADER = b"x-request-id"
_VISIBLE = bytes(range(0x21, 0x7F))
_TRACEPARENT = re.compile(rb"([0-9a-fA-F]{2})-([0-9a-fA-F]{32})-([0-9a-fA-F]{16})-[0-9a-fA-F]{2}(-.*)?\Z", re.S)
_ZERO_TRACE = b"0" * 32
_ZERO_PARENT = b"0" * 16


def _new_prefix() -> None:
    global _prefix, _counter
    _prefix = os.urandom(6).hex().encode() + b"-"
    _counter = itertools.count(1)


_prefix = b""
_counter = itertools.count(1)
_new_prefix()
os.register_at_fork(after_in_child=_new_prefix)  # a forked process never repeats its parent's ids


def accept(value: bytes) -> bytes | None:
    """The client's id if it may be used as it is, else None (the gateway makes one)."""
    if 0 < len(value) <= MAX_LENGTH and not value.translate(None, _VISIBLE):
        return value
    return None


def generate() -> bytes:
    """A new id: ``<12 hex of this process>-<counter in hex>``."""
    return _prefix + b"%x" % next(_counter)


def valid_traceparent(value: bytes) -> bool:
    match = _TRACEPARENT.match(value.strip())
    if match is None:
        return False
    version, trace, parent, rest = match.groups()
    if version.lower() == b"ff" or (version == b"00" and rest is not None):
        return False
    return trace != _ZERO_TRACE and parent != _ZERO_PARENT


def find(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The id in headers the gateway already checked (a peer's request: its ``Req`` frame)."""
    for name, value in headers:
        if name == HEADER:
            return accept(value) or b""
    return b""
