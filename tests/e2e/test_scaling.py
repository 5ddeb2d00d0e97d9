"""Autoscaling on one node with real workers (issue 5, "Acceptance"): scale to zero and a
fork-fast cold start, a burst grows the workers straight to max and they shrink back after
the delay, a sawtooth load loses nothing and kills no worker mid-request, two services
competing for the cores both keep serving, `anycore scale` changes the limits live, and
`anycore ps` shows desired against actual workers with the scaler's last decision.

The sawtooth runs the full 60 s the issue asks for (three periods of 20 s)."""

from __future__ import annotations

import asyncio
import os
import re
import statistics
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import NodeFactory, RunningNode, make_service, wait_for

APP = """
import asyncio, os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":
        while (await receive()).get("more_body"):
            pass
    query = dict(p.split("=", 1) for p in scope["query_string"].decode().split("&") if "=" in p)
    await asyncio.sleep(int(query.get("ms", "0")) / 1000)
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def live(node: RunningNode, name: str) -> dict[str, Any]:
    return node.service(name)["live"] or {}


def events(node: RunningNode, event: str) -> list[dict[str, str]]:
    """The node's ``event=...`` log lines as dicts of their logfmt fields."""
    found = []
    for line in node.output.splitlines():
        if f" event={event} " in line or line.endswith(f" event={event}"):
            found.append({k: v.strip('"') for k, v in re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line)})
    return found


def when(event: dict[str, str]) -> float:
    return datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()


def worker_count(node: RunningNode, name: str) -> int:
    return len([w for w in live(node, name).get("workers", []) if w["state"] in ("forking", "starting", "ready")])


class Poller:
    """Polls `anycore ps` in a thread while traffic runs; keeps (time, scaler info, workers)."""

    def __init__(self, node: RunningNode, name: str) -> None:
        self.node, self.name = node, name
        self.samples: list[tuple[float, dict[str, Any], list[dict[str, Any]]]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            info = live(self.node, self.name)
            self.samples.append((time.monotonic(), info.get("scaler", {}), info.get("workers", [])))

    def __enter__(self) -> "Poller":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def test_scale_to_zero_leaves_no_worker_and_the_first_request_forks_one(nodes: NodeFactory, tmp_path: Path) -> None:
    svc = make_service(tmp_path, "zero", APP, """
        name = "zero"
        min_workers = 0
        max_workers = 2
        keep_warm = 1
        scale_down_delay = 1
    """)
    node = nodes.start(svc)
    zygote = live(node, "zero")["zygote_pid"]
    extra_ms: list[float] = []
    with httpx.Client(base_url=node.url, timeout=10) as client:
        for _ in range(3):
            before = [w["pid"] for w in live(node, "zero")["workers"]]
            wait_for(lambda: live(node, "zero")["workers"] == [], 15, what="no worker after the idle period")
            wait_for(lambda: not any(alive(p) for p in before), 5, what="the scaled-down worker processes to be gone")
            assert alive(zygote), "the zygote must stay warm while scaled to zero"
            t0 = time.perf_counter()
            cold = client.get("/")
            cold_s = time.perf_counter() - t0
            assert cold.status_code == 200, cold.text
            warm = []
            for _ in range(5):
                t0 = time.perf_counter()
                response = client.get("/")
                warm.append(time.perf_counter() - t0)
                assert response.status_code == 200
            extra_ms.append((cold_s - statistics.median(warm)) * 1000)
    assert live(node, "zero")["zygote_pid"] == zygote and alive(zygote)
    figure = f"cold start from zero: {statistics.median(extra_ms):.1f} ms extra vs a warm request " \
             f"(median of {len(extra_ms)} rounds: {', '.join(f'{m:.1f}' for m in extra_ms)} ms; goal <= 50 ms)"
    print("\n" + figure)
    assert statistics.median(extra_ms) < 2000, figure


async def _slow_requests(url: str, count: int, ms: int, method: str = "GET") -> list[int | str]:
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=count)
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        async def one() -> int | str:
            try:
                return (await client.request(method, f"/?ms={ms}")).status_code
            except httpx.HTTPError as exc:
                return repr(exc)

        return await asyncio.gather(*(one() for _ in range(count)))


