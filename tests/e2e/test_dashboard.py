"""The dashboard in a real headless browser (tests/browser.py): first the page alone on a
made-up cluster node with 5 minutes of history (the stand-in listener of tests/browser.py
serves the real routes), then a real node with a service and a deploy."""

from __future__ import annotations

import asyncio
import io
import random
import time
from typing import Any

from anycore.admin import dashboard
from anycore.log import NodeLog
from anycore.stats import RequestStats
from tests.browser import Browser, RoutesServer


def worker(wid: int, release: str, state: str, inflight: int, uptime: float) -> dict[str, Any]:
    return {"id": wid, "pid": 4000 + wid, "release": release, "state": state, "inflight": inflight, "slots": 4,
            "served": 1200 * wid, "websockets": 0, "uptime": uptime, "rss_mib": 41.5 + wid, "env": "node",
            "cpu": 0.07 * wid}


class MadeUpNode:
    """A node view whose snapshot is a shop deploy half way: shop@b live, shop@a draining."""

    def __init__(self) -> None:
        self.node_id = "n-7f3a"
        self.log = NodeLog(io.StringIO())
        self.stats = RequestStats()

    def snapshot(self) -> dict[str, Any]:
        live = {"release": "shop@b2c4e6f8", "state": "live", "crashlooping": False, "target": 3, "restarts": 1,
                "last_exit": "worker 5 (pid 4005): killed by signal 9 (SIGKILL)", "failure": None,
                "scaler": {"actual": 3, "desired": 3, "min": 1, "max": 6, "reason": "", "demand": 5},
                "workers": [worker(6, "shop@b2c4e6f8", "ready", 2, 95), worker(7, "shop@b2c4e6f8", "ready", 4, 94),
                            worker(8, "shop@b2c4e6f8", "starting", 0, 0.4)]}
        old = {"release": "shop@a1b3c5d7", "state": "draining", "crashlooping": False, "target": 0, "restarts": 0,
               "last_exit": None, "failure": None, "scaler": None,
               "workers": [worker(3, "shop@a1b3c5d7", "draining", 1, 3700)]}
        return {"node": self.node_id, "gateway": "http://127.0.0.1:8000", "pid": 1, "connections": 23, "gateway_errors": 0,
                "services": [{"name": "shop", "state": "running", "release": "shop@b2c4e6f8", "draining": [old], "failed": [],
                              "rolled_back": None, "routes": ["/"], "slots": 4, "queued": 3, "inflight": 7, "served": 48211,
                              "rejected": 2, "quarantined": 0, "live": live, "websockets": 0},
                             {"name": "auth", "state": "stopped", "release": "", "draining": [], "failed": [], "rolled_back": None,
                              "routes": ["/auth"], "slots": 8, "queued": 0, "inflight": 0, "served": 10, "rejected": 0,
                              "quarantined": 0, "live": None, "websockets": 0}],
                "cluster": {"peers": {"n-91c2": {"gateway": "http://10.0.0.2:8000", "seen_s_ago": 0.4, "free": {"shop": 5},
                                                 "services": {"shop": {"release": "shop@b2c4e6f8", "workers": 2, "slots": 8,
                                                                       "free": 5, "inflight": 3, "queued": 0}}}},
                            "spilled": 12, "accepted": 3, "remote_inflight": 1, "running_for_peers": 0}}


