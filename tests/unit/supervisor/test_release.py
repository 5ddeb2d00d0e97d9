"""ReleaseSupervisor against a fake zygote, fake workers (wire frames over socketpairs), a
fake owner and a fake clock: hang, recycle and restart backoff, the rules that only the
end-to-end suite reached before. Housekeeping is driven by calling ``step(now)``; the
clock only moves when a test moves it, so a worker is hung exactly when the test says.
"""

from __future__ import annotations

import asyncio
import signal

import pytest

from anycore import wire
from anycore.errors import ReleaseFailed
from anycore.lifecycle import ExitReason, WorkerState
from tests.unit.supervisor.fakes import Harness, run, settle, until


# -- hang ----------------------------------------------------------------------------------------

def test_a_ready_worker_without_a_tick_past_hang_timeout_gets_sigusr1_then_sigkill_then_a_restart() -> None:
    async def scenario() -> None:
        h = Harness(workers=2, hang_timeout=30.0)
        await h.start()
        stuck, alive = h.zygote.workers
        h.clock.advance(29.0)
        h.sup.step(h.clock())
        assert h.signals == []  # within hang_timeout: nothing
        h.clock.advance(2.0)  # 31 s since ready
        alive.tick()
        await until(lambda: h.handle(alive).last_tick == h.clock.now, what="the tick")
        h.sup.step(h.clock())
        # Stacks first (faulthandler on SIGUSR1), then the kill; only the stuck one.
        assert h.signals == [(stuck.pid, signal.SIGUSR1)]
        assert h.handle(stuck).exit_reason is ExitReason.HUNG
        assert [e["worker"] for e in h.events("worker.hung")] == [str(stuck.id)]
        h.sup.step(h.clock())  # a second pass does not signal it again
        assert h.signals == [(stuck.pid, signal.SIGUSR1)]
        await until(lambda: (stuck.pid, signal.SIGKILL) in h.signals, what="the SIGKILL")
        assert h.signals == [(stuck.pid, signal.SIGUSR1), (stuck.pid, signal.SIGKILL)]
        # A hang is not deliberate: it is restarted (first restart immediate) and counted.
        await until(lambda: len(h.zygote.workers) == 3 and len(h.owner.ready) == 3, what="the replacement")
        exited = h.events("worker.exited")
        assert len(exited) == 1 and exited[0]["worker"] == str(stuck.id)
        assert exited[0]["cause"] == "killed by SIGKILL (hung: worker stuck (no tick) for 31.0s)"
        assert [e["delay_s"] for e in h.events("worker.restarting")] == ["0.0"]
        assert h.sup.restarts == 1 and "hung" in h.sup.last_exit
        assert alive.id in h.sup.workers and not alive.dead
        await h.close()
    run(scenario)


def test_ticks_keep_a_busy_worker_alive_and_a_starting_worker_is_never_hung() -> None:
    async def scenario() -> None:
        h = Harness(workers=1, hang_timeout=5.0)
        await h.start()
        (worker,) = h.zygote.workers
        for _ in range(4):
            h.clock.advance(4.0)
            worker.tick()
            await until(lambda: h.handle(worker).last_tick == h.clock.now, what="the tick")
            h.sup.step(h.clock())
        h.zygote.auto_ready = False
        h.sup._start_worker()  # a worker still starting: not READY, so no tick expected yet
        h.clock.advance(60.0)
        worker.tick()
        await until(lambda: h.handle(worker).last_tick == h.clock.now, what="the tick")
        h.sup.step(h.clock())
        assert h.signals == []
        await h.close()
    run(scenario)


# -- recycle -------------------------------------------------------------------------------------

def test_max_requests_starts_the_replacement_first_and_drains_the_old_one_only_once_it_is_ready() -> None:
    async def scenario() -> None:
        h = Harness(workers=1, max_requests=3)
        await h.start()
        (old,) = h.zygote.workers
        h.owner.served[old.id] = 2  # the router's count, asked of the owner
        h.sup.step(h.clock())
        assert len(h.zygote.workers) == 1  # below max_requests: nothing
        h.owner.served[old.id] = 3
        h.zygote.auto_ready = False  # the replacement's Ready is the test's to send
        h.sup.step(h.clock())
        assert len(h.zygote.workers) == 2
        new = h.zygote.workers[1]
        await new.connected
        for _ in range(3):  # housekeeping goes on while the replacement starts
            h.sup.step(h.clock())
        await settle()
        assert len(h.zygote.workers) == 2  # one replacement, not one per pass
        assert h.handle(old).state is WorkerState.READY and not old.stopped() and h.owner.draining == []
        new.ready()
        await until(lambda: old.stopped(), what="the old worker's Stop")
        assert [w.id for w in h.owner.draining] == [old.id]
        assert h.owner.ready[-1].id == new.id
        await until(lambda: old.id not in h.sup.workers, what="the old worker to exit")
        (exited,) = h.events("worker.exited")
        assert exited["cause"] == "exit code 0 (recycled: served 3 requests (max_requests=3))"
        assert exited["served"] == "3"  # the router's count, as it was when the worker went
        # Deliberate: no restart, nothing fed to the restart policy, no last exit.
        assert h.events("worker.restarting") == [] and h.sup.restarts == 0 and not h.sup.policy.exits
        assert h.sup.last_exit == ""
        assert list(h.sup.workers) == [new.id]
        await h.close()
    run(scenario)


