"""Joining a cluster: heartbeats, the peer table, `ps --cluster`, the CLI with --nats, auth."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx

from tests.cluster.conftest import cluster_view, wait_peers
from tests.conftest import HELLO, make_service, wait_for


def _cli(*args: str, home, token: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANYCORE_HOME": str(home)}
    env.pop("ANYCORE_TOKEN", None)
    env.pop("ANYCORE_NODE", None)
    if token is not None:
        env["ANYCORE_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "anycore.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_nodes_join_over_nats_and_ps_cluster_shows_each_with_its_load(cluster, nats_server, tmp_path):
    app = make_service(tmp_path, "hello", HELLO, "workers = 2\nslots = 3\n")
    a = cluster.join(app)
    b = cluster.join(app)
    wait_peers([a, b], "hello")
    ids = {a.record["node_id"], b.record["node_id"]}
    # The CLI finds the nodes through their heartbeats: a home with no node.json, only --nats.
    empty = tmp_path / "cli-home"
    empty.mkdir()
    result = _cli("ps", "--cluster", "--json", "--nats", nats_server.url, home=empty, token=nats_server.token)
    assert result.returncode == 0, result.stderr
    nodes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
    assert set(nodes) == ids
    for node in (a, b):
        seen = nodes[node.record["node_id"]]
        assert seen["gateway"] == node.url
        load = seen["services"]["hello"]
        assert load["release"] == a.service("hello")["release"]
        assert load["workers"] == 2 and load["slots"] == 6 and load["free"] == 6 and load["queued"] == 0
    table = _cli("ps", "--cluster", "--nats", nats_server.url, home=empty, token=nats_server.token)
    assert table.returncode == 0 and all(i in table.stdout for i in ids) and "hello" in table.stdout
    # Any node command works with --nats alone (here: whichever node the CLI picked).
    ps = _cli("ps", "--json", "--nats", nats_server.url, home=empty, token=nats_server.token)
    assert ps.returncode == 0 and json.loads(ps.stdout)["node"] in ids
    # Both gateways serve, and name themselves in anycore-node.
    for node in (a, b):
        response = httpx.get(node.url + "/")
        assert response.status_code == 200 and response.headers["anycore-node"] == node.record["node_id"]
    # The dashboard's state (what the page and `anycore top` draw) carries each peer's load.
    state = httpx.get(a.record["admin"] + "/api/state").json()
    peer = state["snapshot"]["cluster"]["peers"][b.record["node_id"]]["services"]["hello"]
    assert peer["workers"] == 2 and peer["slots"] == 6 and peer["release"] == a.service("hello")["release"]
    top = _cli("top", "--once", "--admin", a.record["admin"], home=empty)
    assert top.returncode == 0 and b.record["node_id"] in top.stdout and "hello 0/6" in top.stdout, top.stdout + top.stderr
    # A node that leaves disappears from the peers' tables and from `ps --cluster`.
    b.stop()
    wait_for(lambda: set(cluster_view(a)) == {a.record["node_id"]}, 20, interval=0.2, what="b to leave the cluster view")
    wait_for(lambda: not a.ps()["cluster"]["peers"], 20, interval=0.2, what="b to leave a's peer table")


def test_a_node_joining_with_no_path_runs_the_services_live_in_kv(cluster, tmp_path):
    a = cluster.join(make_service(tmp_path, "hello", HELLO, "workers = 1\n"))
    b = cluster.join(services=1)  # no PATH: what is live in the cluster's KV
    assert b.service("hello")["release"] == a.service("hello")["release"]
    assert httpx.get(b.url + "/").text == "hello"


def test_without_the_token_nothing_is_accepted(cluster, nats_server, tmp_path):
    app = make_service(tmp_path, "hello", HELLO, "workers = 1\n")
    node = cluster.join(app)
    empty = tmp_path / "cli-home"
    empty.mkdir()
    for token in (None, "wrong-token"):
        deploy = _cli("deploy", str(app), "--nats", nats_server.url, home=empty, token=token)
        assert deploy.returncode == 2, deploy.stdout + deploy.stderr
        assert "refused the credentials (authorization violation)" in deploy.stderr
        ps = _cli("ps", "--cluster", "--nats", nats_server.url, home=empty, token=token)
        assert ps.returncode == 2 and "refused the credentials" in ps.stderr
    # A node cannot join without credentials either: the CLI says so before trying...
    up = _cli("up", "--nats", nats_server.url, "--listen", "127.0.0.1:0", home=tmp_path / "h1")
    assert up.returncode == 2 and "--nats needs --token or --creds" in up.stderr
    # ... and NATS refuses a wrong one.
    up = _cli("up", "--nats", nats_server.url, "--token", "wrong", "--listen", "127.0.0.1:0", home=tmp_path / "h2")
    assert up.returncode == 2 and "refused the credentials" in up.stderr
    # With the token, the same deploy goes through (the release was already live: a no-op).
    ok = _cli("deploy", str(app), "--nats", nats_server.url, home=empty, token=nats_server.token)
    assert ok.returncode == 0, ok.stderr
    assert node.service("hello")["state"] == "running"
