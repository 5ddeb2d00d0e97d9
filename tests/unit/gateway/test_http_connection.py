"""HttpConnection driven in memory: a fake transport, a fake clock, a fake service.

The real ``Gateway`` routes (so the 100-continue rule, which lives there, is the real one);
the service behind it is a ``FakeSink``. No sockets and no event loop: the connection's
clock is injected and the tests call ``check_due`` as the gateway's sweeper would.
"""

from __future__ import annotations

import re

from anycore import wire
from anycore.gateway.states import ExchangeState
from anycore.gateway.http import Limits

from tests.unit.gateway.fakes import FakeTransport, answer, connect, gateway

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def statuses(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: example\r\n{extra}\r\n".encode()


# -- pipelining ----------------------------------------------------------------------------
def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(get("/a") + get("/b") + get("/c"))  # three requests in one read
    # Only the head is handed on; the others are parsed and held, and reading pauses.
    assert [e.path for e in sink.submitted] == ["/a"]
    assert not transport.reading
    assert [e.state for e in conn.pipeline] == [ExchangeState.QUEUED, ExchangeState.RECEIVING, ExchangeState.RECEIVING]
    for n, path in enumerate(["/a", "/b", "/c"], 1):
        assert [e.path for e in sink.submitted] == ["/a", "/b", "/c"][:n]  # the next only once answered
        exchange = sink.submitted[-1]
        sink.run(exchange)
        answer(exchange, path.encode())
    data = transport.data
    assert statuses(data) == [200, 200, 200]
    assert data.index(b"\r\n\r\n/a") < data.index(b"\r\n\r\n/b") < data.index(b"\r\n\r\n/c")
    assert transport.reading and not transport.closed  # all answered: read on (keep-alive)
    assert not conn.pipeline


def test_a_request_after_connection_close_is_not_read() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(get("/a", "Connection: close\r\n") + get("/b"))
    sink.run(sink.submitted[0])
    answer(sink.submitted[0])
    assert [e.path for e in sink.submitted] == ["/a"]
    assert statuses(transport.data) == [200] and transport.closed


# -- limits -------------------------------------------------------------------------------
def test_headers_over_max_header_bytes_get_431() -> None:
    gw, sink = gateway(Limits(max_header_bytes=512))
    conn, transport, _ = connect(gw)
    conn.data_received(get("/", f"X-Big: {'x' * 600}\r\n"))
    assert statuses(transport.data) == [431] and transport.closed
    assert not sink.submitted


def test_a_target_over_max_target_gets_414() -> None:
    gw, sink = gateway(Limits(max_target=64))
    conn, transport, _ = connect(gw)
    conn.data_received(get("/" + "a" * 100))
    assert statuses(transport.data) == [414] and transport.closed
    assert not sink.submitted


def test_a_target_at_max_target_is_served() -> None:
    gw, sink = gateway(Limits(max_target=64))
    conn, transport, _ = connect(gw)
    conn.data_received(get("/" + "a" * 63))
    assert len(sink.submitted) == 1 and not transport.data


def test_a_body_over_the_services_max_body_gets_413_while_reading() -> None:
    gw, sink = gateway()
    sink.max_body = 10
    conn, transport, _ = connect(gw)
    head = b"POST /up HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n"
    conn.data_received(head + b"6\r\nabcdef\r\n")  # 6 of 10: fine
    assert not transport.data
    conn.data_received(b"6\r\nghijkl\r\n")  # 12 > 10
    assert statuses(transport.data) == [413] and transport.closed
    assert sink.gone == sink.submitted  # the service is told the request is over


def test_a_stalled_body_gets_408_after_body_timeout_and_each_byte_rearms_it() -> None:
    gw, sink = gateway()
    conn, transport, clock = connect(gw)
    conn.data_received(b"POST /up HTTP/1.1\r\nHost: example\r\nContent-Length: 10\r\n\r\nabc")
    exchange = sink.submitted[0]
    timeout = exchange.body_timeout
    clock.advance(timeout - 1)
    conn.check_due(clock())
    conn.data_received(b"de")  # a byte re-arms the timeout
    clock.advance(timeout - 1)
    conn.check_due(clock())
    assert not transport.data
    clock.advance(2)
    conn.check_due(clock())
    assert statuses(transport.data) == [408] and transport.closed
    assert exchange.state is ExchangeState.COMPLETE and sink.gone == [exchange]


def test_headers_not_complete_within_header_timeout_get_408() -> None:
    gw, _ = gateway(Limits(header_timeout=10.0))
    conn, transport, clock = connect(gw)
    conn.data_received(b"GET / HTTP/1.1\r\nHost: exa")
    clock.advance(9.9)
    conn.check_due(clock())
    assert not transport.data
    clock.advance(0.2)
    conn.check_due(clock())
    assert statuses(transport.data) == [408] and transport.closed


def test_an_idle_keepalive_connection_is_closed_after_keepalive_timeout() -> None:
    gw, sink = gateway(Limits(keepalive_timeout=5.0))
    conn, transport, clock = connect(gw)
    conn.data_received(get("/"))
    sink.run(sink.submitted[0])
    answer(sink.submitted[0])
    clock.advance(4.9)
    conn.check_due(clock())
    assert not transport.closed
    clock.advance(0.2)
    conn.check_due(clock())
    assert transport.closed


def test_connections_past_max_connections_get_503() -> None:
    gw, _ = gateway(Limits(max_connections=2))
    first, _, _ = connect(gw)
    second, _, _ = connect(gw)
    third, transport, _ = connect(gw)
    assert statuses(transport.data) == [503] and transport.closed
    assert b"retry-after: 1" in transport.data
    assert gw.connections == {first, second}
    first.connection_lost(None)  # one leaves: the next is served
    fourth, transport, _ = connect(gw)
    assert not transport.data and fourth in gw.connections


# -- 100-continue ----------------------------------------------------------------------------
EXPECT = b"POST /up HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"


def test_100_continue_is_sent_once_when_the_service_takes_the_request() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(EXPECT)
    assert transport.data == CONTINUE
    conn.data_received(b"hello")
    exchange = sink.submitted[0]
    worker = sink.run(exchange)
    assert worker.frames[0].body == b"hello"  # type: ignore[union-attr]
    answer(exchange)
    assert transport.data.count(b"100 Continue") == 1
    assert statuses(transport.data) == [100, 200]


def test_100_continue_is_sent_for_a_request_whose_body_the_service_buffers() -> None:
    gw, sink = gateway()

    def buffer_it(exchange):  # what the runtime does with a small body not yet here
        exchange.reserved, exchange.waiting = 5, True

    sink.on_submit = buffer_it
    conn, transport, _ = connect(gw)
    conn.data_received(EXPECT)
    assert transport.data == CONTINUE
    conn.data_received(b"hello")
    assert sink.placed == sink.submitted  # body complete: placed


def test_no_100_continue_when_the_service_answers_at_once() -> None:
    gw, sink = gateway()
    sink.on_submit = lambda exchange: exchange.fail(413, "payload too large", "over max_body")
    conn, transport, _ = connect(gw)
    conn.data_received(EXPECT)
    assert statuses(transport.data) == [413]
    assert b"100 Continue" not in transport.data


def test_no_100_continue_after_the_services_answer_on_a_connection_kept_open() -> None:
    """A pipelined request whose body is already here: the service's 503 keeps the
    connection, so a 100 after it would corrupt the stream."""
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(get("/a") + EXPECT + b"hello")
    first = sink.submitted[0]
    sink.on_submit = lambda exchange: exchange.fail(503, "overloaded", "retry", 1)
    sink.run(first)
    answer(first)
    assert statuses(transport.data) == [200, 503] and not transport.closed
    assert b"100 Continue" not in transport.data


def test_no_100_continue_without_expect() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(b"POST /up HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\n")
    assert not transport.data and len(sink.submitted) == 1


def test_no_100_continue_for_an_unrouted_request() -> None:
    gw, sink = gateway()
    sink.routes = ["/api"]
    gw.add_service(sink)
    conn, transport, _ = connect(gw)
    conn.data_received(EXPECT)
    assert statuses(transport.data) == [404]


# -- the reservation of a buffered body ------------------------------------------------------
def test_a_buffered_request_answered_by_the_node_gives_its_reservation_back() -> None:
    gw, sink = gateway()
    sink.max_body = 10

    def buffer_it(exchange):
        exchange.reserved, exchange.waiting = 64, True

    sink.on_submit = buffer_it
    conn, transport, _ = connect(gw)
    conn.data_received(b"POST /up HTTP/1.1\r\nHost: example\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"c\r\nabcdefghijkl\r\n")
    exchange = sink.submitted[0]
    assert statuses(transport.data) == [413]
    assert sink.unreserved == [exchange] and exchange.reserved == 0 and not exchange.waiting


def test_a_worker_response_streams_with_chunked_framing_and_credit() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    conn.data_received(get("/stream"))
    exchange = sink.submitted[0]
    worker = sink.run(exchange)
    exchange.on_frame(wire.Resp(exchange.id, 200, [], b"ab", True))
    assert exchange.state is ExchangeState.RESPONDING
    exchange.on_frame(wire.Body(exchange.id, b"cd", False))
    assert transport.data.endswith(b"2\r\nab\r\n2\r\ncd\r\n0\r\n\r\n")
    assert any(type(f) is wire.Credit for f in worker.frames)
    assert exchange.state is ExchangeState.COMPLETE


def test_fake_transport_refuses_a_double_pause() -> None:
    """The fake is strict: a connection that paused twice would be caught."""
    transport = FakeTransport()
    transport.pause_reading()
    try:
        transport.pause_reading()
    except AssertionError:
        return
    raise AssertionError("a double pause went unnoticed")