def test_a_burst_of_100_slow_requests_grows_workers_to_max_then_shrinks_back_without_failures(
        nodes: NodeFactory, tmp_path: Path) -> None:
    svc = make_service(tmp_path, "burst", APP, """
        name = "burst"
        min_workers = 1
        max_workers = 4
        slots = 4
        scale_down_delay = 2
        keep_warm = 1
    """)
    node = nodes.start(svc)
    wait_for(lambda: worker_count(node, "burst") == 1, 10, what="one worker at rest")
    with Poller(node, "burst") as poll:
        t0 = time.monotonic()
        statuses = asyncio.run(_slow_requests(node.url, 100, 750))
        burst_s = time.monotonic() - t0
    failures = [s for s in statuses if s != 200]
    assert not failures, f"{len(failures)} of 100 burst requests failed: {failures[:5]}"
    full = [t - t0 for t, _, workers in poll.samples if len([w for w in workers if w["state"] == "ready"]) == 4]
    assert full, f"ps never showed 4 ready workers during the {burst_s:.1f}s burst: " \
                 f"{[len(w) for _, _, w in poll.samples]}"
    # 100 requests of 0.75 s on 1 worker x 4 slots would take ~19 s; at 4 workers, ~5 s.
    assert full[0] < burst_s / 2, f"4 workers only after {full[0]:.1f}s of a {burst_s:.1f}s burst"
    assert any(s.get("desired") == 4 and s.get("reason") == "demand above capacity" for _, s, _ in poll.samples)

    # Shrink back to min after the delay, one drain at a time, while light traffic keeps flowing.
    statuses = []
    with httpx.Client(base_url=node.url, timeout=10) as client:
        deadline = time.monotonic() + 30
        while worker_count(node, "burst") > 1 and time.monotonic() < deadline:
            statuses += [client.get("/?ms=20").status_code for _ in range(5)]
    assert worker_count(node, "burst") == 1, "workers did not shrink back to min_workers = 1"
    assert statuses and all(s == 200 for s in statuses), statuses
    ups, downs = events(node, "scale.up"), events(node, "scale.down")
    assert len(downs) >= 3 and downs[-1]["desired"] == "1", downs
    assert all(int(d["workers"]) - int(d["desired"]) == 1 for d in downs), f"scale-down must go one at a time: {downs}"
    # No scale-down within scale_down_delay of the last scale-up.
    last_up = max(when(u) for u in ups)
    first_down_after = min(when(d) for d in downs if when(d) > last_up)
    assert first_down_after - last_up >= 1.95, (last_up, first_down_after)  # 2 s, less clock rounding
    exits = events(node, "worker.exited")
    assert len(exits) >= 3 and all(e["cause"] == "exit code 0 (drained: scaled down)" and e["inflight"] == "0"
                                   for e in exits), exits


def test_a_sawtooth_load_for_60s_has_zero_failures_and_kills_no_worker_mid_request(
        nodes: NodeFactory, tmp_path: Path) -> None:
    svc = make_service(tmp_path, "saw", APP, """
        name = "saw"
        min_workers = 1
        max_workers = 4
        slots = 4
        scale_down_delay = 1
        keep_warm = 1
    """)
    node = nodes.start(svc)
    duration, period, peak = 60.0, 20.0, 24

    async def load() -> list[int | str]:
        results: list[int | str] = []
        limits = httpx.Limits(max_connections=peak, max_keepalive_connections=peak)
        async with httpx.AsyncClient(base_url=node.url, timeout=30, limits=limits) as client:
            start = asyncio.get_running_loop().time()

            async def user(i: int) -> None:
                while (now := asyncio.get_running_loop().time() - start) < duration:
                    phase = (now % period) / period  # up for half a period, down for the other half
                    level = peak * (1 - abs(2 * phase - 1))
                    if i >= level:
                        await asyncio.sleep(0.05)
                        continue
                    try:
                        # POST: never retried, so a worker killed mid-request would show as a 502.
                        results.append((await client.post("/?ms=300", content=b"x")).status_code)
                    except httpx.HTTPError as exc:
                        results.append(repr(exc))

            await asyncio.gather(*(user(i) for i in range(peak)))
        return results

    results = asyncio.run(load())
    failures = [r for r in results if r != 200]
    assert len(results) > 600 and not failures, f"{len(failures)} of {len(results)} failed: {failures[:5]}"
    ups, downs = events(node, "scale.up"), events(node, "scale.down")
    assert len(ups) >= 2 and len(downs) >= 2, f"expected the workers to go up and down: {len(ups)} up, {len(downs)} down"
    exits = events(node, "worker.exited")
    bad = [e for e in exits if e["cause"] not in ("exit code 0", "exit code 0 (drained: scaled down)") or e["inflight"] != "0"]
    assert not bad, bad
    assert not events(node, "request.retried") and not events(node, "worker.restarting")