def made_up_history(board: dashboard.Dashboard, loop: asyncio.AbstractEventLoop) -> None:
    """Five minutes: shop@a alone, a deploy at -100 s, then shop@b (slower p99), a crash."""
    rng = random.Random(7)
    stats, history = board.view.stats, board.history
    now, mono = time.time(), loop.time()
    deploy_at = now - 100
    for i in range(300, 0, -1):
        t = now - i
        for release, share in (("shop@a1b3c5d7", 1.0 if t < deploy_at else max(0.0, 1 - (t - deploy_at) / 20)),
                               ("shop@b2c4e6f8", 0.0 if t < deploy_at else min(1.0, (t - deploy_at) / 20))):
            for _ in range(int(rng.uniform(40, 55) * share)):
                slow = 0.004 if release.endswith("f8") else 0.002
                stats.record("shop", release, 200 if rng.random() > 0.01 else 502, rng.expovariate(1 / slow), 0.0)
        if 120 < i < 126:
            for _ in range(30):
                stats.record("shop", "", 503, 0.0002, None)
        history.sample(stats.snapshot(), t, mono - i, {"shop": (max(0, int(rng.gauss(0, 2))) if 118 < i < 130 else 0,
                                                                 min(12, int(rng.uniform(2, 6) + (4 if 90 < i < 100 else 0)))),
                                                        "auth": (0, 0)})
    history.record(now - 200, "scale.up", "shop", {"release": "shop@a1b3c5d7", "workers": 2, "desired": 3, "reason": "burst", "demand": 9})
    phases = ["fetch", "import", "warm", "migrate", "shift", "drain"]
    for k, phase in enumerate(phases):
        history.record(deploy_at - 3 + k * 0.6, "deploy.phase", "shop",
                       {"deploy": "d-1", "release": "shop@b2c4e6f8", "phase": phase, "elapsed_s": k * 0.6})
        if phase == "shift":
            history.record(deploy_at, "service.shifted", "shop", {"release": "shop@b2c4e6f8", "previous": "shop@a1b3c5d7", "workers": 3})
    history.record(now - 40, "worker.exited", "shop", {"release": "shop@b2c4e6f8", "worker": 5, "pid": 4005,
                                                      "cause": "killed by signal 9 (SIGKILL)", "inflight": 1, "served": 300})
    history.record(now - 39.9, "worker.restarting", "shop", {"release": "shop@b2c4e6f8", "replaces": 5, "delay_s": 0.0})
    history.record(now - 30, "cluster.peer_joined", "", {"peer": "n-91c2", "gateway": "http://10.0.0.2:8000"})
    history.record(now - 12, "release.rollback", "auth", {"release": "auth@9e8d", "to": "auth@77aa",
                                                          "reason": "crashlooping after shift", "seconds_after_shift": 4.2})
    history.record(now - 5, "service.stopped", "auth", {})
    for k, phase in enumerate(["fetch", "import", "failed"]):
        history.record(now - 4 + k * 0.3, "deploy.phase", "auth", {"deploy": "d-2", "release": "auth@5c5c", "phase": phase,
                                                                 "error": "ModuleNotFoundError: No module named 'jwt'" if phase == "failed" else None})


async def traffic(stats: RequestStats) -> None:
    """shop@b keeps answering ~50 req/s while the page is open."""
    rng = random.Random(3)
    while True:
        for _ in range(5):
            stats.record("shop", "shop@b2c4e6f8", 200, rng.expovariate(1 / 0.004), 0.0)
        await asyncio.sleep(0.1)


def test_dashboard_page_draws_a_deploy_in_a_cluster() -> None:
    async def go() -> None:
        board = dashboard.Dashboard(MadeUpNode())
        made_up_history(board, asyncio.get_running_loop())
        load = asyncio.create_task(traffic(board.view.stats))  # type: ignore[arg-type]
        try:
            async with RoutesServer(board.table()) as server, Browser() as browser:
                page = await browser.open(server.url + "/")
                await page.wait_for("!!document.querySelector('[data-service=shop] table.workers')", what="the shop card")
                text = await page.evaluate("document.body.innerText")
                for expected in ("shop@b2c4e6f8", "shop@a1b3c5d7", "draining", "n-91c2", "3/8", "traffic shifted to",
                                 "killed by signal 9", "auth", "stopped", "rolled back", "No module named 'jwt'",
                                 "49%"):  # worker 7's CPU (0.49 of a core)
                    assert expected in text, expected
                await page.wait_for("document.querySelectorAll('.step.done').length >= 5", what="the deploy's phases")
                await page.wait_for("Number(document.body.dataset.frames) >= 3", 20, "two updates after the first frame")
                assert await page.evaluate("document.querySelectorAll('[data-service=auth] .step.fail').length") == 1
                await page.screenshot("dashboard-made-up.png")
                page.assert_no_errors()
        finally:
            load.cancel()
            board.close()
    asyncio.run(go())


