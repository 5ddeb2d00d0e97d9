"""Release environments across a cluster: every node builds (or reuses) the environment
during the prepare step; a node that cannot build it aborts the deploy everywhere; a node
joining later builds it when it catches up. Offline: each node has its own wheelhouse."""

from __future__ import annotations

import shutil

import httpx

from tests.cluster.conftest import wait_peers
from tests.conftest import make_service, wait_for
from tests.wheels import make_wheel

APP = '''
import greet, sys

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{greet.VERSION} {sys.prefix}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
'''


def release(root, version: str):
    directory = make_service(root / version, "shop", APP, "workers = 1\n")
    (directory / "requirements.txt").write_text(f"greet=={version}\n")
    return directory


def answer(node) -> tuple[str, str]:
    version, prefix = httpx.get(node.url + "/", timeout=30).text.split(" ", 1)
    return version, prefix


def test_each_node_builds_the_environment_in_prepare_and_a_node_lacking_a_package_aborts_everywhere(cluster, tmp_path):
    full, partial = tmp_path / "wheels-full", tmp_path / "wheels-partial"
    for version in ("1.0", "2.0"):
        make_wheel(full, "greet", version)
    partial.mkdir()
    shutil.copy(next(full.glob("greet-1.0-*.whl")), partial)
    offline = ("--no-index", "--find-links")
    a = cluster.join(release(tmp_path, "1.0"), args=(*offline, str(full)), timeout=120)
    b = cluster.join(args=(*offline, str(partial)), services=0)
    wait_peers([a, b])
    # b caught up with the live release and built its environment itself, under its own home.
    wait_for(lambda: b.workers("shop") if "shop" in [s["name"] for s in b.ps()["services"]] else None, 60,
             what="b running shop")
    version, prefix = answer(b)
    assert version == "1.0" and prefix.startswith(str(b.home / "envs")), prefix
    assert answer(a)[1].startswith(str(a.home / "envs"))
    assert "the set recorded by the cluster" in b.output  # b installed exactly what a resolved

    # b's index lacks greet 2.0: its prepare fails, so no node shifts; the CLI names b.
    deploy = a.cli("deploy", str(release(tmp_path, "2.0")), timeout=180)
    assert deploy.returncode == 1, deploy.stdout + deploy.stderr
    assert f"node {b.record['node_id']}" in deploy.stderr and "greet" in deploy.stderr, deploy.stderr
    assert answer(a)[0] == "1.0" and answer(b)[0] == "1.0"

    # A deploy both can build: b builds it during prepare, and both shift.
    make_wheel(partial, "greet", "3.0")
    make_wheel(full, "greet", "3.0")
    deploy = a.cli("deploy", str(release(tmp_path, "3.0")), timeout=180)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "2 nodes shifted" in deploy.stdout, deploy.stdout
    assert answer(a)[0] == "3.0" and answer(b)[0] == "3.0"
    new = deploy.stdout.split("deploying ", 1)[1].split()[0]
    built = [line for line in b.output.splitlines() if "event=release.env" in line and f"release={new}" in line]
    assert built and "cache_hit=False" in built[0], b.output[-2000:]  # b built it itself, in its prepare
    assert answer(b)[1].startswith(str(b.home / "envs")) and answer(b)[1] != prefix