# -- restart backoff -----------------------------------------------------------------------------

def test_restart_delays_grow_from_zero_capped_and_crashlooping_past_the_configured_intensity() -> None:
    async def scenario() -> None:
        h = Harness(workers=7, restart_intensity=3, restart_period=20.0, restart_backoff_cap=0.3)
        await h.start()
        first = list(h.zygote.workers)
        for worker in first:
            worker.crash(1)
        await until(lambda: len(h.events("worker.restarting")) == 7, what="7 restart decisions")
        delays = [float(e["delay_s"]) for e in h.events("worker.restarting")]
        assert delays == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.3, 0.3, 0.3])  # 0, base, 2*base, capped
        # More than 3 exits within 20 s: crashlooping from the 4th, reported to the owner.
        assert len(h.events("release.crashlooping")) == 4 and h.owner.crashlooping == [h.sup] * 4
        assert h.sup.policy.crashlooping and h.sup.restarts == 7
        assert h.sup.info()["crashlooping"] is True
        # The delays are honoured: every replacement comes, none more.
        await until(lambda: len(h.owner.ready) == 14, what="7 replacements")
        await settle()
        assert len(h.zygote.workers) == 14 and h.sup.pending_restarts == 0
        await h.close()
    run(scenario)


def test_exits_older_than_restart_period_do_not_count_towards_crashlooping() -> None:
    async def scenario() -> None:
        h = Harness(workers=4, restart_intensity=3, restart_period=20.0)
        await h.start()
        first = list(h.zygote.workers)
        for worker in first[:3]:
            worker.crash(1)
        await until(lambda: len(h.events("worker.restarting")) == 3, what="3 restart decisions")
        h.clock.advance(21.0)  # past restart_period (but not the 30 s stable period)
        first[3].crash(1)
        await until(lambda: len(h.events("worker.restarting")) == 4, what="the 4th decision")
        assert h.events("release.crashlooping") == [] and h.owner.crashlooping == []
        assert float(h.events("worker.restarting")[-1]["delay_s"]) == pytest.approx(0.4)  # still backing off
        await h.close()
    run(scenario)


def test_deliberate_exits_are_never_fed_to_the_restart_policy() -> None:
    async def scenario() -> None:
        h = Harness(workers=3, restart_intensity=1)
        await h.start()
        drained, crashes_while_draining, stays = h.zygote.workers
        await h.sup.drain_worker(h.handle(drained), ExitReason.DRAINED, "scaled down")
        h.zygote.exit_on_stop = False
        task = h.sup._spawn(h.sup.drain_worker(h.handle(crashes_while_draining), ExitReason.DRAINED, "scaled down"), "t")
        await until(lambda: crashes_while_draining.stopped(), what="its Stop")
        crashes_while_draining.crash(3)  # dies badly during its drain: still the node's doing
        await task
        h.zygote.exit_on_stop = True
        await until(lambda: len(h.events("worker.exited")) == 2, what="both exits")
        causes = sorted(e["cause"] for e in h.events("worker.exited"))
        assert causes == ["exit code 0 (drained: scaled down)", "exit code 3 (drained: scaled down)"]
        await settle()
        assert h.events("worker.restarting") == [] and h.sup.restarts == 0 and not h.sup.policy.exits
        assert h.owner.crashlooping == [] and h.sup.last_exit == ""
        assert len(h.zygote.workers) == 3  # nothing forked in their place
        # A crash right after still gets the immediate first restart: nothing was counted before it.
        stays.crash(1)
        await until(lambda: len(h.events("worker.restarting")) == 1, what="the restart decision")
        assert h.events("worker.restarting")[0]["delay_s"] == "0.0" and h.owner.crashlooping == []
        await h.close()
    run(scenario)


