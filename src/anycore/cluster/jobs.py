"""L1 — durable jobs in JetStream: the work-queue stream, its consumers, the dead letters.

Storage. Every job is one message of the ``ANYCORE_JOBS`` stream (retention WorkQueue: a
message is removed once acknowledged), on the subject ``anycore.jobs.<service>``; its
body is a msgpack ``Job`` (the request to run: method, path, headers, body) of at most
``MAX_BODY`` bytes of request body. The stream is created with 3 replicas when the NATS
deployment is a cluster of 3 or more, else one (``cluster.jetstream.create_replicated``),
so an acknowledged publish survives the loss of any one NATS server of three, and of any
anycore node. The message id (``Nats-Msg-Id``) is the job id: the caller's ``key`` when
given, so a second enqueue with the same key within ``DUPLICATE_WINDOW`` is dropped by
JetStream itself and reported as a duplicate with the same id.

Consumers. Each service has one durable pull consumer, ``jobs-<service>``, filtered on its
subject and shared by every node that runs the service: a node pulls exactly as many
messages as it has free slots (``node.jobs``), so a job waits in the stream, not in a
node, until a slot is free somewhere. Acks are explicit; a delivered job not acknowledged
within ``ACK_WAIT`` is delivered again (to any node): that is how a job survives the
node that ran it. A running job sends an in-progress ack every ``PROGRESS_EVERY`` seconds.
The consumer's own redelivery limit is off (``max_deliver`` -1): retries and the dead
letter are decided by ``cluster.jobpolicy`` from JetStream's delivery count.

Dead letters. A job that failed its last attempt is published to ``ANYCORE_JOBS_DEAD``
on ``anycore.jobs_dead.<service>`` (a ``DeadJob``: the job, its last error, its attempts)
and only then acknowledged in the work queue. That stream keeps the last ``DEAD_KEEP``
dead jobs per service for ``DEAD_MAX_AGE``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from typing import Any, Callable

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from anycore.cluster.jetstream import create_replicated

STREAM = "ANYCORE_JOBS"
DEAD_STREAM = "ANYCORE_JOBS_DEAD"
PREFIX = "anycore.jobs."
DEAD_PREFIX = "anycore.jobs_dead."
MAX_BODY = 512 * 1024  # request body bytes of one job; larger inputs belong in storage the job reads
MAX_MESSAGE = MAX_BODY + 64 * 1024  # the stream's max_msg_size: the body plus method, path and headers
DUPLICATE_WINDOW = 120.0  # seconds during which a key (Nats-Msg-Id) seen before is dropped
ACK_WAIT = 6.0  # an unacknowledged delivery is redelivered (anywhere) after this long
PROGRESS_EVERY = 2.0  # a running job's in-progress ack period (well inside ACK_WAIT)
PUBLISH_TIMEOUT = 5.0
PULL_EXPIRES = 5.0  # a pull request lingers this long on the server
PULL_GRACE = 2.0
DEAD_KEEP = 100  # dead letters kept per service
DEAD_MAX_AGE = 7 * 24 * 3600.0
LIST_DEAD = 20  # dead letters a report lists per service (the newest)


class Job(msgspec.Struct, array_like=True):
    id: str
    service: str
    method: str
    path: str  # as the caller gave it: "/make?size=3"
    headers: list[tuple[bytes, bytes]]
    body: bytes
    enqueued_at: float  # unix time
    origin: str  # the node that stored it


class DeadJob(msgspec.Struct):
    job: Job
    error: str
    attempts: int
    died_at: float
    node: str  # the node of the last attempt


job_codec = msgspec.msgpack.Encoder()
job_decoder = msgspec.msgpack.Decoder(Job)
dead_decoder = msgspec.msgpack.Decoder(DeadJob)


def job_subject(service: str) -> str:
    return PREFIX + service


def dead_subject(service: str) -> str:
    return DEAD_PREFIX + service


def consumer_name(service: str) -> str:
    return f"jobs-{service}"


async def open_streams(js: Any) -> None:
    """Create the two streams if they are missing; existing ones are used as they are."""
    configs = [
        StreamConfig(name=STREAM, subjects=[PREFIX + ">"], retention=RetentionPolicy.WORK_QUEUE,
                     storage=StorageType.FILE, max_msg_size=MAX_MESSAGE, duplicate_window=DUPLICATE_WINDOW,
                     description="anycore durable jobs: one subject per service"),
        StreamConfig(name=DEAD_STREAM, subjects=[DEAD_PREFIX + ">"], retention=RetentionPolicy.LIMITS,
                     storage=StorageType.FILE, max_msgs_per_subject=DEAD_KEEP, max_age=DEAD_MAX_AGE,
                     max_msg_size=MAX_MESSAGE + 4096, description="anycore jobs that failed their last attempt"),
    ]
    for config in configs:
        try:
            await js.stream_info(config.name)
        except NotFoundError:
            await create_replicated(lambda n, c=config: js.add_stream(dataclasses.replace(c, num_replicas=n)))  # type: ignore[misc]


async def publish(js: Any, job: Job) -> bool:
    """Store ``job``; True if JetStream dropped it as a duplicate of its id (its key).
    Returns only after the stream acknowledged it (stored, replicated)."""
    ack = await js.publish(job_subject(job.service), job_codec.encode(job), timeout=PUBLISH_TIMEOUT,
                           stream=STREAM, headers={"Nats-Msg-Id": job.id})
    return bool(ack.duplicate)


async def publish_dead(js: Any, dead: DeadJob) -> None:
    await js.publish(dead_subject(dead.job.service), msgspec.msgpack.encode(dead), timeout=PUBLISH_TIMEOUT,
                     stream=DEAD_STREAM)


async def open_consumer(js: Any, service: str) -> None:
    """Create the service's shared durable pull consumer, or update it to this config."""
    config = ConsumerConfig(durable_name=consumer_name(service), filter_subject=job_subject(service),
                            ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT, max_deliver=-1,
                            max_ack_pending=-1, description=f"anycore jobs of service {service}")
    await js.add_consumer(STREAM, config)


