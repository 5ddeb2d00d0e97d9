"""The exchange's legality as a state: ExchangeState moved along TRANSITIONS, nothing else.

The exchange is driven the way its callers drive it (the connection admits it, the service
runtime sets ``waiting`` and ``worker`` and calls ``on_dispatched``/``fail``, the worker's
frames answer it), against a recording stand-in for its client connection.
"""

from __future__ import annotations

import itertools

import pytest

from anycore import wire
from anycore.errors import IllegalTransition
from anycore.gateway.exchange import Exchange
from anycore.gateway.states import TRANSITIONS, ExchangeState

from tests.unit.gateway.fakes import FakeChannel, FakeSink, reachable

X = ExchangeState


class Conn:
    """What an exchange needs of its client connection (exchange.Connection), recorded."""

    def __init__(self) -> None:
        self.client = ("127.0.0.1", 40000)
        self.closed = self.closing = self.writing_paused = False
        self.node_header = b"anycore-node: n1\r\n"
        self.out: list[bytes] = []
        self.done: list[Exchange] = []
        self.aborted = False
        self.flow: list[bool] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def body_flow(self, ok: bool) -> None:
        self.flow.append(ok)

    def response_done(self, exchange: Exchange) -> None:
        self.done.append(exchange)

    def abort(self) -> None:
        self.aborted = self.closed = True


def exchange(method: str = "GET", content_length: int | None = None) -> tuple[Exchange, Conn, FakeSink]:
    conn = Conn()
    ex = Exchange(conn, method, b"/p", b"", [(b"host", b"h")], "1.1", True, content_length, False, 0.0)  # type: ignore[arg-type]
    return ex, conn, FakeSink()


def views(ex: Exchange) -> tuple[bool, bool, bool, bool]:
    return ex.admitted, ex.waiting, ex.response_started, ex.response_complete


def test_the_table_is_closed_and_complete_is_final() -> None:
    assert set(TRANSITIONS) == set(ExchangeState)
    assert all(targets <= set(ExchangeState) for targets in TRANSITIONS.values())
    assert TRANSITIONS[X.COMPLETE] == frozenset()
    assert all(state not in targets for state, targets in TRANSITIONS.items())  # no self-loops


def test_the_table_keeps_the_exchanges_rules() -> None:
    # Who may answer: once the response started, nothing sends it back to a worker or a queue.
    for started in (X.RESPONDING, X.COMPLETE):
        assert reachable(TRANSITIONS, started) <= {X.RESPONDING, X.COMPLETE}
    # Every exchange can end, from anywhere; every state is reachable from the parse.
    assert all(state is X.COMPLETE or X.COMPLETE in reachable(TRANSITIONS, state) for state in X)
    assert reachable(TRANSITIONS, X.RECEIVING) == set(X) - {X.RECEIVING}
    # Nothing runs or answers before it was admitted: RECEIVING leads only to QUEUED.
    assert TRANSITIONS[X.RECEIVING] == {X.QUEUED}
    # A buffering request is placed (QUEUED) before it runs: WAITING never goes straight to RUNNING.
    assert X.RUNNING not in TRANSITIONS[X.WAITING]


def test_a_request_with_a_buffered_body_walks_receiving_to_complete() -> None:
    ex, conn, sink = exchange("POST", content_length=4)
    assert ex.state is X.RECEIVING and views(ex) == (False, False, False, False)
    ex.admit()
    ex.service = sink
    assert ex.state is X.QUEUED and views(ex) == (True, False, False, False)
    ex.reserved, ex.waiting = 4, True  # the runtime buffers the body before placing it
    assert ex.state is X.WAITING and ex.waiting
    ex.feed_body(b"ab")
    assert ex.state is X.WAITING
    ex.feed_body(b"cd")
    ex.end_body()  # body complete: the service places it (FakeSink.place_buffered unreserves)
    assert sink.placed == [ex] and ex.state is X.QUEUED and not ex.waiting
    worker = FakeChannel()
    ex.on_dispatched(worker, 1.0)
    assert ex.state is X.RUNNING and ex.worker is worker and ex.release == worker.release
    ex.on_frame(wire.Resp(ex.id, 200, [], b"he", True))
    assert ex.state is X.RESPONDING and views(ex) == (True, False, True, False)
    ex.on_frame(wire.Body(ex.id, b"llo", False))
    assert ex.state is X.COMPLETE and views(ex) == (True, False, True, True)
    assert conn.done == [ex]


