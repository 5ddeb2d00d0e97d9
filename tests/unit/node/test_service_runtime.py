"""ServiceRuntime with fake worker channels, a fake release supervisor and a fake clock:
deadlines, the crash rule (retry once, 502, quarantine), drain on stop, and who owns which
count. Real ``Exchange`` objects over a fake client connection."""

from __future__ import annotations

import asyncio

import pytest

from anycore import wire
from anycore.lifecycle import ExitReason, ServiceState
from anycore.node.crashes import QUARANTINE_TTL
from tests.unit.node.fakes import FakeClock, answer_of, request, run, service, until


@run
async def test_a_queued_request_past_its_deadline_gets_504_from_the_expiry_timer():
    clock = FakeClock()
    runtime, release = service(clock, timeout=0.05)
    worker = release.start_worker(1, slots=1)
    running, queued = request(), request()
    runtime.submit(running, "/")
    runtime.submit(queued, "/")
    assert worker.started(running) and not worker.started(queued)
    await asyncio.sleep(0.08)  # the timer fires on the loop, but the deadline is the service clock's
    assert not queued.response_complete
    clock.advance(0.06)
    await until(lambda: queued.response_complete, "the queued request's 504")
    status, body = answer_of(queued)
    assert (status, body["error"]) == (504, "deadline passed while queued")
    assert not worker.started(queued) and runtime.router.expired == 1
    assert not running.response_complete  # a running request is the sweep's, not the timer's


@run
async def test_a_retry_put_in_front_of_the_queue_expires_at_its_own_deadline_not_the_old_heads():
    clock = FakeClock()
    runtime, release = service(clock, timeout=4.0)
    worker = release.start_worker(1, slots=1)
    early, late = request(), request()
    runtime.submit(early, "/")  # deadline t0 + 4
    clock.advance(2.0)
    runtime.submit(late, "/")  # queued, deadline t0 + 6: the timer is armed 4 s out
    clock.advance(1.99)
    release.kill(worker)  # `early` is retried at the head of the queue; no worker is left
    assert not early.response_complete and runtime.router.queue[0].item is early
    clock.advance(0.02)  # past early's deadline, long before late's
    await until(lambda: early.response_complete, "the retried request's 504 at its own deadline", timeout=2.0)
    assert answer_of(early)[0] == 504 and not late.response_complete


@run
async def test_a_running_request_past_its_deadline_gets_504_and_a_cancel_on_the_sweep():
    clock = FakeClock()
    runtime, release = service(clock, timeout=10)
    worker = release.start_worker(1, slots=2)
    exchange = request()
    runtime.submit(exchange, "/")
    clock.advance(9.9)
    runtime.sweep(clock())
    assert not exchange.response_complete and wire.Cancel(exchange.id) not in worker.sent
    clock.advance(0.2)
    runtime.sweep(clock())
    assert answer_of(exchange) == (504, {"error": "deadline passed", "status": 504,
                                         "detail": "the request ran past timeout=10.0s and was cancelled"})
    assert wire.Cancel(exchange.id) in worker.sent


@run
async def test_a_get_is_retried_once_when_its_worker_dies_then_answered_502():
    clock = FakeClock()
    runtime, release = service(clock)
    first, second = release.start_worker(1, slots=2), release.start_worker(2, slots=2)
    get = request("GET", b"/page")
    runtime.submit(get, "/page")
    if not first.started(get):
        first, second = second, first
    release.kill(first)
    assert second.started(get) and not get.response_complete and get.attempts == 2  # retried, not answered
    bystander = request("GET", b"/other")
    runtime.submit(bystander, "/other")  # shares the next death: the blame stays under quarantine
    third = release.start_worker(3, slots=2)
    release.kill(second)
    status, body = answer_of(get)
    assert (status, body["error"]) == (502, "worker died")  # its second attempt: no third, though a slot is free
    assert "may or may not have taken effect" in body["detail"] and not third.started(get)
    assert third.started(bystander) and not bystander.response_complete  # its first death: retried


@pytest.mark.parametrize("method", ["POST", "GET"])
@run
async def test_a_request_whose_body_was_consumed_is_not_retried(method):
    clock = FakeClock()
    runtime, release = service(clock)
    workers = [release.start_worker(i, slots=1) for i in (1, 2)]
    exchange = request(method, b"/upload", body=b"payload")
    runtime.submit(exchange, "/upload")
    holder = next(w for w in workers if w.started(exchange))
    assert exchange.body_forwarded == len(b"payload")
    release.kill(holder)
    status, body = answer_of(exchange)
    assert (status, body["error"]) == (502, "worker died")
    assert "unsafe to retry" in body["detail"]
    assert not any(w.started(exchange) for w in workers if w is not holder)


