"""Durable jobs on one real node (embedded nats-server, JetStream): ``anycore.enqueue`` from a
service's code, jobs run on the service's slots, a key deduplicates, a failing job is
retried with backoff then dead-lettered and shown by ``anycore jobs``, a job running past
the ack wait is kept alive by in-progress acks, and bad input is refused with a clear
error. One node serves every check (started once per module). The 1,000-job run with a
node killed is tests/cluster/test_jobs.py."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from typing import Any, Iterator

import httpx
from prometheus_client.parser import text_string_to_metric_families
import pytest

from tests.conftest import NodeFactory, RunningNode, make_service, wait_for

# The job handler records every run in a file in its ANYCORE_DATA_DIR: "start <job> <i> <body bytes>"
# when it begins, "end <job>" when it answered 2xx, "fail <job> <attempt>" for /fail.
JOBS_APP = r"""
import asyncio
import json
import os

import anycore
from anycore.errors import JobRefused

LOG = os.path.join(os.environ["ANYCORE_DATA_DIR"], "runs.log")


def record(line):
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def read_body(receive):
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def enqueue_all(spec):
    n, path, key, size = spec.get("n", 1), spec.get("path", "/job"), spec.get("key"), spec.get("size", 0)

    async def one(i):
        sep = "&" if "?" in path else "?"
        if size:
            return await anycore.enqueue("jobs", "POST", f"{path}{sep}i={i}", content=b"x" * size, key=key)
        return await anycore.enqueue("jobs", "POST", f"{path}{sep}i={i}", json={"i": i}, key=key)

    ids = []
    for start in range(0, n, 50):
        ids += await asyncio.gather(*(one(i) for i in range(start, min(n, start + 50))))
    return ids


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = await read_body(receive)
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if p)
    headers = dict(scope["headers"])
    job = headers.get(b"anycore-job", b"").decode()
    status, out = 200, b"ok"
    if scope["path"] == "/enqueue":
        try:
            out = json.dumps({"ids": await enqueue_all(json.loads(body))}).encode()
        except JobRefused as exc:
            status, out = 400, str(exc).encode()
    elif scope["path"] == "/job":
        record(f"start {job} {query.get('i', '')} {len(body)}")
        await asyncio.sleep(float(query.get("sleep", 0)))
        record(f"end {job}")
    elif scope["path"] == "/fail":
        record(f"fail {job} {headers[b'anycore-job-attempt'].decode()}")
        status, out = 500, b"thumbnail broke: no such image"
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": out})
"""

# A WSGI service enqueues with the sync form, from its request thread.
WSGI_APP = r"""
import anycore


def app(environ, start_response):
    job = anycore.enqueue_sync("jobs", "POST", "/job?i=wsgi", json={"from": "wsgi"})
    start_response("200 OK", [("content-type", "text/plain")])
    return [job.encode()]
