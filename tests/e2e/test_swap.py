"""Replacing code while serving: 10 deploys under continuous keep-alive load, nothing dropped."""

from __future__ import annotations

import datetime
import random
import re
import threading
import time

import httpx

from tests.conftest import make_service

VERSIONED = """
import asyncio, random

VERSION = "{version}"

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({{"type": "lifespan.startup.complete"}})
            else:
                await send({{"type": "lifespan.shutdown.complete"}})
                return
    if scope["path"] == "/slow":
        await asyncio.sleep(1 + 2 * random.random())
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""

CONFIG = 'name = "swap"\nworkers = 2\nslots = 16\ndrain_timeout = 10\n'


def test_swap_under_load_loses_nothing(nodes, tmp_path):
    swap_under_load(nodes, tmp_path, 10)


def swap_under_load(nodes, tmp_path, swaps: int) -> None:
    """``swaps`` deploys, alternating two releases, under keep-alive load (the Python
    gateway's smoke subset runs fewer)."""
    dirs = [make_service(tmp_path / v, "svc", VERSIONED.format(version=v), CONFIG) for v in ("a", "b")]
    node = nodes.start(dirs[0])
    stop = threading.Event()
    records: list[tuple[float, float, str, int, str, str]] = []  # start, end, path, status, release, body
    errors: list[str] = []
    lock = threading.Lock()

    def load(path: str, pause: float) -> None:
        with httpx.Client(base_url=node.url, timeout=30) as client:  # one keep-alive connection
            while not stop.is_set():
                t0 = time.time()
                try:
                    response = client.get(path)
                except httpx.HTTPError as exc:
                    with lock:
                        errors.append(f"{path}: {exc!r}")
                    continue
                with lock:
                    records.append((t0, time.time(), path, response.status_code,
                                    response.headers.get("anycore-release", ""), response.text))
                if pause:
                    time.sleep(pause * random.random())

    threads = [threading.Thread(target=load, args=("/fast", 0.01)) for _ in range(4)]
    threads += [threading.Thread(target=load, args=("/slow", 0.0)) for _ in range(4)]
    for thread in threads:
        thread.start()
    deploys: list[tuple[float, float, str]] = []  # command start, command return, release
    try:
        time.sleep(1.0)  # load is flowing before the first swap (not a wait for a state)
        for i in range(swaps):
            t0 = time.time()
            result = node.cli("deploy", str(dirs[(i + 1) % 2]))
            assert result.returncode == 0, result.stdout + result.stderr
            release = result.stdout.split("deploying ", 1)[1].split()[0]
            deploys.append((t0, time.time(), release))
        time.sleep(0.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)

    assert not errors, errors[:5]
    bad = [r for r in records if r[3] != 200]
    assert not bad, bad[:5]
    duration = records[-1][1] - records[0][0]
    assert len(records) / duration >= 100, f"only {len(records) / duration:.0f} req/s"
    releases = {r[2] for r in deploys}
    assert len(releases) == 2

    # The node logs the instant of each shift; a request the client started after a shift
    # (so also every one started after the deploy command returned) ran on that release.
    shifts = [(datetime.datetime.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=datetime.timezone.utc).timestamp(),
               m.group(2)) for m in re.finditer(r"ts=(\S+) event=service.shifted service=swap release=(\S+)", node.output)][1:]
    assert [release for _, release in shifts] == [release for _, _, release in deploys]
    for i, ((shifted, release), (_, returned, _)) in enumerate(zip(shifts, deploys)):
        assert shifted <= returned
        next_shift = shifts[i + 1][0] if i + 1 < len(shifts) else float("inf")
        # started after this shift and finished before the next one could have happened
        after = [r for r in records if shifted + 0.002 < r[0] and r[1] < next_shift]
        assert after, f"no request started between shift {i} and the next"
        assert all(r[4] == release for r in after), [r for r in after if r[4] != release][:3]

    # Long requests that started before a swap finished on the old code, after the shift.
    versions = {deploys[0][2]: "b", deploys[1][2]: "a"}
    spanning = 0
    for i, (shifted, release) in enumerate(shifts):
        previous = shifts[i - 1][1] if i else None
        for r in records:
            if r[2] == "/slow" and r[0] < shifted - 0.5 and r[1] > shifted:
                spanning += 1
                assert r[4] != release, r  # it was not moved to the new release
                if previous is not None and r[0] > shifts[i - 1][0] + 0.5:
                    assert r[4] == previous, r
                assert r[5] == versions.get(r[4], r[5]), r  # the old code answered
    assert spanning > 0, "no long request spanned a swap; the test proved nothing about draining"
