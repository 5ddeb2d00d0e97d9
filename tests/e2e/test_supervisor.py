"""The supervisor's contract with real workers (issue 2, "Supervisor"): a worker killed with
``kill -9`` loses no safe request, an unsafe one gets a 502 that says what happened, a
poison request is quarantined, a hung loop is dumped and replaced, a broken release fails
its start without a restart loop, recycling starts the replacement first, and restarts
and crashlooping show in ``ps``."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningNode, make_service, wait_for
from tests.e2e.planes import gateway  # noqa: F401 (a fixture)

APP = """
import asyncio, os, signal, time


async def respond(send, status=200, body=b"ok"):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": body})


async def hold_until_retried(send):
    # First attempt: leave a mark and hold the slot until the worker is killed.
    # A retry finds the mark and answers.
    mark = os.path.join(os.environ["MARKS"], "held")
    if not os.path.exists(mark):
        with open(mark, "w") as f:
            f.write(str(os.getpid()))
        await asyncio.sleep(60)
    await respond(send, body=b"retried after worker " + open(mark).read().encode())


async def handler_that_blocks_its_loop(send):
    time.sleep(60)
    await respond(send)


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/hold":
        await hold_until_retried(send)
    elif path == "/poison":
        os.kill(os.getpid(), signal.SIGKILL)
    elif path == "/crash":
        os._exit(7)
    elif path == "/block":
        await handler_that_blocks_its_loop(send)
    elif path == "/pause":
        await asyncio.sleep(0.5)
        await respond(send)
    else:
        await respond(send)