class Puller:
    """Pull requests to the service's consumer, each message handled the moment it arrives.

    ``request(n)`` asks JetStream for up to ``n`` more messages (one pull request, lingering
    up to ``PULL_EXPIRES``); ``outstanding`` counts what was asked and not yet delivered, so
    the caller asks only for ``free slots - outstanding`` and never holds more jobs than it
    has slots. nats-py's ``fetch(n)`` is not used: it returns only once the whole batch is
    in (or its timeout passed), holding the first job while the batch fills. A request
    ends with a 408 status carrying how many of its messages were not delivered
    (``Nats-Pending-Messages``); a request whose end was never heard (NATS restarted) is
    written off once every request must have expired."""

    def __init__(self, nc: Any, service: str, on_message: Callable[[Any], None], on_change: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.nc = nc
        self.service = service
        self.on_message = on_message
        self.on_change = on_change
        self.clock = clock
        self.outstanding = 0
        self.expires_at = 0.0  # when the newest request expires on the server
        self.inbox = ""
        self.sub: Any = None

    async def open(self) -> None:
        await open_consumer(self.nc.jetstream(), self.service)
        self.inbox = self.nc.new_inbox()
        self.sub = await self.nc.subscribe(self.inbox, cb=self._received)

    async def request(self, n: int) -> None:
        now = self.clock()
        if self.outstanding and now > self.expires_at + PULL_GRACE:
            self.outstanding = 0  # every request has expired by now: their 408s were lost
        self.outstanding += n
        self.expires_at = now + PULL_EXPIRES
        body = json.dumps({"batch": n, "expires": int(PULL_EXPIRES * 1e9)}).encode()
        await self.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.{consumer_name(self.service)}", body,
                              reply=self.inbox)

    async def _received(self, msg: Any) -> None:
        status = (msg.headers or {}).get("Status") if not msg.data else None
        if status is None:
            self.outstanding = max(0, self.outstanding - 1)
            self.on_message(msg)
            return
        if status == "100":  # an idle heartbeat
            return
        pending = (msg.headers or {}).get("Nats-Pending-Messages")
        self.outstanding = max(0, self.outstanding - int(pending)) if pending and pending.isdigit() else 0
        self.on_change()

    async def close(self) -> None:
        if self.sub is not None:
            try:
                await self.sub.unsubscribe()
            except Exception:
                pass
            self.sub = None