@run
async def test_a_request_that_crashed_two_workers_is_quarantined_and_its_twins_refused():
    clock = FakeClock()
    runtime, release = service(clock)
    workers = [release.start_worker(i, slots=1) for i in (1, 2, 3)]
    poison = request("GET", b"/poison")
    runtime.submit(poison, "/poison")
    release.kill(next(w for w in workers if w.started(poison)))
    release.kill(next(w for w in release.workers.values() if w.started(poison)))
    status, body = answer_of(poison)
    assert (status, body["error"]) == (502, "quarantined") and runtime.quarantined == 1
    survivor = next(iter(release.workers.values()))
    twin = request("GET", b"/poison")
    runtime.submit(twin, "/poison")
    assert answer_of(twin)[0] == 502 and not survivor.started(twin)
    other = request("GET", b"/fine")
    runtime.submit(other, "/fine")
    assert survivor.started(other)
    clock.advance(QUARANTINE_TTL + 1)
    survivor.answer(other)
    later = request("GET", b"/poison")
    runtime.submit(later, "/poison")
    assert survivor.started(later)  # the quarantine ended with its TTL


@run
async def test_stop_serves_the_queued_requests_before_the_workers_go_then_answers_503():
    clock = FakeClock()
    runtime, release = service(clock)
    worker = release.start_worker(1, slots=1)
    accepted = [request() for _ in range(3)]
    for exchange in accepted:
        runtime.submit(exchange, "/")
    assert len(runtime.router.queue) == 2
    stopping = asyncio.create_task(runtime.stop())
    await until(lambda: runtime.life.state is ServiceState.STOPPED, "the service to stop taking requests")
    refused = request()
    runtime.submit(refused, "/")
    assert answer_of(refused)[0] == 503 and b"retry-after: 5" in bytes(refused.conn.out)
    for exchange in accepted:
        await until(lambda: worker.started(exchange), "a queued request to reach the worker")
        assert not release.stopping  # the workers stay while anything accepted is queued
        worker.answer(exchange)
    await asyncio.wait_for(stopping, 2)
    assert [answer_of(e)[0] for e in accepted] == [200, 200, 200]
    assert release.stopped and runtime.release is None


@run
async def test_stop_answers_503_to_what_no_worker_could_take():
    clock = FakeClock()
    runtime, release = service(clock, drain_timeout=0.05)
    worker = release.start_worker(1, slots=1)
    running, stuck = request(), request()
    runtime.submit(running, "/")
    runtime.submit(stuck, "/")
    stopping = asyncio.create_task(runtime.stop())
    await asyncio.sleep(0.02)
    clock.advance(1)  # past drain_timeout: stop goes on with `stuck` still queued
    await until(lambda: release.stopping, "the release to drain")
    worker.answer(running)
    await asyncio.wait_for(stopping, 2)
    assert answer_of(running)[0] == 200
    status, body = answer_of(stuck)
    assert (status, body["error"]) == (503, "service stopped")


@run
async def test_the_router_owns_served_and_in_flight_across_a_worker_going_away():
    clock = FakeClock()
    runtime, release = service(clock)
    worker = release.start_worker(7, slots=2)
    done, running = request(), request()
    runtime.submit(done, "/")
    runtime.submit(running, "/")
    assert runtime.inflight(7) == 2
    worker.answer(done)
    assert (runtime.inflight(7), runtime.served_by(7), runtime.info()["served"]) == (1, 1, 1)
    worker.exit_reason = ExitReason.RECYCLED
    release.kill(worker)  # `running` is retried but has no worker left: it waits in the queue
    assert runtime.inflight(7) == 0 and runtime.served_by(7) == 1 and runtime.info()["served"] == 1
    assert not hasattr(runtime, "workers")  # one worker table: the release supervisors'


@run
async def test_the_service_writes_no_100_continue_itself():
    clock = FakeClock()
    runtime, release = service(clock)
    release.start_worker(1)
    exchange = request("POST", b"/up", expect_continue=True)
    exchange.content_length, exchange.body_done = 10, False
    runtime.submit(exchange, "/up")
    assert exchange.waiting and bytes(exchange.conn.out) == b""  # the gateway writes it, once