def test_a_dead_worker_sends_a_running_request_back_to_the_queue() -> None:
    ex, _, sink = exchange()
    ex.service = sink  # a service taking it admits it (a peer's request has no connection)
    assert ex.state is X.QUEUED
    ex.on_dispatched(FakeChannel(1), 1.0)
    ex.worker = None  # the runtime, when the worker died: retry
    assert ex.state is X.QUEUED and ex.worker is None
    ex.on_dispatched(FakeChannel(2), 2.0)
    assert ex.state is X.RUNNING and ex.worker.id == 2  # type: ignore[union-attr]


def test_a_dead_worker_leaves_a_started_response_started() -> None:
    ex, conn, sink = exchange()
    ex.service = sink
    ex.on_dispatched(FakeChannel(), 1.0)
    ex.on_frame(wire.Resp(ex.id, 200, [], b"x", True))
    ex.worker = None
    assert ex.state is X.RESPONDING
    ex.fail(502, "worker died", "mid-response")  # the node can only abort now
    assert ex.state is X.COMPLETE and conn.aborted


@pytest.mark.parametrize("before", ["queued", "waiting", "running"])
def test_the_node_answers_from_each_state_before_the_response(before: str) -> None:
    ex, conn, sink = exchange("POST", content_length=10)
    ex.admit()
    ex.service = sink
    if before == "waiting":
        ex.reserved, ex.waiting = 10, True
    elif before == "running":
        ex.on_dispatched(FakeChannel(), 1.0)
    ex.fail(503, "overloaded", "retry", 1)
    assert ex.state is X.COMPLETE
    head = b"".join(conn.out)
    assert head.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in head
    assert b"connection: close" in head  # the body was not read: framing is lost
    # Leaving WAITING for an answer hands the reservation back, exactly once.
    assert sink.unreserved == ([ex] if before == "waiting" else [])
    ex.fail(504, "late", "again")  # a second answer changes nothing
    assert b"".join(conn.out) == head


def test_a_dropped_request_writes_nothing_the_worker_sends_later() -> None:
    ex, conn, sink = exchange()
    ex.service = sink
    ex.on_dispatched(FakeChannel(), 1.0)
    ex.drop()
    assert ex.state is X.COMPLETE
    ex.on_frame(wire.Resp(ex.id, 200, [], b"late", False))
    assert conn.out == []


def test_a_claim_confirmed_after_the_answer_keeps_the_exchange_complete() -> None:
    """A peer confirms a claim after the request was refused meanwhile: the worker is
    recorded (its frames find the exchange) but the state does not go back."""
    ex, _, sink = exchange()
    ex.service = sink
    ex.fail(408, "timeout", "body")
    ex.on_dispatched(FakeChannel(), 1.0)
    assert ex.state is X.COMPLETE


def test_setting_the_views_drives_the_state_the_way_a_peer_exchange_does() -> None:
    """cluster.dispatch.RemoteExchange writes response_started/response_complete itself."""
    ex, _, sink = exchange()
    ex.service = sink
    ex.on_dispatched(FakeChannel(), 1.0)
    ex.response_started = True
    assert ex.state is X.RESPONDING
    ex.response_started = True  # already: no change
    ex.response_complete = True
    assert ex.state is X.COMPLETE
    with pytest.raises(IllegalTransition):
        ex.response_complete = False
    peer, _, _ = exchange()  # a peer's request answered before a service took it (a refused claim)
    peer.response_started = True
    assert peer.state is X.RESPONDING and peer.admitted


ALL = list(ExchangeState)


@pytest.mark.parametrize("state,target", list(itertools.product(ALL, ALL)), ids=lambda s: s.value)
def test_every_edge_off_the_table_raises_and_every_edge_on_it_does_not(state: ExchangeState,
                                                                        target: ExchangeState) -> None:
    ex, _, _ = exchange()
    ex.state = state
    if target in TRANSITIONS[state]:
        ex._to(target)
        assert ex.state is target
    else:
        with pytest.raises(IllegalTransition) as info:
            ex._to(target)
        assert f"{state.value} -> {target.value}" in str(info.value)
        assert ex.state is state


def test_illegal_moves_through_the_api_raise() -> None:
    ex, _, sink = exchange()
    ex.admit()
    with pytest.raises(IllegalTransition):
        ex.admit()  # handed on twice
    ex.service = sink
    ex.reserved, ex.waiting = 1, True
    with pytest.raises(IllegalTransition):
        ex.admit()  # WAITING -> QUEUED is the end of buffering, not a second admission
    ex.waiting = False
    ex.on_dispatched(FakeChannel(), 1.0)
    with pytest.raises(IllegalTransition):
        ex.waiting = True  # a running request cannot go back to buffering its body
    ex.on_frame(wire.Resp(ex.id, 204, [], b"", False))
    assert ex.state is X.COMPLETE
    with pytest.raises(IllegalTransition):
        ex.waiting = True
    ex.waiting = False  # unreserving a request that no longer waits changes nothing
    assert ex.state is X.COMPLETE
