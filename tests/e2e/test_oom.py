"""A worker killed by the kernel's OOM killer is reported as such (issue 12, item 7): the
node runs inside a child memory cgroup with a limit (made by the test, as root; skipped
where the sandbox does not allow it) and a worker allocates past it."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time

import httpx
import pytest

from anycore.supervisor.oom import resolve
from tests.conftest import RunningNode, make_service, wait_for

HUNGRY = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/eat":
        hoard = []
        for _ in range(256):  # up to 4 GiB, 16 MiB at a time, each page touched
            hoard.append(bytearray(16 << 20))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""

LIMIT = 400 << 20


@pytest.fixture
def memory_cgroup():
    """A child of this process's memory cgroup, limited to LIMIT bytes (v1 or v2)."""
    files = resolve("self")
    if os.geteuid() != 0 or not files:
        pytest.skip("needs root and a memory cgroup this process can see")
    parent = files[0].parent
    child = parent / f"anycore-oom-{secrets.token_hex(3)}"
    try:
        child.mkdir()
        limit = child / ("memory.max" if files[0].name == "memory.events" else "memory.limit_in_bytes")
        limit.write_text(str(LIMIT))
    except OSError as exc:
        pytest.skip(f"cannot create a limited memory cgroup here: {exc}")
    yield child
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            child.rmdir()
            return
        except OSError:
            time.sleep(0.1)


def test_a_worker_past_its_cgroup_limit_is_reported_as_an_oom_kill(memory_cgroup, tmp_path, nodes):
    app = make_service(tmp_path, "hungry", HUNGRY, "workers = 1\n")
    home = tmp_path / "home"
    env = {**os.environ, "ANYCORE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("ANYCORE_TOKEN", None)
    out_path = tmp_path / "node.out"
    procs = str(memory_cgroup / "cgroup.procs")

    def enter_cgroup() -> None:  # the node and every process it starts live in the limited cgroup
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", str(app), "--listen", "127.0.0.1:0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                preexec_fn=enter_cgroup)
    node = RunningNode(home, proc, out_path, env)
    nodes.nodes.append(node)  # stopped at teardown like the others
    wait_for(lambda: "\nservice hungry" in node.output or proc.poll() is not None, 60, what="node start")
    node.url = node.wait_output(r"serving on (http://\S+)").group(1)
    assert httpx.get(node.url + "/").text == "ok"

    response = httpx.get(node.url + "/eat", timeout=60)
    assert response.status_code == 502
    line = node.wait_output(r"event=worker\.exited[^\n]*", timeout=15).group(0)
    assert "OOM killer" in line, line
    wait_for(lambda: node.ready_workers("hungry"), what="the replacement worker")
    assert "OOM killer" in node.service("hungry")["live"]["last_exit"]
    node.stop()
