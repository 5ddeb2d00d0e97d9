"""node/calls.py with a real ServiceRuntime over fake workers and a fake clock: a call is
placed like a request (slot, queue), its deadline is the call's budget, bodies flow under
credit both ways, and cycles are refused at once."""

from __future__ import annotations

import json

from anycore import wire
from anycore.node.calls import MAX_DEPTH, Calls
from anycore.stats import RequestStats
from tests.unit.node.fakes import FakeClock, run, service


class Caller:
    """The calling worker: an id and the frames the node sends it."""

    def __init__(self, worker_id: int = 99) -> None:
        self.id = worker_id
        self.sent: list[wire.Frame] = []

    def send(self, frame: wire.Frame) -> None:
        self.sent.append(frame)

    def answer(self) -> tuple[int, dict]:
        head = next(f for f in self.sent if type(f) is wire.CallResp)
        return head.status, json.loads(head.body) if head.body.startswith(b"{") else {}


def call(call_id: int = 1, service: str = "svc", *, timeout: float = 0.0, body: bytes = b"", more: bool = False,
         chain: str = "", method: str = "GET") -> wire.CallReq:
    headers = [(b"anycore-call-chain", chain.encode())] if chain else []
    return wire.CallReq(call_id, service, method, "/items/7", b"q=1", headers, body, more, timeout)


def setup(clock: FakeClock, **config: object):
    runtime, release = service(clock, **config)
    calls = Calls("node-1", {"svc": runtime}, clock, RequestStats())
    return runtime, release, calls


@run
async def test_a_call_is_placed_on_a_free_slot_and_its_answer_goes_back_to_the_caller():
    clock = FakeClock()
    runtime, release, calls = setup(clock, routes=["/shop"])
    worker = release.start_worker(1, slots=1)
    caller = Caller()
    calls.on_frame("front", caller, call())
    req = next(f for f in worker.sent if type(f) is wire.Req)
    assert (req.path, req.root_path, req.query) == ("/shop/items/7", "/shop", b"q=1")  # the service's own paths
    assert (b"anycore-call-chain", b"front") in req.headers and (b"host", b"svc") in req.headers
    assert req.remaining == runtime.config.timeout  # no budget given: the service's own timeout
    exchange = worker.exchanges[req.id]
    exchange.on_frame(wire.Resp(req.id, 201, [(b"x", b"y")], b"made", False))
    head = caller.sent[-1]
    assert type(head) is wire.CallResp and (head.id, head.status, head.body, head.more) == (1, 201, b"made", False)
    assert (b"anycore-release", b"r1") in head.headers and (b"anycore-node", b"node-1") in head.headers
    assert not calls.calls  # finished: forgotten
    assert calls.stats.releases[("svc", "r1")].statuses == {201: 1}  # counted with the service's requests


@run
async def test_the_call_budget_bounds_the_deadline_and_a_queued_call_expires_with_504():
    clock = FakeClock()
    runtime, release, calls = setup(clock, timeout=30)
    worker = release.start_worker(1, slots=1)
    busy, late = Caller(1), Caller(2)
    calls.on_frame("front", busy, call(timeout=10))
    assert next(f for f in worker.sent if type(f) is wire.Req).remaining == 10  # 10 s left, not the service's 30
    calls.on_frame("front", late, call(timeout=0.3))
    assert runtime.router.queue  # queued like a request: the only slot is busy
    clock.advance(0.31)
    runtime.placement._expire()
    status, body = late.answer()
    assert status == 504 and body["error"] == "deadline passed while queued"
    clock.advance(10)
    runtime.sweep(clock())  # the running one is past its 10 s budget: 504 and a Cancel to its worker
    assert busy.answer()[0] == 504 and any(type(f) is wire.Cancel for f in worker.sent)


@run
async def test_request_and_response_bodies_flow_under_credit_both_ways():
    clock = FakeClock()
    runtime, release, calls = setup(clock, request_buffer=1)
    worker = release.start_worker(1, slots=1)
    caller = Caller()
    calls.on_frame("front", caller, call(body=b"a" * 10, more=True, method="POST"))
    calls.on_frame("front", caller, wire.CallBody(1, b"b" * 20, True))
    calls.on_frame("front", caller, wire.CallBody(1, b"", False))
    bodies = [f for f in worker.sent if type(f) is wire.Body]
    assert b"".join(f.data for f in bodies) == b"a" * 10 + b"b" * 20 and not bodies[-1].more
    # The first chunk rode in CallReq outside the window: only the 20 streamed bytes are credited.
    assert sum(f.n for f in caller.sent if type(f) is wire.CallCredit) == 20
    req = next(f for f in worker.sent if type(f) is wire.Req)
    exchange = worker.exchanges[req.id]
    exchange.on_frame(wire.Resp(req.id, 200, [], b"x" * 5, True))
    exchange.on_frame(wire.Body(req.id, b"y" * 5, True))
    calls.on_frame("front", caller, wire.CallCredit(1, 10))  # the caller read them: the callee may send more
    assert wire.Credit(req.id, 10) in worker.sent
    exchange.on_frame(wire.Body(req.id, b"", False))
    assert [type(f) for f in caller.sent if type(f) in (wire.CallResp, wire.CallBody)] == [wire.CallResp, wire.CallBody, wire.CallBody]


@run
async def test_a_cancel_from_the_caller_or_its_death_cancels_the_callee_request():
    clock = FakeClock()
    runtime, release, calls = setup(clock)
    worker = release.start_worker(1, slots=2)
    caller = Caller()
    calls.on_frame("front", caller, call(1))
    calls.on_frame("front", caller, call(2))
    first, second = [f.id for f in worker.sent if type(f) is wire.Req]
    calls.on_frame("front", caller, wire.CallCancel(1))
    assert wire.Cancel(first) in worker.sent and wire.Cancel(second) not in worker.sent
    calls.on_frame("front", caller, None)  # the calling worker died
    assert wire.Cancel(second) in worker.sent and not calls.calls


@run
async def test_unknown_service_cycles_and_deep_chains_are_answered_at_once():
    clock = FakeClock()
    runtime, release, calls = setup(clock)
    release.start_worker(1, slots=1)
    caller = Caller()
    calls.on_frame("front", caller, call(1, service="nope"))
    status, body = caller.answer()
    assert status == 404 and "'nope'" in body["detail"] and "svc" in body["detail"]
    # svc calling svc while its only slot is busy (held by the caller itself): 503, not a queue behind itself.
    calls.on_frame("svc", Caller(2), call(2))  # takes the slot (chain: svc)
    looping = Caller(3)
    calls.on_frame("svc", looping, call(3))
    status, body = looping.answer()
    assert status == 503 and body["error"] == "call cycle" and not runtime.router.queue
    # Another service with a free slot is not a cycle; a chain too deep is refused anyway.
    deep = Caller(4)
    calls.on_frame("front", deep, call(4, service="svc", chain=",".join(["x"] * MAX_DEPTH)))
    assert deep.answer()[0] == 508
