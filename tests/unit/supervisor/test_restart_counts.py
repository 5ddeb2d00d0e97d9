"""The release supervisor's counts for /metrics (``WorkerCounts``): restarts by cause,
counted once the cause is known, never for a deliberate end; cold starts, one per
scale-up from zero workers while a request waits. Fakes as tests/unit/supervisor."""

from __future__ import annotations

import signal

from anycore.lifecycle import ExitReason
from tests.unit.supervisor.fakes import Harness, run, settle, until


def test_restarts_are_counted_by_cause_and_deliberate_ends_are_not() -> None:
    async def scenario() -> None:
        h = Harness(workers=4, hang_timeout=30.0)
        await h.start()
        killed, exits, hangs, drained = h.zygote.workers
        killed.die(signal.SIGKILL)
        await until(lambda: h.sup.counts.restarts.get(("svc@test", "signal")) == 1, what="the kill -9 counted")
        exits.crash(3)
        await until(lambda: h.sup.counts.restarts.get(("svc@test", "exit")) == 1, what="the exit counted")
        await h.sup.drain_worker(h.handle(drained), ExitReason.DRAINED, "scaled down")
        h.clock.advance(31.0)
        for worker in h.sup.workers.values():
            if worker.id != hangs.id:
                h.sup.workers[worker.id].last_tick = h.clock.now
        h.sup.step(h.clock())
        await until(lambda: h.sup.counts.restarts.get(("svc@test", "hung")) == 1, what="the hang counted")
        await settle()
        assert h.sup.counts.restarts == {("svc@test", "signal"): 1, ("svc@test", "exit"): 1, ("svc@test", "hung"): 1}
        assert h.sup.restarts == 3  # the policy's count agrees: the drained one is in neither
        await h.close()
        assert sum(h.sup.counts.restarts.values()) == 3  # stopping the release adds none
    run(scenario)


def test_a_cold_start_is_a_scale_up_from_zero_workers_with_a_request_waiting() -> None:
    async def scenario() -> None:
        h = Harness(min_workers=0, max_workers=2)
        await h.start()
        h.sup.autoscale(h.clock(), None, inflight=0, queued=1, rejected=0)  # a worker exists: not cold
        assert h.sup.counts.cold_starts == {}
        for worker in list(h.sup.workers.values()):
            await h.sup.drain_worker(worker, ExitReason.DRAINED, "scaled down")
        await until(lambda: not h.sup.workers, what="zero workers")
        forked = len(h.zygote.workers)
        h.sup.autoscale(h.clock(), None, inflight=0, queued=3, rejected=0)
        assert h.sup.counts.cold_starts == {"svc@test": 1} and len(h.zygote.workers) > forked
        h.sup.autoscale(h.clock(), None, inflight=0, queued=3, rejected=0)  # the fork is under way: not another
        assert h.sup.counts.cold_starts == {"svc@test": 1}
        await h.close()
    run(scenario)
