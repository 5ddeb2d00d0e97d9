"""Operator commands against a running node, over NATS only, and refused without the token."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import httpx

from tests.conftest import make_service, wait_for

PRINTING = """
import sys

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    print("handled", scope["path"], flush=True)
    print("to stderr", scope["path"], file=sys.stderr, flush=True)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_ps_shows_services_releases_and_workers(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "shop", PRINTING, "workers = 2\nslots = 3\n"))
    httpx.get(node.url + "/x")
    ps = node.ps_cli()  # this test is about the CLI: `anycore ps --json` itself
    assert ps["node"] == node.record["node_id"]
    (service,) = ps["services"]
    assert service["name"] == "shop" and service["state"] == "running"
    assert service["release"].startswith("shop@")
    workers = service["live"]["workers"]
    assert len(workers) == 2
    for worker in workers:
        assert worker["state"] == "ready" and worker["slots"] == 3 and worker["pid"] > 0
        assert worker["rss_mib"] > 0
        os.kill(worker["pid"], 0)  # a real process
    assert sum(w["served"] for w in workers) == 1
    assert service["live"]["restarts"] == 0
    table = node.cli("ps")
    assert table.returncode == 0 and "shop" in table.stdout and "ready" in table.stdout


def test_stop_answers_503_and_start_turns_it_back_on(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "shop", PRINTING, "workers = 1\n"))
    pid = node.ready_workers("shop")[0]["pid"]
    stopped = node.cli("stop", "shop")
    assert stopped.returncode == 0, stopped.stderr
    response = httpx.get(node.url + "/")
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert "anycore start shop" in response.json()["detail"]
    wait_for(lambda: not _alive(pid), what="the stopped worker to exit")
    assert node.service("shop")["state"] == "stopped"
    started = node.cli("start", "shop")
    assert started.returncode == 0, started.stderr
    assert httpx.get(node.url + "/").status_code == 200
    unknown = node.cli("stop", "nope")
    assert unknown.returncode != 0 and "no service named 'nope'" in unknown.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split()[2] != "Z"


def test_logs_shows_worker_output_tagged_by_release_and_worker(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "shop", PRINTING, "workers = 1\n"))
    release = node.service("shop")["release"]
    httpx.get(node.url + "/first")
    wait_for(lambda: "handled /first" in node.cli("logs", "shop").stdout, what="the worker's line in `anycore logs`")
    lines = node.cli("logs", "shop").stdout.splitlines()
    tagged = [line for line in lines if "handled /first" in line]
    assert tagged and tagged[0].startswith("ts=") and tagged[0].split(" ", 1)[1].startswith(f"[{release} worker ")
    assert any("to stderr /first" in line for line in lines)

    follower = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "logs", "-f", "-n", "0", "shop"],
                                env=node.env, stdout=subprocess.PIPE, text=True)
    try:
        seen: list[str] = []

        def followed() -> bool:
            httpx.get(node.url + "/followed")
            line = follower.stdout.readline()  # type: ignore[union-attr]
            seen.append(line)
            return "handled /followed" in line

        wait_for(followed, timeout=20, what="`anycore logs -f` to print a new line")
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(10)


def test_commands_are_refused_without_the_token(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "shop", PRINTING))
    wrong = node.cli("ps", env={**node.env, "ANYCORE_TOKEN": "not-the-token"})
    assert wrong.returncode == 2
    assert "refused the credentials" in wrong.stderr
    # A home that knows the node but has no token file: still refused, for every command.
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(node.home / "node.json", bare / "node.json")
    env = {**node.env, "ANYCORE_HOME": str(bare)}
    for args in (("ps",), ("stop", "shop"), ("start", "shop"), ("logs",), ("down",)):
        result = node.cli(*args, env=env)
        assert result.returncode == 2, args
        assert "authorization" in result.stderr, result.stderr
    assert httpx.get(node.url + "/").status_code == 200  # nothing was done


def test_down_drains_and_stops_everything(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "shop", PRINTING, "workers = 2\n"))
    pids = [w["pid"] for w in node.ready_workers("shop")]
    nats_pids = node.nats_pids()
    assert nats_pids
    result = node.cli("down")
    assert result.returncode == 0, result.stderr
    assert node.proc.wait(30) == 0
    for pid in pids + nats_pids:
        wait_for(lambda: not _alive(pid), what=f"process {pid} to exit")
    assert not (node.home / "node.json").exists()
    assert "event=node.stopped" in node.output


def test_sigterm_stops_the_node_like_down(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "shop", PRINTING, "workers = 1\n"))
    pids = [w["pid"] for w in node.ready_workers("shop")] + node.nats_pids()
    node.proc.send_signal(signal.SIGTERM)
    assert node.proc.wait(30) == 0
    for pid in pids:
        wait_for(lambda: not _alive(pid), what=f"process {pid} to exit")