"""


def service(tmp_path: Path, name: str, config: str, code: str = APP) -> Path:
    marks = tmp_path / f"{name}-marks"
    marks.mkdir()
    return make_service(tmp_path, name, code, f'{config}\nenv = {{ MARKS = "{marks}" }}\n')


def events(node: RunningNode, event: str) -> list[str]:
    return [line for line in node.output.splitlines() if f"event={event} " in line + " "]


def live(node: RunningNode, name: str) -> dict[str, Any]:
    return node.service(name)["live"]  # type: ignore[no-any-return]


def ready_pids(node: RunningNode, name: str) -> set[int]:
    return {w["pid"] for w in node.ready_workers(name)}


def wait_ready_pids(node: RunningNode, name: str, count: int, without: int = 0, timeout: float = 15.0) -> set[int]:
    """Wait until ``count`` workers are ready, none of them ``without``; their pids."""
    def check() -> set[int] | None:
        pids = ready_pids(node, name)
        return pids if len(pids) == count and without not in pids else None
    return wait_for(check, timeout, what=f"{count} ready workers of {name}" + (f" without pid {without}" if without else ""))


def get(node: RunningNode, path: str, method: str = "GET") -> httpx.Response:
    return httpx.request(method, node.url + path, timeout=30)


def kill_9_with_queue(node: RunningNode, name: str, method: str) -> tuple[int, httpx.Response, list[httpx.Response]]:
    """One ``method /hold`` in flight on the only worker (one slot), 20 GETs queued behind
    it, then ``kill -9`` of that worker. Returns the killed pid and every response."""
    [worker] = node.ready_workers(name)
    with ThreadPoolExecutor(max_workers=21) as pool:
        held: Future[httpx.Response] = pool.submit(get, node, "/hold", method)
        wait_for(lambda: node.service(name)["inflight"] == 1, what="the held request in flight")
        queued = [pool.submit(get, node, "/fast") for _ in range(20)]
        wait_for(lambda: node.service(name)["queued"] == 20, what="20 requests queued")
        os.kill(worker["pid"], signal.SIGKILL)
        return worker["pid"], held.result(timeout=30), [f.result(timeout=30) for f in queued]


def test_kill_9_with_get_in_flight_and_20_queued_all_21_get_200(nodes, tmp_path, gateway):
    node = nodes.start(service(tmp_path, "getkill", "workers = 1\nslots = 1\n"), **gateway)
    killed, held, queued = kill_9_with_queue(node, "getkill", "GET")
    assert held.status_code == 200, held.text
    assert held.text == f"retried after worker {killed}"  # the first attempt ran on the killed worker
    assert int(held.headers["x-pid"]) != killed
    assert [r.status_code for r in queued] == [200] * 20
    assert all(int(r.headers["x-pid"]) != killed for r in queued)
    node.wait_output(r"event=request\.retried ")  # native: the gateway's verdict reaches the node's log a moment later
    [retried] = events(node, "request.retried")
    assert "method=GET" in retried and "path=/hold" in retried


def test_kill_9_with_post_in_flight_gets_502_json_and_20_queued_get_200(nodes, tmp_path, gateway):
    node = nodes.start(service(tmp_path, "postkill", "workers = 1\nslots = 1\n"), **gateway)
    killed, held, queued = kill_9_with_queue(node, "postkill", "POST")
    assert held.status_code == 502
    assert held.headers["content-type"] == "application/json"
    body = held.json()
    assert body["status"] == 502
    assert body["error"] == "worker died"
    assert "POST" in body["detail"] and "may or may not have taken effect" in body["detail"]
    assert [r.status_code for r in queued] == [200] * 20
    assert all(int(r.headers["x-pid"]) != killed for r in queued)
    assert not events(node, "request.retried")  # a POST is never retried


def test_kill_9_replacement_worker_serves_soon_after(nodes, tmp_path):
    node = nodes.start(service(tmp_path, "replace", "workers = 2\nslots = 1\n"))
    before = wait_ready_pids(node, "replace", 2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = wait_ready_pids(node, "replace", 2, without=victim, timeout=10)
    [new] = after - before
    assert after - {new} == before - {victim}  # the other worker was left alone
    # Two concurrent requests on 2 workers with 1 slot each: one of them runs on the new worker.
    with ThreadPoolExecutor(max_workers=2) as pool:
        responses = list(pool.map(lambda _: get(node, "/pause"), range(2)))
    assert [r.status_code for r in responses] == [200, 200]
    assert {int(r.headers["x-pid"]) for r in responses} == after
    node.wait_output(r"event=worker\.exited ")
    [exited] = events(node, "worker.exited")
    assert f"pid={victim}" in exited and 'cause="killed by SIGKILL"' in exited
    assert len(events(node, "worker.restarting")) == 1
    info = live(node, "replace")
    assert info["restarts"] == 1
    assert f"(pid {victim}): killed by SIGKILL" in info["last_exit"]


def test_request_that_crashes_its_worker_is_quarantined_after_2_crashes_while_other_traffic_succeeds(nodes, tmp_path, gateway):
    # One slot per worker: no innocent request shares a worker with the poison one.
    node = nodes.start(service(tmp_path, "poison", "workers = 2\nslots = 1\n"), **gateway)
    statuses: list[int] = []
    stop = threading.Event()

    def stream() -> None:
        with httpx.Client(base_url=node.url, timeout=30) as client:
            for _ in range(2000):
                if stop.is_set():
                    return
                statuses.append(client.get("/fast").status_code)

    with ThreadPoolExecutor(max_workers=2) as pool:
        streams = [pool.submit(stream) for _ in range(2)]
        try:
            wait_for(lambda: len(statuses) >= 20, what="other traffic flowing")
            poisoned = get(node, "/poison")
            after_poison = len(statuses)
            assert poisoned.status_code == 502
            assert poisoned.json()["error"] == "quarantined"
            assert "crashed two workers" in poisoned.json()["detail"]
            node.wait_output(r"event=request\.quarantined ")
            [quarantined] = events(node, "request.quarantined")
            assert "path=/poison" in quarantined and "crashed_workers=2" in quarantined
            wait_ready_pids(node, "poison", 2)
            restarts = live(node, "poison")["restarts"]
            assert restarts == 2
            # The same request again is refused at the door: no worker dies for it.
            for _ in range(3):
                again = get(node, "/poison")
                assert again.status_code == 502
                assert again.json()["error"] == "quarantined"
            wait_for(lambda: len(statuses) >= after_poison + 50, what="other traffic flowing after the quarantine")
        finally:
            stop.set()
            for s in streams:
                s.result(timeout=30)
    assert live(node, "poison")["restarts"] == restarts
    assert len(events(node, "worker.exited")) == 2
    assert len(statuses) >= 70
    assert set(statuses) == {200}, f"{len(statuses) - statuses.count(200)} of {len(statuses)} failed"


def test_handler_blocking_its_loop_is_detected_its_stack_logged_and_the_worker_replaced(nodes, tmp_path):
    node = nodes.start(service(tmp_path, "hang", "workers = 2\nslots = 4\nhang_timeout = 2\n"))
    before = ready_pids(node, "hang")
    with ThreadPoolExecutor(max_workers=21) as pool:
        # A POST is not retried, so it blocks exactly one worker once.
        blocked = pool.submit(get, node, "/block", "POST")
        wait_for(lambda: node.service("hang")["inflight"] == 1, what="the blocking request in flight")
        others = [pool.submit(get, node, "/fast") for _ in range(20)]
        hung = node.wait_output(r"event=worker\.hung [^\n]*", timeout=15).group(0)
        responses = [f.result(timeout=30) for f in others]
        blocked_response = blocked.result(timeout=30)
    assert [r.status_code for r in responses] == [200] * 20
    assert blocked_response.status_code == 502
    assert blocked_response.json()["error"] == "worker died"
    victim = int(re.search(r"pid=(\d+)", hung).group(1))  # type: ignore[union-attr]
    assert victim in before
    # faulthandler's dump names the handler that blocks the loop, tagged with its worker.
    node.wait_output(r"\[hang@\w+ worker \d+\] .*File \"[^\"]*app\.py\", line \d+ in handler_that_blocks_its_loop")
    logs = node.cli("logs", "hang", "-n", "500")
    assert logs.returncode == 0, logs.stderr
    assert "in handler_that_blocks_its_loop" in logs.stdout
    assert "event=worker.hung" in logs.stdout
    exited = node.wait_output(rf"event=worker\.exited [^\n]*pid={victim} [^\n]*").group(0)
    assert "killed by SIGKILL (hung: worker stuck (no tick) for" in exited
    after = wait_ready_pids(node, "hang", 2, without=victim, timeout=10)
    assert len(after - before) == 1
    assert get(node, "/fast").status_code == 200


def _start_fails(nodes, directory: Path) -> tuple[int, str]:
    node = nodes.start(directory, wait=False)
    wait_for(lambda: node.proc.poll() is not None, timeout=30, what="anycore up to exit")
    return node.proc.returncode, node.output  # type: ignore[return-value]


def test_import_error_prints_traceback_and_exits_non_zero_without_restart_loop(nodes, tmp_path):
    broken = make_service(tmp_path, "broken", "import nonexistent_module_xyz\n\napp = None\n", "workers = 2\n")
    code, output = _start_fails(nodes, broken)
    assert code != 0
    assert "Traceback (most recent call last)" in output
    assert "ModuleNotFoundError: No module named 'nonexistent_module_xyz'" in output
    assert 'app.py", line 1' in output
    assert output.count("event=release.failed") == 1
    # The code never imported, so no worker was ever forked, let alone restarted.
    for event in ("release.imported", "worker.started", "worker.restarting", "worker.exited"):
        assert f"event={event}" not in output, output
    assert "event=service.running" not in output


LIFESPAN_FAILS = """
async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.failed", "message": "cannot reach the database at db.invalid:5432"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"never"})
"""


def test_lifespan_startup_failure_fails_the_start_with_its_message_and_non_zero_exit(nodes, tmp_path):
    failing = make_service(tmp_path, "nodb", LIFESPAN_FAILS, "workers = 2\n")
    code, output = _start_fails(nodes, failing)
    assert code != 0
    assert re.search(r"anycore: release nodb@\w+ failed to start: .*cannot reach the database at db\.invalid:5432", output), output
    assert output.count("event=release.failed") == 1
    assert "event=release.imported" in output  # the code imported; its startup failed
    assert "event=worker.restarting" not in output
    assert "event=service.running" not in output
    assert output.count("event=worker.started") <= 2  # the two workers, never a third


# A worker that takes a while to start (lifespan startup): the old worker must keep serving
# meanwhile, and it must not leave before its replacement is ready.
SLOW_START = APP + """

