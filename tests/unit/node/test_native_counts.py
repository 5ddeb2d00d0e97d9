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


def test_gateway_counts_add_only_what_is_new_and_a_lower_count_is_a_new_gateway():
    # node/native_counts.py alone: the gateway's Stats are cumulative; RequestStats gets
    # each difference once, and a count that went down is a restarted gateway's own.
    from anycore.node.native_counts import GatewayCounts
    from anycore.stats import BUCKETS, RequestStats

    counts, aggregate = GatewayCounts(), RequestStats()

    def stats(ok: int, errors: int, rejected: int, in_first_bucket: int) -> dataplane.Stats:
        buckets = [in_first_bucket] + [0] * (len(BUCKETS) - 1)
        return dataplane.Stats("svc", 0, [], [], [("r1", 200, ok), ("r1", 503, errors)], [("queue_full", rejected)],
                               [("r1", buckets, 0.001 * in_first_bucket, buckets, 0.0)])

    for ok, errors in ((5, 1), (8, 1), (8, 3)):
        s = stats(ok, errors, errors, ok + errors)
        counts.count_errors(s)
        counts.add_requests(aggregate, s)
    mine = aggregate.releases[("svc", "r1")]
    assert mine.statuses == {200: 8, 503: 3} and aggregate.rejected[("svc", "queue_full")] == 3
    assert mine.duration.count == 11 and mine.duration.counts[0] == 11
    assert counts.errors == {503: 3}  # the last Stats' cumulative count, not a sum of them

    # A new gateway starts from zero: its first Stats count in whole.
    s = stats(2, 0, 0, 2)
    counts.count_errors(s)
    counts.add_requests(aggregate, s)
    assert mine.statuses == {200: 10, 503: 3} and mine.duration.count == 13
    assert counts.errors == {503: 0}  # what this gateway counted
    counts.restarted()  # the node restarted it: the same, without waiting for a lower count
    counts.add_requests(aggregate, stats(1, 0, 0, 1))
    assert mine.statuses == {200: 11, 503: 3} and mine.duration.count == 14