SHOP = '''
VERSION = "@VERSION@"

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": VERSION.encode()})
'''
SHOP_CONFIG = 'name = "shop"\nworkers = 2\nslots = 4\ndrain_timeout = 5\n'


def test_dashboard_and_top_show_a_real_node_and_its_deploy(nodes, tmp_path) -> None:
    """A real node (its admin listener on a free port), the page in chromium: the service
    and its workers appear, then a deploy's phases and shift, all within seconds and with
    no JavaScript error; ``anycore top --once`` names the same service and workers."""
    import httpx

    from tests.conftest import make_service, wait_for

    directory = make_service(tmp_path, "shop", SHOP.replace("@VERSION@", "v1"), SHOP_CONFIG)
    node = nodes.start(directory, args=("--admin", "127.0.0.1:0"))
    admin = node.record["admin"]
    first = node.service("shop")["release"]
    wait_for(lambda: len(node.ready_workers("shop")) == 2, 20, what="two ready workers")
    with httpx.Client(base_url=node.url, timeout=10) as client:
        for _ in range(40):
            assert client.get("/").status_code == 200

    async def go() -> None:
        async with Browser() as browser:
            page = await browser.open(admin + "/")
            card = "document.querySelector('[data-service=shop]')"
            await page.wait_for(f"{card} && {card}.querySelectorAll('table.workers tbody tr').length === 2 && "
                                f"{card}.innerText.includes({first!r})", 15, "the shop service and its two workers")
            await page.wait_for(f"{card}.querySelector('.chart b').textContent !== ''", 20, "the plots' figures")
            await page.wait_for("Number(document.body.dataset.frames) >= 3", 20, "updates every second")
            (directory / "app.py").write_text(SHOP.replace("@VERSION@", "v2"))
            done = asyncio.Event()

            async def load() -> list[int]:  # requests during the deploy, for the plots (bounded)
                statuses = []
                async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
                    while not done.is_set() and len(statuses) < 1000:
                        statuses.append((await client.get("/")).status_code)
                        await asyncio.sleep(0.05)
                return statuses

            traffic = asyncio.create_task(load())
            deploy = await asyncio.to_thread(node.cli, "deploy", str(directory))
            assert deploy.returncode == 0, deploy.stderr
            second = node.service("shop")["release"]
            assert second != first
            shifted = f"[...document.querySelectorAll('#events li[data-event=\"service.shifted\"]')].some(li => li.innerText.includes({second!r}))"
            await page.wait_for(shifted, 20, "the shift to the new release in the timeline")
            await page.wait_for("[...document.querySelectorAll('#events li[data-event=\"deploy.phase\"]')]"
                                ".some(li => li.innerText.includes('live ('))", 20, "the deploy's done phase")
            await page.wait_for(f"{card}.querySelector('.release.live') && {card}.querySelector('.release.live').innerText.includes({second!r})",
                                20, "the new release live in the service's card")
            await page.wait_for(f"{card}.querySelectorAll('.step.done').length >= 5", 20, "the deploy's phase steps")
            async with httpx.AsyncClient(base_url=node.url, timeout=10) as client:
                for _ in range(20):
                    assert (await client.get("/")).text == "v2"
            await page.wait_for(f"{card}.querySelector('.legend').innerText.includes({second!r})", 20,
                                "the new release's requests in the plots")
            done.set()
            assert set(await traffic) == {200}
            await page.screenshot("dashboard-node.png")
            page.assert_no_errors()
    asyncio.run(go())

    result = node.cli("top", "--once")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    workers = node.ready_workers("shop")
    assert "shop" in out and node.service("shop")["release"] in out and "service.shifted" in out
    assert all(f"#{w['id']}" in out for w in workers), out
    other = node.cli("top", "--admin", admin, "--iterations", "2", "--interval", "0.2")
    assert other.returncode == 0 and other.stdout.count("anycore top") == 2, other.stderr
