"""Request ids and trace context through the real HttpConnection, in memory (gateway.requestid).

What the app gets is the ``Req`` frame's headers (what the worker builds the scope from);
what the client gets is the bytes written to the fake transport.
"""

from __future__ import annotations

import os
import re

from anycore import wire
from anycore.gateway import requestid
from anycore.gateway.server import Gateway
from anycore.log import LogFormat

from tests.unit.gateway.fakes import answer, connect, gateway

TRACEPARENT = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def request(extra: bytes = b"", path: bytes = b"/") -> bytes:
    return b"GET " + path + b" HTTP/1.1\r\nHost: example\r\n" + extra + b"\r\n"


def one(extra: bytes = b"", reply: list[tuple[bytes, bytes]] | None = None) -> tuple[wire.Req, bytes]:
    """Send one request, run it on a fake worker, answer it; (the frame the app got, the response)."""
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(request(extra))
    exchange = sink.submitted[0]
    worker = sink.run(exchange)
    frame = worker.frames[0]
    assert isinstance(frame, wire.Req)
    exchange.on_frame(wire.Resp(exchange.id, 200, reply or [], b"ok", False))
    return frame, transport.data


def ids_in(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    return [v for k, v in headers if k == b"x-request-id"]


def response_ids(data: bytes) -> list[bytes]:
    return re.findall(rb"\r\nx-request-id: ([^\r]*)\r\n", data)


def test_a_client_s_id_reaches_the_app_once_and_comes_back() -> None:
    frame, data = one(b"X-Request-ID: abc-123_Z.9\r\n")
    assert ids_in(frame.headers) == [b"abc-123_Z.9"]
    assert response_ids(data) == [b"abc-123_Z.9"]


def test_an_id_is_made_when_absent_unique_per_request() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    made = []
    for _ in range(50):
        conn.data_received(request())
        exchange = sink.submitted[-1]
        worker = sink.run(exchange)
        assert ids_in(worker.frames[0].headers) == [exchange.rid]  # type: ignore[union-attr]
        made.append(exchange.request_id)
        answer(exchange)
    assert len(set(made)) == 50 and all(re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", m) for m in made)
    assert [m.decode() for m in response_ids(transport.data)] == made


def test_an_invalid_id_is_replaced_not_echoed() -> None:
    for bad in (b"x" * (requestid.MAX_LENGTH + 1), b"has space", b"tab\there", b"caf\xc3\xa9", b"\xff"):  # (a control byte: llhttp answers 400)
        frame, data = one(b"x-request-id: " + bad + b"\r\n")
        (given,) = ids_in(frame.headers)
        assert given != bad and re.fullmatch(rb"[0-9a-f]{12}-[0-9a-f]+", given), bad
        assert response_ids(data) == [given] and bad not in data
    frame, _ = one(b"x-request-id: " + b"y" * requestid.MAX_LENGTH + b"\r\n")
    assert ids_in(frame.headers) == [b"y" * requestid.MAX_LENGTH]  # the bound itself is fine


def test_of_several_ids_the_first_valid_one_is_kept_and_only_it_goes_on() -> None:
    frame, _ = one(b"x-request-id: bad one\r\nx-request-id: good\r\nx-request-id: later\r\n")
    assert ids_in(frame.headers) == [b"good"]


def test_the_app_s_own_x_request_id_does_not_go_out_beside_the_gateway_s() -> None:
    _, data = one(b"x-request-id: mine\r\n", reply=[(b"X-Request-Id", b"app-made")])
    assert response_ids(data) == [b"mine"] and b"app-made" not in data


def test_a_valid_traceparent_and_its_tracestate_reach_the_app_unchanged() -> None:
    for value in (TRACEPARENT, TRACEPARENT.upper().replace(b"X", b"x"),
                  b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future-part"):
        frame, _ = one(b"traceparent: " + value + b"\r\ntracestate: congo=t61rcWkgMzE,rojo=00f067aa0ba902b7\r\n")
        headers = dict(frame.headers)
        assert headers[b"traceparent"] == value
        assert headers[b"tracestate"] == b"congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"


def test_an_invalid_traceparent_is_dropped_with_its_tracestate() -> None:
    for bad in (b"garbage", b"ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                b"00-" + b"0" * 32 + b"-00f067aa0ba902b7-01", b"00-4bf92f3577b34da6a3ce929d0e0e4736-" + b"0" * 16 + b"-01",
                TRACEPARENT + b"-extra", TRACEPARENT[:-1]):
        frame, _ = one(b"tracestate: a=b\r\ntraceparent: " + bad + b"\r\n")  # tracestate first: still dropped
        names = [k for k, _ in frame.headers]
        assert b"traceparent" not in names and b"tracestate" not in names, bad


def test_node_made_answers_carry_the_id() -> None:
    gw, sink = gateway()
    sink.on_submit = lambda exchange: exchange.fail(503, "overloaded", "full", 1)
    conn, transport, _ = connect(gw)
    conn.data_received(request(b"x-request-id: r-503\r\n"))
    assert b"HTTP/1.1 503" in transport.data and response_ids(transport.data) == [b"r-503"]


def test_refusals_by_the_connection_carry_an_id_too() -> None:
    gw, _ = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nx-request-id: r-400\r\n\r\n")  # a second Host: 400
    assert b"HTTP/1.1 400" in transport.data and len(response_ids(transport.data)) == 1
    gw, sink = gateway()
    conn, transport, clock = connect(gw)
    conn.data_received(b"POST / HTTP/1.1\r\nHost: a\r\nx-request-id: r-408\r\ncontent-length: 10\r\n\r\n01")
    clock.advance(sink.submitted[0].body_timeout + 1)
    conn.check_due(clock())  # the rest of the body never came: 408 from the connection
    assert b"HTTP/1.1 408" in transport.data and response_ids(transport.data) == [b"r-408"]


def test_a_forked_process_makes_other_ids() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its first id, then out without running anything else
        os.write(write, requestid.generate())
        os._exit(0)
    os.close(write)
    child = os.read(read, 100)
    os.close(read)
    os.waitpid(pid, 0)
    assert child.split(b"-")[0] != requestid.generate().split(b"-")[0]


def test_the_combined_line_of_an_exchange() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(b'GET /a%20b?q=1 HTTP/1.1\r\nHost: x\r\nReferer: http://r/\r\nUser-Agent: say "hi"\r\n\r\n')
    exchange = sink.submitted[0]
    sink.run(exchange)
    answer(exchange, b"hello")
    line = Gateway._combined(exchange, "127.0.0.1", 0.0)
    assert line.startswith("127.0.0.1 - - [") and line.endswith(
        '] "GET /a%20b?q=1 HTTP/1.1" 200 5 "http://r/" "say \\"hi\\""'), line
    assert Gateway(gw.log, gw.limits, "combined").access_log is LogFormat.COMBINED
    assert Gateway(gw.log, gw.limits, True).access_log is LogFormat.LOGFMT
    assert Gateway(gw.log, gw.limits).access_log is None