_serve = app


async def app(scope, receive, send):
    if scope["type"] != "lifespan":
        return await _serve(scope, receive, send)
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await asyncio.sleep(0.3)
            await send({"type": "lifespan.startup.complete"})
        else:
            await send({"type": "lifespan.shutdown.complete"})
            return
"""


def test_max_requests_recycles_the_worker_replacement_first_with_no_failed_request(nodes, tmp_path):
    node = nodes.start(service(tmp_path, "recycle", "workers = 1\nslots = 1\nmax_requests = 5\n", SLOW_START))
    [first] = ready_pids(node, "recycle")
    pids: list[int] = []
    with httpx.Client(base_url=node.url, timeout=30) as client:
        for _ in range(3000):
            response = client.get("/fast")
            assert response.status_code == 200, response.text
            pids.append(int(response.headers["x-pid"]))
            if len(set(pids)) >= 3 and len(pids) >= 40:
                break
    distinct = list(dict.fromkeys(pids))
    assert len(distinct) >= 3 and distinct[0] == first, distinct
    # Each pid served a contiguous run: no going back to a retired worker.
    runs = [p for i, p in enumerate(pids) if i == 0 or pids[i - 1] != p]
    assert runs == distinct
    node.wait_output(rf"event=worker\.exited [^\n]*pid={first} ")
    lines = node.output.splitlines()

    def index(pattern: str) -> int:
        return next(i for i, line in enumerate(lines) if re.search(pattern, line))

    recycling = index(r"event=worker\.recycling ")
    old_id = re.search(r"worker=(\d+)", lines[recycling]).group(1)  # type: ignore[union-attr]
    new_started = index(rf"event=worker\.started [^\n]*pid={distinct[1]}\b")
    new_ready = index(rf"event=worker\.ready [^\n]*pid={distinct[1]}\b")
    old_exited = index(rf"event=worker\.exited [^\n]*worker={old_id} ")
    # The replacement was started, and ready, before the old worker left.
    assert recycling < new_started < new_ready < old_exited
    assert "recycled: served" in lines[old_exited] and "max_requests=5" in lines[old_exited]
    info = live(node, "recycle")
    assert info["restarts"] == 0  # recycling is not a crash
    assert info["last_exit"] == ""
    assert "event=worker.restarting" not in node.output


def _stamp(line: str) -> float:
    return datetime.strptime(re.search(r"ts=(\S+)Z", line).group(1), "%Y-%m-%dT%H:%M:%S.%f").timestamp()  # type: ignore[union-attr]


def _column(table: str, name: str) -> str:
    """The text of column ``name`` of the first table in ``anycore ps`` output, wrapped cells joined."""
    lines = table.splitlines()
    at = next(i for i, line in enumerate(lines) if "┃" in line and f" {name} " in line)
    index = [c.strip() for c in lines[at].split("┃")].index(name)
    rows = []
    for line in lines[at + 1:]:
        if line.startswith("└"):
            break
        if line.startswith("│"):
            rows.append(line.split("│")[index].strip())
    return " ".join(r for r in rows if r)


def test_repeated_crashes_show_restarts_last_exit_and_crashlooping_in_ps(nodes, tmp_path):
    node = nodes.start(service(tmp_path, "crashy", "workers = 1\nslots = 1\n"))
    for n in range(1, 7):
        response = get(node, "/crash", "POST")  # waits in the queue for the restarted worker
        assert response.status_code == 502
        assert response.json()["error"] == "worker died"
        crashed_at = time.monotonic()
        info = wait_for(lambda: (i := live(node, "crashy"))["last_exit"].count("exit code 7") and i,
                        what="the exit cause in ps")
        assert info["restarts"] == n
        assert re.fullmatch(r"worker \d+ \(pid \d+\): exit code 7", info["last_exit"]), info["last_exit"]
        assert info["crashlooping"] is (n > 5)  # intensity: more than 5 exits within the period
    table = node.cli("ps")
    assert table.returncode == 0, table.stderr
    assert re.fullmatch(r"crashlooping \(last exit: worker \d+ \(pid \d+\): exit code 7\)", _column(table.stdout, "health")), \
        table.stdout
    output = node.output
    lines = output.splitlines()
    restarting = [i for i, line in enumerate(lines) if "event=worker.restarting " in line]
    assert len(restarting) == 6
    assert len(events(node, "release.crashlooping")) == 1
    # Backoff: immediate, then doubling; no worker is started before its restart is due.
    delays = [float(re.search(r"delay_s=([\d.]+)", lines[i]).group(1)) for i in restarting]  # type: ignore[union-attr]
    assert delays == [0.0, 0.1, 0.2, 0.4, 0.8, 10.0]
    for i, delay in zip(restarting[:5], delays):
        started = next(line for line in lines[i:] if "event=worker.started " in line)
        assert _stamp(started) >= _stamp(lines[i]) + delay - 0.002, f"started before its {delay}s backoff:\n{output}"
    # Crashlooping: the next restart waits the capped delay (10 s); none has happened yet.
    if time.monotonic() - crashed_at < 9:
        later = [line for line in lines[restarting[5]:] if "event=worker.started " in line]
        assert not later, f"a worker started during the crashloop backoff:\n{output}"
