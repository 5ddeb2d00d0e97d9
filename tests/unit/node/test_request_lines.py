"""The node's log lines about a request name its request id: retried, quarantined, 502 after a
worker death, 504 queued and running. ServiceRuntime with fake workers and a fake clock."""

from __future__ import annotations

import asyncio

from anycore.gateway.exchange import Exchange
from anycore.node.service import ServiceRuntime
from tests.unit.node.fakes import FakeClock, answer_of, request, run, service, until


def watch(runtime: ServiceRuntime) -> list[tuple[str, dict[str, object]]]:
    events: list[tuple[str, dict[str, object]]] = []
    runtime.log.watchers.append(lambda now, event, svc, fields: events.append((event, fields)))
    return events


def with_id(exchange: Exchange, rid: str) -> Exchange:
    exchange.request_id = rid
    return exchange


def lines(events: list[tuple[str, dict[str, object]]], name: str) -> list[dict[str, object]]:
    return [fields for event, fields in events if event == name]


@run
async def test_retry_502_and_quarantine_lines_name_the_request_id():
    clock = FakeClock()
    runtime, release = service(clock)
    events = watch(runtime)
    workers = [release.start_worker(i, slots=1) for i in (1, 2, 3, 4)]
    post = with_id(request("POST", b"/pay", body=b"x"), "pay-1")
    runtime.submit(post, "/pay")
    release.kill(next(w for w in workers if w.started(post)))
    assert answer_of(post)[0] == 502
    [failed] = lines(events, "request.failed")
    assert (failed["request_id"], failed["status"], failed["method"]) == ("pay-1", 502, "POST")
    poison = with_id(request("GET", b"/poison"), "poison-1")
    runtime.submit(poison, "/poison")
    release.kill(next(w for w in release.workers.values() if w.started(poison)))
    release.kill(next(w for w in release.workers.values() if w.started(poison)))
    assert answer_of(poison)[1]["error"] == "quarantined"
    assert [f["request_id"] for f in lines(events, "request.retried")] == ["poison-1"]
    assert [f["request_id"] for f in lines(events, "request.quarantined")] == ["poison-1"]


@run
async def test_deadline_504_lines_name_the_request_id_queued_and_running():
    clock = FakeClock()
    runtime, release = service(clock, timeout=0.05)
    events = watch(runtime)
    release.start_worker(1, slots=1)
    running, queued = with_id(request(), "run-1"), with_id(request(), "queue-1")
    runtime.submit(running, "/")
    runtime.submit(queued, "/")
    await asyncio.sleep(0.06)
    clock.advance(0.06)
    await until(lambda: queued.response_complete, "the queued request's 504")
    runtime.sweep(clock())
    assert answer_of(running)[0] == 504
    assert [(f["request_id"], f["where"], f["status"]) for f in lines(events, "request.timed_out")] == [
        ("queue-1", "queued", 504), ("run-1", "running", 504)]
