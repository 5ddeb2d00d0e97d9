"""node/native.py's mirror of the gateway's counts, where a message says more than Stats.

A WorkerIdle means the worker has nothing in flight in the gateway: the router's mirror
(what a worker's exit line, the scaler and `ps` read) must say 0 at once, not when the
next Stats (up to 100 ms later) arrives — a scaled-down worker's exit line said
`inflight=1` otherwise (tests/e2e/test_scaling.py under load)."""

from __future__ import annotations

import asyncio
import io

from anycore import dataplane
from anycore.log import NodeLog
from tests.unit.node.fakes import FakeRelease, request, run, until
from tests.unit.node.test_native import service, setup, worker


@run
async def test_a_worker_idle_zeroes_its_mirrored_inflight_before_the_next_stats():
    native, fake, runtime, _ = setup()
    release = FakeRelease(runtime, "r1")
    handle, _ = worker(release, 1, [])
    runtime.worker_ready(handle)
    native.add_service(runtime)
    await fake.expect(service("", False), dataplane.AddWorker("svc", "r1", 1, 4))
    fake.say(dataplane.Stats("svc", 0, [(1, 1)], [(1, 0)], [], []))
    await until(lambda: runtime.inflight(1) == 1, "the Stats")
    fake.say(dataplane.WorkerIdle(1))
    await until(lambda: 1 in native.idle, "the WorkerIdle")
    assert runtime.inflight(1) == 0
    fake.say(dataplane.Stats("svc", 0, [(1, 1)], [(1, 0)], [], []))  # built before the WorkerIdle, sent after it
    fake.say(dataplane.Stats("other", 0, [], [], [], []))  # (a later message: the one above is read by then)
    await asyncio.sleep(0.05)
    assert runtime.inflight(1) == 0


@run
async def test_a_request_the_node_queued_itself_takes_a_slot_the_gateways_stats_show_free():
    # A call between services (or a job, or a request back from a lost peer) is placed by
    # the node's router on its mirror; under the native gateway only Stats free that mirror.
    native, fake, runtime, _ = setup()
    release = FakeRelease(runtime, "r1")
    handle, _ = worker(release, 1, [])
    runtime.worker_ready(handle)
    runtime.shift(release, "/srv", runtime.config)  # type: ignore[arg-type]
    native.add_service(runtime)
    fake.say(dataplane.Stats("svc", 0, [(1, 4)], [(1, 0)], [], []))  # the gateway's own requests fill it
    await until(lambda: runtime.inflight(1) == 4, "the Stats")
    call = request()
    call.deadline = runtime.clock() + 3
    runtime.submit_job(call, call.deadline)
    assert [p.item for p in runtime.router.queue] == [call]
    fake.say(dataplane.Stats("svc", 0, [(1, 1)], [(1, 3)], [], []))  # three finished there
    await until(lambda: not runtime.router.queue, "the queued call to be placed")
    assert call.worker is handle


@run
async def test_the_shift_is_logged_when_the_gateway_applied_it():
    # The service.shifted line is the shift's instant (tests/e2e/test_swap.py: a request a
    # client starts after it runs on the new release): under the native gateway that is
    # when the gateway says Shifted, not when the node sent the Shift.
    native, fake, runtime, _ = setup()
    lines = io.StringIO()
    runtime.log = NodeLog(lines)
    release = FakeRelease(runtime, "r1")
    handle, _ = worker(release, 1, [])
    runtime.worker_ready(handle)
    runtime.shift(release, "/srv", runtime.config)  # type: ignore[arg-type]
    await fake.expect(service("", False), dataplane.AddWorker("svc", "r1", 1, 4), dataplane.Shift("svc", "r1"))
    await asyncio.sleep(0.02)
    assert "service.shifted" not in lines.getvalue()
    fake.say(dataplane.Shifted("svc", "r1"))
    await until(lambda: "event=service.shifted service=svc release=r1" in lines.getvalue(), "the shift's line")