async def report(js: Any, service: str | None) -> list[dict[str, Any]]:
    """Per service, cluster-wide: jobs waiting (never delivered), delivered and not yet
    acknowledged (running, or waiting out a retry's backoff), redelivered (failed at least
    once, or their node was lost), dead letters kept, and the newest dead letters."""
    waiting = await _subject_counts(js, STREAM, job_subject(service) if service else PREFIX + ">", PREFIX)
    dead = await _subject_counts(js, DEAD_STREAM, dead_subject(service) if service else DEAD_PREFIX + ">", DEAD_PREFIX)
    consumers: dict[str, Any] = {}
    for info in await js.consumers_info(STREAM):
        name = (info.config.filter_subject or "").removeprefix(PREFIX)
        if name and (service is None or name == service):
            consumers[name] = info
    names = sorted({*waiting, *dead, *consumers} | ({service} if service else set()))
    rows = []
    for name in names:
        info = consumers.get(name)
        stored = waiting.get(name, 0)
        in_progress = info.num_ack_pending if info is not None else 0
        rows.append({"service": name, "stored": stored, "pending": max(0, stored - in_progress),
                     "in_progress": in_progress, "redelivered": info.num_redelivered if info is not None else 0,
                     "dead": dead.get(name, 0), "consumer": info is not None,
                     "dead_letters": await _dead_letters(js, name) if dead.get(name) else []})
    return rows


async def _subject_counts(js: Any, stream: str, subjects: str, prefix: str) -> dict[str, int]:
    info = await js.stream_info(stream, subjects_filter=subjects)
    return {subject.removeprefix(prefix): count for subject, count in (info.state.subjects or {}).items()}


async def _dead_letters(js: Any, service: str) -> list[dict[str, Any]]:
    """The newest LIST_DEAD dead letters of ``service``, oldest first, read by a short-lived
    ephemeral consumer (no ack, deleted by the server when idle)."""
    info = await js.stream_info(DEAD_STREAM, subjects_filter=dead_subject(service))
    count = (info.state.subjects or {}).get(dead_subject(service), 0)
    if not count:
        return []
    config = ConsumerConfig(ack_policy=AckPolicy.NONE, deliver_policy=DeliverPolicy.ALL, inactive_threshold=5.0,
                            mem_storage=True, num_replicas=1)
    sub = await js.pull_subscribe(dead_subject(service), stream=DEAD_STREAM, config=config)
    found: list[dict[str, Any]] = []
    try:
        while len(found) < count:
            try:
                msgs = await sub.fetch(min(count - len(found), DEAD_KEEP), timeout=1.0)
            except asyncio.TimeoutError:
                break
            for msg in msgs:
                try:
                    dead = dead_decoder.decode(msg.data)
                except msgspec.DecodeError:
                    continue
                found.append({"job": dead.job.id, "method": dead.job.method, "path": dead.job.path,
                              "attempts": dead.attempts, "error": dead.error, "node": dead.node,
                              "enqueued_at": dead.job.enqueued_at, "died_at": dead.died_at,
                              "ago_s": round(time.time() - dead.died_at, 1)})
    finally:
        try:
            await sub.unsubscribe()
        except Exception:
            pass
    return found[-LIST_DEAD:]
