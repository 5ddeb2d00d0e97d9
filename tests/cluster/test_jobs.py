"""Durable jobs across two real nodes on one real nats-server: 1,000 jobs enqueued on node A
(which runs them alone at first), node B joins and takes its share, then A — the node that
enqueued them and ran most of them — is killed with ``kill -9``. Every job must end (an
"end" line in some node's run log), none lost; a job may run twice only if it was on A when
A died, and A never held more jobs than its slots (a node pulls only for free slots). On
three NATS servers joined by routes, the job streams have three replicas."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter

import httpx
import nats

from anycore.cluster import jobs as store
from tests.cluster.conftest import ClusterNodes
from tests.conftest import make_service, wait_for
from tests.e2e.test_jobs import JOBS_APP, runs

JOBS = 1000
SLOTS = 8
CONFIG = f"""
name = "jobs"
workers = 1
slots = {SLOTS}
"""


def test_thousand_jobs_survive_kill_9_of_the_node_running_most_of_them(cluster, tmp_path):
    app = make_service(tmp_path, "jobs", JOBS_APP, CONFIG)
    a = cluster.join(app)
    reply = httpx.post(a.url + "/enqueue", json={"n": JOBS, "path": "/job?sleep=0.05"}, timeout=120)
    assert reply.status_code == 200, reply.text
    ids = reply.json()["ids"]
    assert len(set(ids)) == JOBS
    b = cluster.join(app)
    wait_for(lambda: sum(r[0] == "start" for r in runs(b)) >= 20, 30, interval=0.05, what="node B to run jobs")
    ran_a = sum(r[0] == "start" for r in runs(a))
    ran_b = sum(r[0] == "start" for r in runs(b))
    assert ran_a > ran_b, (ran_a, ran_b)  # A holds most of the work done so far
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(10)

    def all_ended() -> bool:
        ended = {r[1] for node in (a, b) for r in runs(node) if r[0] == "end"}
        return ended >= set(ids)

    # The rest at B's pace, plus ACK_WAIT (6 s) for the jobs A had when it died.
    wait_for(all_ended, 60, interval=0.25, what="every job to have run")
    starts_a = [r[1] for r in runs(a) if r[0] == "start"]
    ended_a = {r[1] for r in runs(a) if r[0] == "end"}
    started = Counter(starts_a + [r[1] for r in runs(b) if r[0] == "start"])
    assert set(started) == set(ids)  # nothing ran that was not enqueued
    duplicates = {job for job, count in started.items() if count > 1}
    assert duplicates <= set(starts_a), duplicates - set(starts_a)  # only jobs that A had
    assert len(duplicates) <= SLOTS, duplicates  # A held at most its free slots' worth
    unfinished_on_a = set(starts_a) - ended_a
    assert unfinished_on_a <= duplicates  # what A was running when it died ran again on B
    # The queue is empty afterwards: B acknowledged everything, nothing waits for a redelivery.
    row = next(r for r in b.probe.call("jobs", service="jobs")["services"] if r["service"] == "jobs")
    wait_for(lambda: next(r for r in b.probe.call("jobs", service="jobs")["services"])["stored"] == 0, 15,
             interval=0.2, what="the work queue to be empty")
    assert row["dead"] == 0


def test_the_job_streams_are_replicated_on_a_three_server_nats_cluster(nats_cluster, tmp_path):
    factory = ClusterNodes(tmp_path, nats_cluster[0].url, nats_cluster[0].token)
    try:
        node = factory.join(make_service(tmp_path, "jobs", JOBS_APP, CONFIG))
        reply = httpx.post(node.url + "/enqueue", json={"key": "replicated", "path": "/job"}, timeout=60)
        assert reply.status_code == 200, reply.text
        wait_for(lambda: ["end", "replicated"] in runs(node), 20, what="the job to run")

        async def replicas() -> list[int]:
            nc = await nats.connect(nats_cluster[1].url, token=nats_cluster[1].token)
            try:
                js = nc.jetstream()
                return [(await js.stream_info(name)).config.num_replicas for name in (store.STREAM, store.DEAD_STREAM)]
            finally:
                await nc.close()

        assert asyncio.run(replicas()) == [3, 3]
    finally:
        factory.stop_all()
