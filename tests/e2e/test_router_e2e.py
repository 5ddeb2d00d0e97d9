"""The router's contract with real workers: slot-aware placement, fast 503, 504 in the queue."""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_service, wait_for
from tests.e2e.planes import nodes  # noqa: F401 (every test on both data planes but the heavy one; the access log's 503 lines too)

# Heavy: the Python gateway's run would prove the same Python code again (tests/e2e/planes.py).
NATIVE_ONLY = pytest.mark.planes("native")

SLOW_FAST = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/slow":
        if os.environ.get("STARTED"):
            open(os.environ["STARTED"], "w").close()
        await asyncio.sleep(float(os.environ.get("SLOW", "2")))
    elif scope["path"] == "/mark":
        open(os.environ["MARKER"], "w").write("reached")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": scope["path"].encode()})
"""


def test_no_fast_request_waits_behind_a_slow_one(nodes, tmp_path):
    service = make_service(tmp_path, "mixed", SLOW_FAST, "workers = 2\nslots = 1\n")
    node = nodes.start(service)

    async def scenario() -> tuple[float, str, list[tuple[float, str]], float]:
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            started = time.monotonic()
            slow = asyncio.ensure_future(client.get("/slow"))
            while node.service("mixed")["inflight"] < 1:
                await asyncio.sleep(0.01)
            fast: list[tuple[float, str]] = []
            for _ in range(100):
                t0 = time.monotonic()
                response = await client.get("/fast")
                assert response.status_code == 200
                fast.append((time.monotonic() - t0, response.headers["x-pid"]))
            fast_done = time.monotonic() - started
            slow_response = await slow
            return time.monotonic() - started, slow_response.headers["x-pid"], fast, fast_done

    slow_total, slow_pid, fast, fast_done = asyncio.run(scenario())
    assert slow_total >= 2.0
    # Every fast request ran on the other worker while the slow one held its only slot.
    assert all(pid != slow_pid for _, pid in fast)
    assert fast_done < slow_total
    assert max(latency for latency, _ in fast) < 1.0


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@NATIVE_ONLY
def test_overload_gets_fast_503_with_retry_after_and_memory_stays_bounded(nodes, tmp_path):
    config = "workers = 1\nslots = 2\nmax_queue = 4\ntimeout = 20\nenv = { SLOW = \"1.5\" }\n"
    node = nodes.start(make_service(tmp_path, "busy", SLOW_FAST, config), args=("--access-log",))
    node_pid = node.record["pid"]

    async def burst() -> list[tuple[int, float, str | None]]:
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
        async with httpx.AsyncClient(base_url=node.url, timeout=30, limits=limits) as client:
            # Warm: 18 keep-alive connections exist, and the router knows the mean service time.
            await asyncio.gather(*(client.get("/") for _ in range(18)))

            async def one() -> tuple[int, float, str | None]:
                t0 = time.monotonic()
                response = await client.get("/slow")
                return response.status_code, time.monotonic() - t0, response.headers.get("retry-after")

            # 3x capacity: 2 slots + 4 queue places = 6; send 18 at once.
            return await asyncio.gather(*(one() for _ in range(18)))

    rss_before = _rss_mib(node_pid)
    for _ in range(3):
        results = asyncio.run(burst())
        ok = [r for r in results if r[0] == 200]
        rejected = [r for r in results if r[0] == 503]
        assert len(ok) + len(rejected) == 18, results
        assert len(ok) >= 6  # capacity was used
        assert len(rejected) >= 6  # the excess was refused
        assert all(r[2] is not None and int(r[2]) >= 1 for r in rejected)
        info = node.service("busy")
        assert info["queued"] <= 4
    assert _rss_mib(node_pid) - rss_before < 40
    # The node's own measure of each 503 (access log: headers parsed -> response written).
    served_503 = [float(m.group(1)) for m in re.finditer(r"event=request .*status=503 ms=([\d.]+)", node.output)]
    assert len(served_503) >= 18
    assert max(served_503) < 100, f"503s took up to {max(served_503)} ms in the node"


def test_queued_request_past_its_deadline_gets_504_and_never_reaches_a_worker(nodes, tmp_path):
    marker = tmp_path / "reached"
    started = tmp_path / "started"
    config = (f"workers = 1\nslots = 1\ntimeout = 1\n"
              f"env = {{ SLOW = \"3\", MARKER = \"{marker}\", STARTED = \"{started}\" }}\n")
    node = nodes.start(make_service(tmp_path, "deadline", SLOW_FAST, config))

    async def scenario() -> tuple[httpx.Response, httpx.Response, float]:
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            slow = asyncio.ensure_future(client.get("/slow"))
            # Queue the second request right after the first took the slot (a file, not
            # `anycore ps`: a slow CLI under load would let the slot free up first).
            while not started.exists():
                await asyncio.sleep(0.005)
            t0 = time.monotonic()
            queued = await client.get("/mark")
            return await slow, queued, time.monotonic() - t0

    slow, queued, waited = asyncio.run(scenario())
    assert queued.status_code == 504
    assert queued.json()["error"] == "deadline passed while queued"
    assert waited < 2.5
    assert slow.status_code == 504  # the in-flight one also ran past its deadline and was cancelled
    assert not marker.exists()
    wait_for(lambda: node.service("deadline")["inflight"] == 0, what="the cancelled request to free its slot")
    assert httpx.get(node.url + "/", timeout=10).status_code == 200
    assert not os.path.exists(marker)
