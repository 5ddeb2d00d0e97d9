"""The job executor (anycore.node.jobs) over a real ServiceRuntime with fake workers and a
fake JetStream pull subscription: it pulls exactly as many jobs as the service has free
slots and none while it has none, runs each as a request on the live release, and settles
each answer as the retry core says (ack, nak with the backoff, dead letter then ack); a
job on a worker that dies is a failed attempt; a running job sends in-progress acks."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace
from typing import Any

import pytest

from anycore import wire
from anycore.cluster import jobs as store
from anycore.log import NodeLog
from anycore.node import jobs as executor
from anycore.node.jobs import JobRunner
from tests.unit.node.fakes import FakeClock, run, service, until


class FakeMsg:
    def __init__(self, job: store.Job, delivered: int = 1) -> None:
        self.data = store.job_codec.encode(job)
        self.subject = store.job_subject(job.service)
        self.metadata = SimpleNamespace(num_delivered=delivered)
        self.settled: list[tuple[str, Any]] = []
        self.progress = 0

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))

    async def term(self) -> None:
        self.settled.append(("term", None))

    async def in_progress(self) -> None:
        self.progress += 1


class FakeJetStream:
    """The consumer's messages in order, delivered as pull requests ask for them (a
    ``cluster.jobs.Puller`` stand-in); every request's batch size is recorded."""

    def __init__(self) -> None:
        self.queue: list[FakeMsg] = []
        self.batches: list[int] = []
        self.published: list[tuple[str, bytes]] = []
        self.outstanding = 0
        self.on_message: Any = None

    def puller(self, service: str, on_message: Any, on_change: Any) -> "FakeJetStream":
        self.on_message = on_message
        return self

    async def open(self) -> None:
        pass

    async def request(self, n: int) -> None:
        self.batches.append(n)
        self.outstanding += n
        self.deliver()

    def deliver(self) -> None:
        while self.outstanding and self.queue:
            self.outstanding -= 1
            self.on_message(self.queue.pop(0))

    async def close(self) -> None:
        pass

    async def publish(self, subject: str, payload: bytes, **kwargs: Any) -> None:
        self.published.append((subject, payload))


def job(i: int, path: str = "/work") -> store.Job:
    return store.Job(f"j{i}", "svc", "POST", path, [(b"content-type", b"application/json")], b'{"i": %d}' % i, 0.0, "n1")


def setup(clock: FakeClock, slots: int, **config: Any) -> tuple[Any, Any, Any, JobRunner, FakeJetStream]:
    runtime, release = service(clock, **config)
    worker = release.start_worker(1, slots=slots)
    js = FakeJetStream()
    runner = JobRunner("n1", NodeLog(io.StringIO()))
    runner.js = js
    runner.open_puller = js.puller  # type: ignore[method-assign]
    runner.watch(runtime)
    return runtime, worker, release, runner, js


def running(worker: Any) -> list[Any]:
    return list(worker.exchanges.values())


@run
async def test_it_pulls_exactly_the_free_slots_and_nothing_while_none_is_free():
    clock = FakeClock()
    runtime, worker, _, runner, js = setup(clock, slots=2)
    messages = [FakeMsg(job(i)) for i in range(5)]
    js.queue = list(messages)
    await until(lambda: len(running(worker)) == 2, "two jobs on the two slots")
    assert js.batches == [2]
    first = running(worker)[0]
    req = next(f for f in worker.sent if type(f) is wire.Req and f.id == first.id)
    assert (req.method, req.path, req.body) == ("POST", "/work", b'{"i": 0}')  # the job, as a request
    assert (b"anycore-job", b"j0") in req.headers and (b"anycore-job-attempt", b"1") in req.headers
    await asyncio.sleep(0.05)
    assert js.batches == [2]  # no free slot: no pull at all (not even a batch of 0)
    worker.answer(first, 200)
    await until(lambda: messages[0].settled == [("ack", None)], "the 2xx job's ack")
    await until(lambda: len(js.batches) == 2 and len(running(worker)) == 2, "one pull for the one freed slot")
    assert js.batches == [2, 1] and runner.counts["svc"].running == 2
    await runner.close(1.0)


@run
async def test_a_failed_attempt_is_nakked_with_its_backoff_and_the_last_one_dead_lettered():
    clock = FakeClock()
    runtime, worker, _, runner, js = setup(clock, slots=2, job_attempts=3, job_backoff=[0.5, 4.0])
    second, last = FakeMsg(job(1), delivered=2), FakeMsg(job(2), delivered=3)
    js.queue = [second, last]
    await until(lambda: len(running(worker)) == 2, "both jobs running")
    for exchange in running(worker):
        exchange.on_frame(wire.Resp(exchange.id, 500, [], b"disk full", False))
        worker.exchanges.pop(exchange.id)
        runtime.on_done(worker, exchange, None)
    await until(lambda: second.settled and last.settled, "both settled")
    assert second.settled == [("nak", 4.0)]  # delivery 2 failed: backoff[1]
    assert last.settled == [("ack", None)]  # delivery 3 of 3 failed: out of the work queue...
    [(subject, payload)] = js.published  # ...after it was stored as a dead letter
    dead = store.dead_decoder.decode(payload)
    assert subject == store.dead_subject("svc") and (dead.job.id, dead.attempts) == ("j2", 3)
    assert dead.error == "500: disk full"
    counts = runner.counts["svc"]
    assert (counts.started, counts.retried, counts.dead, counts.running) == (2, 1, 1, 0)
    await runner.close(1.0)