def test_two_services_competing_for_the_cores_both_keep_serving(nodes: NodeFactory, tmp_path: Path) -> None:
    config = """
        name = "{name}"
        routes = ["/{name}"]
        min_workers = 0
        max_workers = 2
        slots = 2
        scale_down_delay = 1
        keep_warm = 5
    """
    a = make_service(tmp_path, "a", APP, config.format(name="a"))
    b = make_service(tmp_path, "b", APP, config.format(name="b"))
    node = nodes.start(a, b)
    duration = 8.0

    async def load() -> dict[str, list[int | str]]:
        results: dict[str, list[int | str]] = {"a": [], "b": []}
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
        async with httpx.AsyncClient(base_url=node.url, timeout=30, limits=limits) as client:
            end = asyncio.get_running_loop().time() + duration

            async def user(name: str) -> None:
                while asyncio.get_running_loop().time() < end:
                    try:
                        results[name].append((await client.get(f"/{name}?ms=200")).status_code)
                    except httpx.HTTPError as exc:
                        results[name].append(repr(exc))

            # 8 users each: a demand of ~8 per service, well over what one worker of 2 slots
            # holds, so both want their max (2) and the share (1 each on 2 cores) applies throughout.
            await asyncio.gather(*(user(n) for n in ("a", "b") for _ in range(8)))
        return results

    with Poller(node, "a") as poll_a, Poller(node, "b") as poll_b:
        results = asyncio.run(load())
    for name in ("a", "b"):
        failures = [r for r in results[name] if r != 200]
        assert results[name] and not failures, f"service {name}: {len(failures)} of {len(results[name])} failed"
    served = {name: len(results[name]) for name in results}
    assert max(served.values()) <= 4 * min(served.values()), f"unfair throughput: {served}"
    for name, poll in (("a", poll_a), ("b", poll_b)):
        assert any(len([w for w in workers if w["state"] == "ready"]) >= 1 for _, _, workers in poll.samples), name
    # The share holds: no fork/drain cycle on every tick while both stay loaded (both start at
    # one worker, go to zero when idle, and may fork to 2 before the first share applies).
    started = {name: len([e for e in events(node, "worker.started") if e["service"] == name]) for name in ("a", "b")}
    print(f"\ncompetition: requests served in {duration:.0f}s: {served}; workers started: {started}")
    assert all(n <= 5 for n in started.values()), f"workers churned under competition: {started}"


