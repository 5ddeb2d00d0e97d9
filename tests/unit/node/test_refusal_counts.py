"""Each refusal is counted in the node's RequestStats where it is decided, once, with its
reason (what /metrics shows as ``anycore_rejected_total``): queue full, deadline (the
estimate at admission, and expiry in the queue), stopped, quarantined, too large. A fake
clock, fake workers, real exchanges (tests/unit/node/fakes.py)."""

from __future__ import annotations

import asyncio

from anycore.lifecycle import ServiceState
from tests.unit.node.fakes import FakeClock, answer_of, request, run, service, until


@run
async def test_queue_full_deadline_and_too_large_are_counted_with_their_reason():
    clock = FakeClock()
    runtime, release = service(clock, max_queue=1, timeout=1.0, max_body=10)
    worker = release.start_worker(1, slots=1)
    running, queued, refused = request(), request(), request()
    for exchange in (running, queued, refused):
        runtime.submit(exchange, "/")
    assert answer_of(refused)[0] == 503 and runtime.stats.rejected == {("svc", "queue_full"): 1}
    clock.advance(1.5)
    await until(lambda: queued.response_complete, "the queued request's 504")
    assert answer_of(queued)[0] == 504 and runtime.stats.rejected[("svc", "deadline")] == 1
    runtime.sweep(clock())  # the running one past its deadline: 504, but it ran — not a refusal
    assert answer_of(running)[0] == 504 and runtime.stats.rejected[("svc", "deadline")] == 1
    worker.answer(running)

    # The deadline estimate: a slow service with a queue ahead refuses at once.
    runtime.router.mean_service = 5.0
    hopeless = request()
    runtime.submit(request(), "/")  # takes the slot
    runtime.submit(hopeless, "/")  # its wait: 1 x 5 s, past its 1 s deadline
    assert answer_of(hopeless)[0] == 503 and runtime.stats.rejected[("svc", "deadline")] == 2

    big = request("POST", b"/", body=b"x" * 11)
    runtime.submit(big, "/")
    assert answer_of(big)[0] == 413 and runtime.stats.rejected[("svc", "too_large")] == 1
    assert runtime.stats.rejected[("svc", "queue_full")] == 1


@run
async def test_stopped_and_quarantined_refusals_are_counted():
    clock = FakeClock()
    runtime, release = service(clock, drain_timeout=0.05)
    workers = [release.start_worker(i, slots=1) for i in (1, 2, 3)]
    poison = request("GET", b"/poison")
    runtime.submit(poison, "/poison")
    release.kill(next(w for w in workers if w.started(poison)))
    release.kill(next(w for w in release.workers.values() if w.started(poison)))
    assert answer_of(poison)[1]["error"] == "quarantined"
    assert runtime.stats.rejected == {}  # it ran (twice): a 502, not a refusal
    twin = request("GET", b"/poison")
    runtime.submit(twin, "/poison")
    assert answer_of(twin)[0] == 502 and runtime.stats.rejected == {("svc", "quarantined"): 1}

    survivor = next(iter(release.workers.values()))
    running, stuck = request(), request()
    runtime.submit(running, "/")
    runtime.submit(stuck, "/")  # queued behind it: answered 503 "stopped" when the stop gives up on it
    stopping = asyncio.create_task(runtime.stop())
    await until(lambda: runtime.life.state is ServiceState.STOPPED, "the service to stop taking requests")
    late = request()
    runtime.submit(late, "/")
    assert answer_of(late)[0] == 503 and runtime.stats.rejected[("svc", "stopped")] == 1
    clock.advance(1)
    await until(lambda: release.stopping, "the release to drain")
    survivor.answer(running)
    await asyncio.wait_for(stopping, 2)
    assert answer_of(stuck)[1]["error"] == "service stopped" and runtime.stats.rejected[("svc", "stopped")] == 2