@run
async def test_a_job_on_a_worker_that_dies_is_a_failed_attempt():
    clock = FakeClock()
    runtime, worker, release, runner, js = setup(clock, slots=1, job_backoff=[2.0])
    msg = FakeMsg(job(1))
    js.queue = [msg]
    await until(lambda: running(worker), "the job running")
    release.kill(worker)  # a POST is not retried in place: 502, which the job's policy retries later
    await until(lambda: msg.settled, "the lost job settled")
    assert msg.settled == [("nak", 2.0)]
    await runner.close(1.0)


@run
async def test_a_running_job_sends_in_progress_acks(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(executor, "PROGRESS_TICK", 0.005)
    clock = FakeClock()
    runtime, worker, _, runner, js = setup(clock, slots=1)
    runner.clock = clock
    runner._progress = runner.tasks.spawn(runner._progress_loop(), "progress")
    msg = FakeMsg(job(1))
    js.queue = [msg]
    await until(lambda: running(worker), "the job running")
    await asyncio.sleep(0.03)
    assert msg.progress == 0  # not due yet on the job's clock
    clock.advance(store.PROGRESS_EVERY)
    await until(lambda: msg.progress == 1, "an in-progress ack")
    await asyncio.sleep(0.03)
    assert msg.progress == 1  # once per period
    await runner.close(1.0)


@run
async def test_jobs_asked_for_and_not_yet_delivered_count_as_taken_slots():
    clock = FakeClock()
    runtime, worker, _, runner, js = setup(clock, slots=3)
    await until(lambda: js.batches == [3], "one request for the three free slots")
    runtime.on_slot_free(runtime)  # wake-ups while the request is outstanding ask for nothing more
    await asyncio.sleep(0.02)
    assert js.batches == [3]
    js.queue = [FakeMsg(job(i)) for i in range(5)]
    js.deliver()  # three arrive for the outstanding request; two stay in the stream
    assert len(running(worker)) == 3 and len(js.queue) == 2
    await asyncio.sleep(0.02)
    assert js.batches == [3]
    await runner.close(1.0)


class FakeNats:
    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, str]] = []

    async def publish(self, subject: str, payload: bytes, reply: str = "") -> None:
        self.published.append((subject, payload, reply))


@run
async def test_the_puller_counts_outstanding_jobs_from_deliveries_and_408s():
    clock = FakeClock()
    got: list[Any] = []
    changes: list[int] = []
    puller = store.Puller(FakeNats(), "svc", got.append, lambda: changes.append(1), clock=clock)
    await puller.request(4)
    [(subject, body, _)] = puller.nc.published
    assert subject == "$JS.API.CONSUMER.MSG.NEXT.ANYCORE_JOBS.jobs-svc" and b'"batch": 4' in body
    await puller._received(SimpleNamespace(data=b"job", headers={"Nats-Msg-Id": "j1"}))
    assert puller.outstanding == 3 and len(got) == 1
    await puller._received(SimpleNamespace(data=b"", headers={"Status": "100"}))  # heartbeat
    assert puller.outstanding == 3 and not changes
    await puller._received(SimpleNamespace(data=b"", headers={"Status": "408", "Nats-Pending-Messages": "3"}))
    assert puller.outstanding == 0 and changes == [1]
    await puller.request(2)  # its 408 is lost (NATS restarted): written off once it must have expired
    clock.advance(store.PULL_EXPIRES + store.PULL_GRACE + 0.1)
    await puller.request(1)
    assert puller.outstanding == 1


@run
async def test_a_request_ending_wakes_the_pull_loop_only_when_it_would_ask_for_more():
    """Every request's end calls ``on_slot_free``: waking the pull loop each time cost the
    node ~8 core-µs per hello request. With pulls outstanding for every free slot, it sleeps."""
    clock = FakeClock()
    runtime, worker, _, runner, js = setup(clock, slots=2)
    await until(lambda: js.batches == [2], "two jobs asked for the two free slots")
    jobs = runner.services["svc"]
    await until(lambda: not jobs.wake.is_set(), "the pull loop asleep")
    runtime.on_slot_free(runtime)  # a request ended; the two pulls still wait for jobs
    assert not jobs.wake.is_set()
    js.outstanding = 1  # one pull request expired
    runtime.on_slot_free(runtime)
    assert jobs.wake.is_set()
    await until(lambda: js.batches == [2, 1], "one more asked for")
    await runner.close(1.0)