def test_anycore_scale_changes_limits_live_without_restarting_workers(nodes: NodeFactory, tmp_path: Path) -> None:
    svc = make_service(tmp_path, "limits", APP, """
        name = "limits"
        min_workers = 1
        max_workers = 2
        scale_down_delay = 1
        keep_warm = 1
    """)
    node = nodes.start(svc)
    wait_for(lambda: len(node.ready_workers("limits")) == 1, 10, what="one ready worker")
    before = live(node, "limits")
    pid = before["workers"][0]["pid"]
    result = node.cli("scale", "limits", "--min", "2", "--max", "3")
    assert result.returncode == 0, result.stderr
    assert "between 2 and 3" in result.stdout and "no restart" in result.stdout, result.stdout
    wait_for(lambda: len(node.ready_workers("limits")) == 2, 10, what="a second worker for min_workers = 2")
    after = live(node, "limits")
    assert after["scaler"]["min"] == 2 and after["scaler"]["max"] == 3, after["scaler"]
    assert pid in [w["pid"] for w in after["workers"]] and alive(pid), "the existing worker was restarted"
    assert after["release"] == before["release"] and after["zygote_pid"] == before["zygote_pid"]
    assert events(node, "scale.limits") and not events(node, "worker.exited")

    bad = node.cli("scale", "limits", "--min", "5", "--max", "2")
    assert bad.returncode != 0 and "invalid limits min=5 max=2" in bad.stderr, (bad.returncode, bad.stdout, bad.stderr)
    scaler = live(node, "limits")["scaler"]
    assert (scaler["min"], scaler["max"]) == (2, 3), scaler


def test_ps_shows_desired_against_actual_workers_and_the_scalers_last_decision(
        nodes: NodeFactory, tmp_path: Path) -> None:
    svc = make_service(tmp_path, "shown", APP, """
        name = "shown"
        min_workers = 1
        max_workers = 2
        slots = 2
        scale_down_delay = 30
    """)
    node = nodes.start(svc)
    # 12 requests of 1.5 s in flight on 1 worker x 2 slots: the scaler wants both workers.
    thread = threading.Thread(target=lambda: asyncio.run(_slow_requests(node.url, 12, 1500)))
    thread.start()
    try:
        scaler = wait_for(lambda: (s := live(node, "shown")["scaler"]).get("demand", 0) > 0 and s, 10,
                          what="the scaler to see demand")
        for key in ("desired", "actual", "min", "max", "reason", "demand", "stable_need", "panic_need", "panic"):
            assert key in scaler, (key, scaler)
        assert scaler["desired"] == 2 and scaler["min"] == 1 and scaler["max"] == 2, scaler
        wait_for(lambda: live(node, "shown")["scaler"]["actual"] == 2, 10, what="actual to reach desired")
        text = node.cli("ps")
    finally:
        thread.join(30)
    assert text.returncode == 0, text.stderr
    # The scaler column: actual→desired [min..max], then the last decision and its inputs (the
    # table may wrap the cell, so only its start is matched whole).
    assert re.search(r"┃ scaler\s", text.stdout)
    assert re.search(r"2→2 \[1\.\.2\] (demand above capacity|panic mode)", text.stdout), text.stdout


CPU_APP = """
import time


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    end = time.process_time() + 0.05  # 50 ms of CPU, however long the core takes to give it
    spins = 0
    while time.process_time() < end:
        spins += 1
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(spins).encode()})
"""


def test_requests_that_compute_get_a_second_worker_though_one_workers_slots_hold_them(
        nodes: NodeFactory, tmp_path: Path) -> None:
    # 3 clients of a CPU-bound handler: by slots alone (3 < 32 x 0.3) one worker holds them
    # all on one core; its busy core makes the scaler ask for more (at most one per request).
    svc = make_service(tmp_path, "cpu", CPU_APP, """
        name = "cpu"
        min_workers = 1
        max_workers = 2
        slots = 32
        target_utilization = 0.3
    """)
    node = nodes.start(svc)
    stop = threading.Event()
    statuses: list[int] = []

    def client() -> None:
        with httpx.Client(base_url=node.url, timeout=30) as http:
            while not stop.is_set():
                statuses.append(http.get("/").status_code)

    threads = [threading.Thread(target=client) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: worker_count(node, "cpu") == 2, 30, what="a second worker for the busy core")
        wait_for(lambda: len({w["pid"] for w in live(node, "cpu")["workers"] if w["served"]}) == 2, 30,
                 what="both workers serving")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert statuses and all(s == 200 for s in statuses), statuses[:20]
    up = events(node, "scale.up")[0]
    assert up["desired"] == "2" and float(up["busy"]) >= 0.3 and float(up["demand"]) <= 3, up
    scaler = live(node, "cpu")["scaler"]
    assert "busy" in scaler, scaler