def test_workers_stopped_with_their_release_are_not_crashes() -> None:
    async def scenario() -> None:
        h = Harness(workers=2, restart_intensity=1)
        await h.start()
        await h.close()
        causes = [e["cause"] for e in h.events("worker.exited")]
        assert causes == ["exit code 0 (stopped)"] * 2
        assert h.events("worker.restarting") == [] and not h.sup.policy.exits and h.owner.crashlooping == []
        assert len(h.sup.tasks) == 0 and not h.sup._timers  # nothing left running after stop
    run(scenario)


def test_a_worker_lost_with_its_zygote_does_not_count_as_a_crash() -> None:
    async def scenario() -> None:
        h = Harness(workers=3, restart_intensity=1)
        await h.start()
        h.zygote.is_lost = True  # its control socket is at EOF: the zygote died
        for worker in h.zygote.workers:
            worker.die(signal.SIGKILL)
        await until(lambda: len(h.owner.lost) == 3, what="3 lost workers")
        await settle()
        assert h.events("worker.restarting") == [] and h.sup.restarts == 0
        assert h.owner.crashlooping == [] and not h.sup.policy.exits
        await h.close()
    run(scenario)


def test_pending_restart_timers_are_cancelled_when_the_release_stops() -> None:
    async def scenario() -> None:
        h = Harness(workers=2, restart_intensity=1, restart_backoff_cap=5.0)
        await h.start()
        a, b = h.zygote.workers
        a.crash(1)
        b.crash(1)  # crashlooping: its restart waits the cap, 5 s
        await until(lambda: len(h.events("worker.restarting")) == 2, what="2 decisions")
        assert h.events("worker.restarting")[-1]["delay_s"] == "5.0"
        # Only the 5 s timer is sure to be pending at close: the first crash's short
        # delay may fire while close() runs on a slow machine (CI stop 20 saw it).
        now = asyncio.get_running_loop().time()
        pending = [timer for timer in h.sup._timers if timer.when() - now > 2.0]
        assert pending
        await h.close()
        assert all(timer.cancelled() for timer in pending) and not h.sup._timers
        assert len(h.sup.tasks) == 0 and h.sup.tasks.closed
    run(scenario)


def test_ps_counts_come_from_the_owner() -> None:
    async def scenario() -> None:
        h = Harness(workers=1)
        await h.start()
        (worker,) = h.zygote.workers
        h.owner.served[worker.id], h.owner.in_flight[worker.id] = 12, 3
        (info,) = h.sup.info()["workers"]  # type: ignore[misc]
        assert (info["served"], info["inflight"], info["state"]) == (12, 3, "ready")
        await h.close()
    run(scenario)


def test_a_worker_that_fails_its_startup_fails_the_release_with_its_reason() -> None:
    async def scenario() -> None:
        h = Harness(workers=1)
        h.auto_ready = False
        task = asyncio.ensure_future(h.sup.start())
        await until(lambda: h.zygotes and h.zygote.workers and h.zygote.workers[0].connected.done(), what="the fork")
        (worker,) = h.zygote.workers
        worker.send(wire.StartFailed("lifespan startup failed: boom", ""))
        with pytest.raises(ReleaseFailed, match="lifespan startup failed: boom"):
            await task
        await until(lambda: h.events("worker.exited"), what="the exit")  # stopped by the failing release
        assert h.events("worker.exited")[0]["cause"].endswith("(lifespan startup failed: boom)")
        assert h.events("worker.restarting") == [] and h.sup.failure
    run(scenario)


def test_a_lost_zygote_is_restarted_once_and_its_workers_forked_from_the_new_one() -> None:
    async def scenario() -> None:
        h = Harness(workers=2, restart_intensity=1)
        await h.start()
        old = h.zygote
        old.is_lost = True
        for worker in old.workers:
            worker.die(signal.SIGKILL)  # PR_SET_PDEATHSIG: they die with it
        old.gone.set_result(None)
        await until(lambda: len(h.zygotes) == 2 and len(h.owner.ready) == 4, what="a new zygote and 2 workers")
        assert len(h.zygote.workers) == 2 and all(w.zygote is h.zygote for w in h.sup.workers.values())
        assert len(h.sup.workers) == 2
        assert [e["event"] for e in h.events("release.zygote_restarted")] == ["release.zygote_restarted"]
        # One backoff step for the zygote, none for its workers: not crashlooping.
        assert len(h.sup.policy.exits) == 1 and h.owner.crashlooping == [] and h.sup.restarts == 0
        await h.close()
    run(scenario)
