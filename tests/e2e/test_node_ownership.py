"""A node owns its processes, dead or alive (issue 12, item 4): one node per home, every
child dies with it, a failed `up` leaves nothing behind, the embedded NATS is supervised,
no 404 while starting, `down` means down, and the CLI answers user errors in one line."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.conftest import HELLO, make_service, wait_for


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def descendants(root: int) -> set[int]:
    """Every live process whose parent chain leads to ``root``."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, ppid in parents.items() if ppid in frontier and pid not in found}
        found |= frontier
    return {pid for pid in found if alive(pid)}


def nats_servers_of(home: Path) -> list[int]:
    """Live nats-server processes started with this home's config file."""
    conf = str(home / "nats.conf").encode()
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and argv[0].endswith(b"nats-server") and conf in argv and alive(int(entry)):
                found.append(int(entry))
    return found


def cli(env: dict[str, str], *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anycore.cli.main", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one message line of a failed command (a node's own ``ts=... event=...`` log lines aside)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("ts=")]
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("anycore: "), result.stderr
    return lines[0]


def test_kill9_of_the_node_leaves_no_process_and_up_stops_a_stale_nats(nodes, tmp_path):
    app = make_service(tmp_path, "shop", HELLO, "workers = 6\n")
    node = nodes.start(app)
    wait_for(lambda: len(node.ready_workers("shop")) == 6, what="6 ready workers")
    tree = descendants(node.proc.pid)
    nats = nats_servers_of(node.home)
    assert len(nats) == 1 and nats[0] in tree
    assert len(tree) >= 9, tree  # nats-server, template, zygote, 6 workers
    node.proc.kill()
    node.proc.wait()
    wait_for(lambda: not any(alive(pid) for pid in tree), timeout=2.0, what=f"no process of the node's tree {tree}")

    # A nats-server left over from an earlier node of this home (e.g. one killed before the
    # kernel rule existed): the next `up` stops it before starting its own.
    stale = subprocess.Popen([str(Path(sys.executable).parent / "nats-server"), "-c", str(node.home / "nats.conf"),
                              "--ports_file_dir", str(node.home / "run")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: nats_servers_of(node.home) == [stale.pid], what="the stale nats-server to run")
        again = nodes.start(home=node.home, services=1)
        assert stale.wait(5) is not None
        assert nats_servers_of(node.home) == [int((node.home / "run" / "nats.pid").read_text())]
        assert httpx.get(again.url + "/").text == "hello"

        # A zygote's workers die with it (their parent): the release starts a new zygote
        # and forks its workers again from it — one restart, not six crashes (which would
        # make the release crashlooping).
        wait_for(lambda: len(again.ready_workers("shop")) == 6, what="6 ready workers")
        zygote = again.service("shop")["live"]["zygote_pid"]
        workers = {w["pid"] for w in again.workers("shop")}
        os.kill(zygote, signal.SIGKILL)
        wait_for(lambda: not any(alive(pid) for pid in workers), timeout=2.0, what="the zygote's workers to die with it")
        wait_for(lambda: (live := again.service("shop")["live"])["zygote_pid"] != zygote and
                 len([w for w in live["workers"] if w["state"] == "ready"]) == 6, timeout=20,
                 what="a new zygote and its 6 workers forked from it")
        assert httpx.get(again.url + "/").text == "hello"
        assert "release.zygote_restarted" in again.output
        assert "release.crashlooping" not in again.output and "worker.restarting" not in again.output
    finally:
        if stale.poll() is None:
            stale.kill()
            stale.wait()


def test_one_node_per_home_and_the_cli_answers_in_one_line(nodes, tmp_path):
    app = make_service(tmp_path, "shop", HELLO, "workers = 1\n")
    node = nodes.start(app)
    record = json.loads((node.home / "node.json").read_text())

    second = subprocess.run([sys.executable, "-m", "anycore.cli.main", "up", str(app), "--listen", "127.0.0.1:0"],
                            env=node.env, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert second.returncode == 2
    line = one_line_error(second)
    assert f"pid {node.proc.pid}" in line and node.url in line and "anycore down" in line
    assert json.loads((node.home / "node.json").read_text()) == record  # not deleted, not replaced
    assert len(nats_servers_of(node.home)) == 1
    assert node.ps()["pid"] == node.proc.pid
    assert httpx.get(node.url + "/").text == "hello"

    # User errors: one line, exit 2, never a traceback.
    for args, expected in [
        (("rollback", "shop", "--to", "bogus"), "'bogus' is not a kept release of service shop"),
        (("rollback", "shop", "--to", "other@1234"), "belongs to service 'other'"),
        (("rollback", "nope"), "no service named 'nope'"),
        (("stop", "nope"), "no service named 'nope'"),
        (("releases", "nope"), "no service named 'nope'"),
        (("releases", "a*"), "no service named 'a*'"),
        (("logs", "nope"), "no service named 'nope'"),
        (("deploy", str(tmp_path / "missing")), "neither a service directory"),
        (("scale", "shop", "--min", "5", "--max", "2"), ""),
    ]:
        result = cli(node.env, *args)
        assert result.returncode == 2, (args, result.returncode, result.stderr)
        assert expected in one_line_error(result), (args, result.stderr)
    usage = cli(node.env, "scale", "shop")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
    release = node.service("shop")["release"]
    prefix = release.split("@")[1][:6]
    rolled = cli(node.env, "rollback", "shop", "--to", prefix)
    assert "no change" in rolled.stdout or rolled.returncode == 0, rolled.stderr  # a prefix names the release

    # kill -9 of the embedded nats-server: restarted on the same port; `ps` works again.
    (nats_pid,) = nats_servers_of(node.home)
    os.kill(nats_pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(lambda: cli(node.env, "ps", "--json").returncode == 0 and nats_pid not in nats_servers_of(node.home),
             timeout=10.0, interval=0.1, what="`anycore ps` after kill -9 of nats-server")
    took = time.monotonic() - killed
    print(f"ps answered {took:.2f}s after kill -9 of nats-server")
    assert len(nats_servers_of(node.home)) == 1
    assert "nats.restarted" in node.output
    make_service(tmp_path, "shop", SLOW_SHUTDOWN, "workers = 1\n")
    redeploy = cli(node.env, "deploy", str(app))
    assert redeploy.returncode == 0, redeploy.stdout + redeploy.stderr
    assert httpx.get(node.url + "/").text == "hello again"

    # `down` returns once the node process and its children are gone (the worker's lifespan
    # shutdown takes 1.5 s), also when the CLI reaches the node through ANYCORE_NATS.
    tree = descendants(node.proc.pid)
    token = (node.home / "token").read_text().strip()
    down = cli({**node.env, "ANYCORE_NATS": record["nats_url"], "ANYCORE_TOKEN": token}, "down")
    assert down.returncode == 0, down.stderr
    assert not alive(node.proc.pid) and not any(alive(pid) for pid in tree), [p for p in tree if alive(p)]


SLOW_SHUTDOWN = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.complete"})
        await receive()
        await asyncio.sleep(1.5)
        await send({"type": "lifespan.shutdown.complete"})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello again"})
"""


def test_up_on_a_port_in_use_exits_2_in_one_line_and_leaves_nothing(nodes, tmp_path):
    app = make_service(tmp_path, "shop", HELLO)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    home = tmp_path / "home"
    env = {**os.environ, "ANYCORE_HOME": str(home)}
    env.pop("ANYCORE_TOKEN", None)
    try:
        result = cli(env, "up", str(app), "--listen", f"127.0.0.1:{port}")
    finally:
        holder.close()
    assert result.returncode == 2
    line = one_line_error(result)
    assert f"127.0.0.1:{port}" in line and "--listen" in line
    assert nats_servers_of(home) == []
    assert not (home / "node.json").exists()

    refused = cli(env, "up", str(app), "--listen", "127.0.0.1:0", "--nats", f"nats://127.0.0.1:{port}", "--token", "t")
    assert refused.returncode == 2
    assert "cannot reach NATS" in one_line_error(refused)
    bad = make_service(tmp_path, "bad", HELLO, 'workers = "lots"\n')
    config = cli(env, "up", str(bad), "--listen", "127.0.0.1:0")
    assert config.returncode == 2 and "workers" in one_line_error(config)
    dev = cli(env, "dev", str(bad), "--listen", "127.0.0.1:0")
    assert dev.returncode == 2 and "workers" in one_line_error(dev)
    assert nats_servers_of(home) == []


SLOW_IMPORT = """
import time
time.sleep(1.5)  # a release whose import takes a while: the window where a gateway had no route yet

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ready"})
"""


def test_requests_at_start_never_get_404(nodes, tmp_path):
    app = make_service(tmp_path, "slow", SLOW_IMPORT)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    node = nodes.start(app, args=("--listen", f"127.0.0.1:{port}"), wait=False)
    statuses: list[int] = []
    deadline = time.monotonic() + 60
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline and node.proc.poll() is None:
            try:
                response = client.get(f"http://127.0.0.1:{port}/")
            except httpx.TransportError:
                time.sleep(0.01)
                continue
            statuses.append(response.status_code)
            if response.status_code == 503:
                assert int(response.headers["retry-after"]) >= 1
            if response.status_code == 200:
                break
            time.sleep(0.01)
    assert statuses and statuses[-1] == 200, statuses[-5:]
    assert 404 not in statuses, statuses
    assert set(statuses) <= {200, 503}
    assert 503 in statuses  # the gateway listened while the release imported


def _pids_of(output: str, release: str) -> list[int]:
    """The zygote and worker pids the node logged for ``release``."""
    import re

    return [int(m.group(1)) for m in re.finditer(rf"release={re.escape(release)} (?:zygote_pid|worker=\d+ pid)=(\d+)", output)]


VERSIONED = """
import asyncio

VERSION = "{version}"

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        await receive()
        await asyncio.sleep({startup})
        await send({{"type": "lifespan.startup.complete"}})
        await receive()
        await send({{"type": "lifespan.shutdown.complete"}})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(8)
    await send({{"type": "http.response.start", "status": 200, "headers": []}})
    await send({{"type": "http.response.body", "body": VERSION.encode()}})
"""


def test_ctrl_c_during_deploy_aborts_before_the_shift_and_explains_after(nodes, tmp_path):
    config = "workers = 1\ndrain_timeout = 30\n"
    node = nodes.start(make_service(tmp_path, "svc", VERSIONED.format(version="v1", startup=0), config))
    make_service(tmp_path, "svc", VERSIONED.format(version="v2", startup=5), config)
    deploy = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "deploy", str(tmp_path / "svc")],
                              env=node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Interrupt while the new release warms (its lifespan startup takes 5 s).
    wait_for(lambda: node.output.count("phase=warm") >= 2, timeout=30, what="the deploy to reach warm")
    deploy.send_signal(signal.SIGINT)
    out, err = deploy.communicate(timeout=30)
    assert deploy.returncode == 130, (out, err)
    assert "aborted" in err and "keeps serving" in err and "Traceback" not in err, err
    releases = json.loads(node.cli("releases", "svc", "--json").stdout)
    (aborted,) = [d for d in releases["deploys"] if d["phase"] == "failed"]
    assert "aborted" in aborted["error"]
    new = aborted["release"]
    # Past the moment the new release would have been ready: the old one still serves, and
    # nothing of the new one runs.
    until = time.monotonic() + 6
    while time.monotonic() < until:
        assert httpx.get(node.url + "/").text == "v1"
        time.sleep(0.1)
    assert node.service("svc")["release"] != new
    pids = _pids_of(node.output, new)
    assert pids and not any(alive(pid) for pid in pids), pids

    # After the shift: the deploy goes on, and the message says how to follow or undo it.
    slow = subprocess.Popen([sys.executable, "-c", f"import httpx; httpx.get({node.url + '/slow'!r}, timeout=30)"])
    wait_for(lambda: node.service("svc")["inflight"] >= 1, what="the slow request to hold the old release's drain")
    make_service(tmp_path, "svc", VERSIONED.format(version="v3", startup=0), config)
    deploy = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "deploy", str(tmp_path / "svc")],
                              env=node.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(lambda: httpx.get(node.url + "/").text == "v3", timeout=30, what="v3 to be live")
    deploy.send_signal(signal.SIGINT)  # the old release still drains the slow request
    out, err = deploy.communicate(timeout=30)
    slow.wait(30)
    assert deploy.returncode == 130, (out, err)
    assert "goes on" in err and "anycore releases svc" in err and "anycore rollback svc" in err, err
    wait_for(lambda: any(d["phase"] == "done" and d["release"] == node.service("svc")["release"]
                         for d in json.loads(node.cli("releases", "svc", "--json").stdout)["deploys"]),
             timeout=30, what="the interrupted deploy to finish")