"""

CONFIG = """
name = "jobs"
workers = 1
slots = 4
job_attempts = 3
job_backoff = [0.2, 0.4]
"""


def runs(node: RunningNode) -> list[list[str]]:
    path = node.home / "data" / "jobs" / "runs.log"
    if not path.exists():
        found = list(node.home.rglob("runs.log"))
        if not found:
            return []
        path = found[0]
    return [line.split() for line in path.read_text().splitlines() if line]


def enqueue(node: RunningNode, **spec: Any) -> httpx.Response:
    return httpx.post(node.url + "/enqueue", json=spec, timeout=60)


def jobs_row(node: RunningNode) -> dict[str, Any]:
    rows = node.probe.call("jobs", service="jobs")["services"]
    return next(r for r in rows if r["service"] == "jobs")


def settled(node: RunningNode) -> bool:
    row = jobs_row(node)
    return row["stored"] == 0 and row["in_progress"] == 0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningNode]:
    root = tmp_path_factory.mktemp("jobs")
    factory = NodeFactory(root)
    app = make_service(root, "jobs", JOBS_APP, CONFIG)
    wsgi = make_service(root, "wsgi", WSGI_APP, 'name = "wsgi"\nroutes = ["/w"]\nworkers = 1\n')
    try:
        yield factory.start(app, wsgi)
    finally:
        factory.stop_all()


def test_a_job_enqueued_twice_with_a_key_runs_once(node: RunningNode) -> None:
    first = enqueue(node, key="order-7", path="/job")
    second = enqueue(node, key="order-7", path="/job")
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.json()["ids"] == second.json()["ids"] == ["order-7"]
    wait_for(lambda: any(r[:2] == ["end", "order-7"] for r in runs(node)), 20, what="the keyed job to run")
    wait_for(lambda: settled(node), 20, interval=0.1, what="the queue to be empty")
    assert Counter(r[1] for r in runs(node) if r[0] == "start")["order-7"] == 1


def test_a_job_failing_every_attempt_is_dead_lettered_with_its_last_error(node: RunningNode) -> None:
    reply = enqueue(node, path="/fail")
    assert reply.status_code == 200, reply.text
    [job] = reply.json()["ids"]

    def dead() -> dict[str, Any] | None:
        row = jobs_row(node)
        return next((d for d in row["dead_letters"] if d["job"] == job), None)

    letter = wait_for(dead, 30, interval=0.2, what="the failing job in the dead-letter stream")
    assert letter["attempts"] == 3 and "thumbnail broke: no such image" in letter["error"], letter
    attempts = [r[2] for r in runs(node) if r[0] == "fail" and r[1] == job]
    assert attempts == ["1", "2", "3"]  # retried with backoff, then no more
    shown = node.cli("jobs", "jobs")
    assert shown.returncode == 0, shown.stderr
    assert re.search(rf"dead jobs job {job} POST /fail\?i=0 after 3 attempts .*thumbnail broke: no such image", shown.stdout), shown.stdout
    assert re.search(r"jobs\s.*\s1\s", shown.stdout)  # the table row counts the dead letter
    everything = json.loads(node.cli("jobs", "--json").stdout)
    assert any(r["service"] == "jobs" and r["dead"] >= 1 for r in everything["services"])
    # the admin listener's /metrics counts them too (this node ran all three attempts)
    metrics = httpx.get(f"{node.record['admin']}/metrics", timeout=10).text
    jobs = {s.labels["outcome"]: s.value for f in text_string_to_metric_families(metrics) if f.name == "anycore_jobs"
            for s in f.samples if s.labels.get("service") == "jobs" and s.name == "anycore_jobs_total"}
    assert jobs["dead"] >= 1 and jobs["retried"] >= 2 and jobs["started"] >= 3 and jobs["enqueued"] >= 1, jobs


def test_a_job_running_past_the_ack_wait_runs_once(node: RunningNode) -> None:
    """8 s > ACK_WAIT (6 s): without in-progress acks JetStream would deliver it again."""
    [job] = enqueue(node, path="/job?sleep=8").json()["ids"]
    wait_for(lambda: any(r[:2] == ["end", job] for r in runs(node)), 30, interval=0.2, what="the long job to end")
    wait_for(lambda: settled(node), 20, interval=0.1, what="the queue to be empty")
    time.sleep(0.5)  # a redelivery would have started by now: ack wait passed long ago
    assert Counter(r[1] for r in runs(node) if r[0] == "start")[job] == 1


def test_a_job_body_of_several_chunks_arrives_whole(node: RunningNode) -> None:
    [job] = enqueue(node, path="/job", size=400 * 1024).json()["ids"]  # > wire.CHUNK: streamed under credit
    wait_for(lambda: ["start", job, "0", str(400 * 1024)] in runs(node), 20, what="the big job to run with its body")


def test_bad_jobs_are_refused_with_a_clear_error(node: RunningNode) -> None:
    big = enqueue(node, path="/job", size=600 * 1024)
    assert big.status_code == 400 and "exceeds 524288 bytes" in big.text, big.text
    relative = enqueue(node, path="job")
    assert relative.status_code == 400 and "must start with '/'" in relative.text, relative.text
    bad = node.cli("jobs", "Not A Name")
    assert bad.returncode == 2 and "is not a service name" in bad.stderr, (bad.stdout, bad.stderr)


def test_a_wsgi_app_enqueues_with_the_sync_form(node: RunningNode) -> None:
    reply = httpx.get(node.url + "/w/", timeout=30)
    assert reply.status_code == 200, reply.text
    job = reply.text
    wait_for(lambda: ["start", job, "wsgi", "16"] in runs(node), 20, what="the job enqueued by the WSGI app to run")
