"""L2 — the node's job executor: store what workers enqueue, pull and run jobs on free slots.

Enqueue. A worker's ``anycore.enqueue`` arrives as a ``wire.Enqueue`` frame; the node checks
it (service name, method, path, ``cluster.jobs.MAX_BODY``), publishes it to the work-queue
stream and answers ``wire.Enqueued`` only after JetStream's publish ack: an id in the app's
hands means a stored job, which survives the worker and this node.

Pull. For every service that runs here, one task pulls from the service's shared durable
consumer exactly as many jobs as the service's router has free slots right now
(``Router.free``: 0 while anything waits in its queue), and pulls nothing while there are
none: a job stays in the stream until a slot is free on some node. A freed slot
(``ServiceRuntime.on_slot_free``: a request or job done, a worker ready) wakes the task;
``IDLE_RECHECK`` bounds the wait for a wake-up that did not come.

Run. A pulled job becomes a ``JobExchange`` — an exchange with no client socket, like
``cluster.dispatch.RemoteExchange`` — handed to ``ServiceRuntime.submit_job``: the router
places it on the live release's least-loaded free slot, the sweep enforces its deadline
(``job_timeout``), a dead worker's crash handling answers it (502 for an unsafe method).
Its answer goes to ``cluster.jobpolicy.decide``: ack, nak with the backoff delay, or
dead-letter. While it runs, an in-progress ack goes out every ``PROGRESS_EVERY`` seconds.

What a lost node means: its deliveries are never acknowledged, so JetStream redelivers them
to another node's consumer after ``ACK_WAIT`` — at least once, never lost.

Counts for metrics: ``JobRunner.counts[service]`` (a ``JobCounts`` of plain ints: enqueued,
started, succeeded, retried, dead, and ``running`` now), cumulative since the node started.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import msgspec

from anycore import wire
from anycore.cluster import jobs as store
from anycore.cluster.jobpolicy import Ack, Action, DeadLetter, JobRun, Retry, RetryPolicy, decide, describe
from anycore.config import _NAME
from anycore.node.jobexchange import JobExchange
from anycore.lifecycle import ServiceState
from anycore.log import NodeLog
from anycore.tasks import TaskGroup

if TYPE_CHECKING:
    from anycore.node.service import ServiceRuntime

IDLE_RECHECK = 1.0  # look at the free slots again after this even without a wake-up
PROGRESS_TICK = 0.5
RETRY_OPEN = 1.0  # JetStream refused (NATS away): try the consumer again after this
_METHOD = re.compile(r"^[A-Z]{1,16}$")


@dataclass
class JobCounts:
    enqueued: int = 0
    started: int = 0
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    running: int = 0


@dataclass
class _Delivery:
    msg: Any  # the JetStream message (ack, nak, in_progress)
    run: JobRun
    exchange: JobExchange


class _ServiceJobs:
    def __init__(self, runtime: "ServiceRuntime") -> None:
        self.runtime = runtime
        self.wake = asyncio.Event()
        self.puller: Any = None  # cluster.jobs.Puller, once the consumer is open
        self.task: asyncio.Task[None] | None = None
        self.running: dict[int, _Delivery] = {}  # by exchange id


class JobRunner:
    def __init__(self, node_id: str, log: NodeLog, clock: Callable[[], float] | None = None) -> None:
        self.node_id = node_id
        self.log = log
        self.clock = clock or time.monotonic  # paces the in-progress acks only
        self.nc: Any = None
        self.js: Any = None
        self.services: dict[str, _ServiceJobs] = {}
        self.counts: dict[str, JobCounts] = {}  # what metrics read: plain ints per service
        self.tasks = TaskGroup("jobs", on_error=lambda name, exc: log.event("jobs.task_failed", task=name,
                                                                            error=repr(exc)[:300]))
        self._progress: asyncio.Task[None] | None = None
        self._closed = False

    def _count(self, service: str) -> JobCounts:
        counts = self.counts.get(service)
        if counts is None:
            counts = self.counts[service] = JobCounts()
        return counts

    async def start(self, nc: Any) -> None:
        """Open the streams (creating them on the first node) and start the progress acks."""
        js = nc.jetstream()
        await store.open_streams(js)
        self.nc, self.js = nc, js
        self._progress = self.tasks.spawn(self._progress_loop(), "job progress")
        for jobs in self.services.values():
            self._start_pulling(jobs)

    # -- services -----------------------------------------------------------------------
    def watch(self, runtime: "ServiceRuntime") -> None:
        """A service exists here: run its jobs whenever it has free slots."""
        jobs = _ServiceJobs(runtime)
        self.services[runtime.name] = jobs
        runtime.on_enqueue_job = self.on_enqueue
        runtime.on_slot_free = lambda r: self._slot_freed(jobs)
        if self.js is not None:
            self._start_pulling(jobs)

    def _slot_freed(self, jobs: _ServiceJobs) -> None:
        """Called at every request's end (``on_done``): wake the pull loop only if it would ask
        for more — waking it per request cost the node ~8 core-µs per hello request (a task
        switch and a timer each time), measured with bench/gateway_ab.py."""
        puller = jobs.puller
        if puller is None or self._free(jobs.runtime) > puller.outstanding:
            jobs.wake.set()

    def _start_pulling(self, jobs: _ServiceJobs) -> None:
        if jobs.task is None and not self._closed:
            jobs.task = self.tasks.spawn(self._pull(jobs), f"jobs of {jobs.runtime.name}")

    def forget(self, runtime: "ServiceRuntime") -> None:
        jobs = self.services.pop(runtime.name, None)
        if jobs is not None and jobs.task is not None:
            jobs.task.cancel()

    def stop_pulling(self) -> None:
        """The node is going down: pull nothing more (what runs finishes with its service)."""
        self._closed = True
        for jobs in self.services.values():
            if jobs.task is not None:
                jobs.task.cancel()

    async def close(self, bound: float) -> None:
        """After the services stopped: let the last acks go out (bounded), then stop."""
        self.stop_pulling()
        if self._progress is not None:
            self._progress.cancel()
        settling = [t for t in self.tasks.tasks if not t.done()]
        if settling:
            await asyncio.wait(settling, timeout=bound)
        await self.tasks.close(bound)

    @staticmethod
    def _free(runtime: "ServiceRuntime") -> int:
        if runtime.release is None or runtime.life.state is not ServiceState.RUNNING:
            return 0
        return runtime.router.free

    async def _pull(self, jobs: _ServiceJobs) -> None:
        """Keep ``free slots`` jobs asked for: requested and not yet delivered (``outstanding``)
        plus the free slots they will take never exceed the free slots."""
        runtime = jobs.runtime
        try:
            while True:
                if jobs.puller is None:
                    try:
                        puller = self.open_puller(runtime.name, lambda msg: self._run(jobs, msg), jobs.wake.set)
                        await puller.open()
                        jobs.puller = puller
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # NATS away, JetStream not ready: say it, try again later
                        self.log.event("jobs.pull_failed", runtime.name, error=repr(exc)[:300])
                        await asyncio.sleep(RETRY_OPEN)
                        continue
                want = self._free(runtime) - jobs.puller.outstanding
                if want > 0:
                    try:
                        await jobs.puller.request(want)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        self.log.event("jobs.pull_failed", runtime.name, error=repr(exc)[:300])
                        await asyncio.sleep(RETRY_OPEN)
                        continue
                jobs.wake.clear()
                try:
                    await asyncio.wait_for(jobs.wake.wait(), IDLE_RECHECK)
                except asyncio.TimeoutError:
                    pass
        finally:
            if jobs.puller is not None:
                await jobs.puller.close()

    def open_puller(self, service: str, on_message: Callable[[Any], None], on_change: Callable[[], None]) -> Any:
        """The service's ``cluster.jobs.Puller`` (a seam: the unit tests hand in a fake)."""
        return store.Puller(self.nc, service, on_message, on_change)

    def _run(self, jobs: _ServiceJobs, msg: Any) -> None:
        runtime = jobs.runtime
        try:
            job = store.job_decoder.decode(msg.data)
        except msgspec.DecodeError:
            self.log.event("jobs.unreadable", runtime.name, subject=msg.subject)
            self.tasks.offer(self._settle(msg.term()), "term unreadable job")
            return
        delivered = msg.metadata.num_delivered
        run = JobRun(job.id, delivered, self.clock(), store.PROGRESS_EVERY)
        now = runtime.clock()
        exchange = JobExchange(job, delivered, now, lambda e: self._finished(jobs, e))
        jobs.running[exchange.id] = _Delivery(msg, run, exchange)
        counts = self._count(runtime.name)
        counts.started += 1
        counts.running += 1
        runtime.submit_job(exchange, now + runtime.config.job_timeout)

    def _finished(self, jobs: _ServiceJobs, exchange: JobExchange) -> None:
        delivery = jobs.running.pop(exchange.id, None)
        if delivery is None:
            return
        config = jobs.runtime.config
        policy = RetryPolicy(config.job_attempts, tuple(config.job_backoff))
        error = exchange.error or describe(exchange.status, exchange.answer)
        action = decide(policy, delivery.run.delivered, exchange.status, error)
        delivery.run.finish(action)
        counts = self._count(jobs.runtime.name)
        counts.running -= 1
        self.tasks.offer(self._act(jobs.runtime.name, delivery, action, exchange), f"settle job {exchange.job.id}")

    async def _act(self, service: str, delivery: _Delivery, action: Action, exchange: JobExchange) -> None:
        counts = self._count(service)
        msg, job = delivery.msg, exchange.job
        if isinstance(action, Ack):
            counts.succeeded += 1
            await self._settle(msg.ack())
        elif isinstance(action, Retry):
            counts.retried += 1
            self.log.event("job.retry", service, job=job.id, attempt=delivery.run.delivered, delay_s=action.delay,
                           status=exchange.status, error=(exchange.error or describe(exchange.status, exchange.answer))[:300])
            await self._settle(msg.nak(delay=action.delay))
        elif isinstance(action, DeadLetter):
            dead = store.DeadJob(job, action.error, action.attempts, time.time(), self.node_id)
            try:
                await store.publish_dead(self.js, dead)
            except Exception as exc:  # not stored as dead: leave it in the queue, dead-lettered next time
                self.log.event("job.dead_letter_failed", service, job=job.id, error=repr(exc)[:300])
                await self._settle(msg.nak(delay=RETRY_OPEN))
                return
            counts.dead += 1
            self.log.event("job.dead", service, job=job.id, attempts=action.attempts, error=action.error[:300])
            await self._settle(msg.ack())

    async def _settle(self, ack: Any) -> None:
        """An ack, nak or term: if it is lost (NATS away), JetStream redelivers after ACK_WAIT."""
        try:
            await ack
        except Exception:
            pass

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(PROGRESS_TICK)
            now = self.clock()
            for jobs in list(self.services.values()):
                for delivery in list(jobs.running.values()):
                    if delivery.run.progress_due(now):
                        await self._settle(delivery.msg.in_progress())

    # -- enqueue --------------------------------------------------------------------------
    def on_enqueue(self, worker: Any, frame: wire.Enqueue) -> None:
        self.tasks.offer(self._enqueue(worker, frame), "enqueue")

    def _refusal(self, frame: wire.Enqueue) -> str | None:
        if not _NAME.match(frame.service):
            return f"{frame.service!r} is not a service name (lowercase letters, digits, '-', '_')"
        if not _METHOD.match(frame.method):
            return f"{frame.method!r} is not an HTTP method (e.g. 'POST')"
        if not frame.path.startswith("/"):
            return f"job path {frame.path!r} must start with '/'"
        if len(frame.key) > 256 or any(c in frame.key for c in "\r\n"):
            return "a job key is at most 256 characters, with no line breaks"
        if len(frame.body) > store.MAX_BODY:
            return (f"job body of {len(frame.body)} bytes exceeds {store.MAX_BODY} bytes — put large inputs in "
                    "storage the job reads (a file, an object store) and enqueue a reference")
        if self.js is None:
            return "the job queue is not open yet (the node is starting); retry"
        return None

    async def _enqueue(self, worker: Any, frame: wire.Enqueue) -> None:
        job_id = frame.key or secrets.token_hex(12)
        duplicate, error = False, self._refusal(frame)
        if error is None:
            job = store.Job(job_id, frame.service, frame.method, frame.path, frame.headers, frame.body, time.time(),
                            self.node_id)
            try:
                duplicate = await store.publish(self.js, job)
                self._count(frame.service).enqueued += 0 if duplicate else 1
            except Exception as exc:
                error = f"JetStream did not store the job ({type(exc).__name__}: {exc}) — retry; see `anycore ps`"
        worker.send(wire.Enqueued(frame.id, job_id if error is None else "", error, duplicate))

    # -- anycore jobs ---------------------------------------------------------------------------
    async def report(self, service: str | None) -> dict[str, Any]:
        if self.js is None:
            return {"ok": False, "error": "the job queue is not open yet (the node is starting); retry"}
        rows = await asyncio.wait_for(store.report(self.js, service), 10.0)
        for row in rows:
            counts = self.counts.get(row["service"], JobCounts())
            row["running_here"] = counts.running
            row["here"] = {"enqueued": counts.enqueued, "started": counts.started, "succeeded": counts.succeeded,
                           "retried": counts.retried, "dead": counts.dead}
        return {"ok": True, "node": self.node_id, "services": rows}
