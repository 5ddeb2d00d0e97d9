"""Releases, deploy, rollback, migration hook, dev mode: issue 3's acceptance lines
(all but swap-under-load, which is test_swap.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from anycore.config import load_service
from anycore.errors import BundleRefused
from anycore.release.bundle import release_id, unpack
from tests.conftest import HELLO, RunningNode, make_service, wait_for

# One app, varied per test through placeholders (one-line statements each). Every
# response body is "<version> <pid>"; ``/gate?<path>`` waits (bounded) until that file exists.
APP = '''
import asyncio, json, os, sys

VERSION = "@VERSION@"
@PRELUDE@

async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                @STARTUP@
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    path = scope["path"]
    status = 200
    @HANDLER@
    if path == "/gate":
        gate = scope["query_string"].decode()
        for _ in range(600):
            if os.path.exists(gate):
                break
            await asyncio.sleep(0.05)
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": f"{VERSION} {os.getpid()}".encode()})
'''

CONFIG = {"name": '"svc"', "workers": "1", "drain_timeout": "5", "startup_timeout": "10", "timeout": "20"}


def version(root: Path, name: str, *, prelude: str = "", startup: str = "pass", handler: str = "pass",
            config: dict[str, str] | None = None) -> Path:
    """Service directory ``root/name`` (service "svc"); ``config`` overrides anycore.toml keys (TOML values)."""
    code = (APP.replace("@VERSION@", name).replace("@PRELUDE@", prelude)
            .replace("@STARTUP@", startup).replace("@HANDLER@", handler))
    toml = "".join(f"{key} = {value}\n" for key, value in {**CONFIG, **(config or {})}.items())
    return make_service(root / name, "svc", code, toml)


def rid(directory: Path) -> str:
    service = load_service(str(directory))
    return release_id(service.directory, service.config)


def get(node: RunningNode, path: str = "/") -> tuple[int, str, str]:
    """(status, anycore-release header, body) of one GET on a fresh connection."""
    response = httpx.get(node.url + path, timeout=20)
    return response.status_code, response.headers.get("anycore-release", ""), response.text


def releases(node: RunningNode, service: str = "svc") -> dict[str, Any]:
    result = node.cli("releases", service, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def worker_pids(node: RunningNode) -> set[int]:
    return {w["pid"] for w in node.workers("svc")}


class Load:
    """A bounded stream of GETs over one keep-alive connection, in a background thread."""

    def __init__(self, url: str, path: str = "/", max_requests: int = 4000, max_seconds: float = 60.0) -> None:
        self.url, self.path = url, path
        self.max_requests, self.max_seconds = max_requests, max_seconds
        self.results: list[tuple[float, int, str]] = []  # (monotonic time, status, release header)
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(base_url=self.url, timeout=20) as client:
            while not self.stop.is_set() and len(self.results) < self.max_requests and time.monotonic() < deadline:
                try:
                    response = client.get(self.path)
                    self.results.append((time.monotonic(), response.status_code, response.headers.get("anycore-release", "")))
                except httpx.HTTPError as exc:
                    self.errors.append(repr(exc))
                time.sleep(0.005)

    def __enter__(self) -> "Load":
        self.thread.start()
        wait_for(lambda: len(self.results) >= 5 or self.errors, 15, what="load flowing")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


# -- 1. failed deploys ------------------------------------------------------------------------

FAILURES = {
    # case: (version kwargs, failed phase, expected in the CLI's stderr)
    "import_error": (dict(prelude="import anycore_no_such_module_xyz"), "import",
                     ["ModuleNotFoundError", "anycore_no_such_module_xyz", "Traceback"]),
    "lifespan_hangs_past_startup_timeout": (dict(startup="await asyncio.sleep(3600)", config={"startup_timeout": "2"}),
                                            "warm", ["startup_timeout=2"]),
    "readiness_returns_500": (dict(handler='if path == "/healthz": status = 500', config={"readiness": '"/healthz"'}),
                              "warm", ["readiness check GET /healthz answered 500"]),
    "migration_hook_raises": (dict(prelude='def on_deploy(ctx):\n    raise RuntimeError("migration boom")',
                                   config={"migrate": '"app:on_deploy"'}),
                              "migrate", ["RuntimeError: migration boom", "Traceback", "in on_deploy"]),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_deploy_leaves_old_release_serving_under_load(nodes, tmp_path, case):
    kwargs, phase, expected = FAILURES[case]
    old = version(tmp_path, "a")
    bad = version(tmp_path, "b", **kwargs)
    node = nodes.start(old)
    old_id, bad_id = rid(old), rid(bad)
    pids = worker_pids(node)

    with Load(node.url) as load:
        t0 = time.monotonic()
        result = node.cli("deploy", str(bad))
        t1 = time.monotonic()
        seen = len(load.results)
        wait_for(lambda: len(load.results) >= seen + 20 or load.errors, 15, what="load after the deploy")

    # The command fails, names the phase, the cause and (where there is one) the traceback.
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"deploy of {bad_id} failed in phase {phase}" in result.stderr, result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)
    assert f"{old_id} keeps serving as before" in result.stderr
    # Nothing was dropped and nothing reached the failed release.
    assert load.errors == []
    assert {status for _, status, _ in load.results} == {200}
    assert {release for _, _, release in load.results} == {old_id}
    assert sum(1 for t, _, _ in load.results if t0 <= t <= t1) >= 1, "no request ran during the deploy"
    assert worker_pids(node) == pids, "the old release's workers were touched"

    # ps and releases show the failed release and why.
    service = node.service("svc")
    assert service["release"] == old_id and service["live"]["release"] == old_id
    failed = [f for f in service["failed"] if f["release"] == bad_id]
    assert failed and expected[0] in failed[0]["reason"], service["failed"]
    assert failed[0]["reason"] in result.stderr
    listing = releases(node)
    assert listing["live"] == old_id
    assert any(f["release"] == bad_id and expected[0] in f["reason"] for f in listing["failed"]), listing["failed"]
    assert any(d["release"] == bad_id and d["phase"] == "failed" and d["error"] for d in listing["deploys"])
    assert [r["id"] for r in listing["releases"] if r["live"]] == [old_id]


# -- 2. migration hook ------------------------------------------------------------------------

def hook_prelude(log: Path) -> str:
    return (f'HOOK_LOG = "{log}"\n'
            "async def on_deploy(ctx):\n"
            "    await asyncio.sleep(0)\n"
            "    with open(HOOK_LOG, 'a') as f:\n"
            "        f.write(json.dumps({'release': ctx.release, 'previous': ctx.previous_release, 'service': ctx.service,\n"
            "                            'mark': ctx.env.get('HOOK_MARK'), 'pid': os.getpid(), 'ppid': os.getppid()}) + '\\n')\n")


def test_migration_hook_runs_once_per_release_in_a_new_release_process(nodes, tmp_path):
    log = tmp_path / "hook.log"
    config = lambda mark: {"migrate": '"app:on_deploy"', "env": f'{{HOOK_MARK = "{mark}"}}'}  # noqa: E731
    a = version(tmp_path, "a", prelude=hook_prelude(log), config=config("a"))
    b = version(tmp_path, "b", prelude=hook_prelude(log), config=config("b"))
    a_id, b_id = rid(a), rid(b)
    node = nodes.start(a)
    lines = lambda: [json.loads(line) for line in log.read_text().splitlines()]  # noqa: E731
    assert [(h["release"], h["previous"], h["service"], h["mark"]) for h in lines()] == [(a_id, None, "svc", "a")]

    old_workers = worker_pids(node)
    old_zygote = node.service("svc")["live"]["zygote_pid"]
    result = node.cli("deploy", str(b))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "migrate" in result.stdout
    hooks = lines()
    assert len(hooks) == 2
    hook = hooks[1]
    assert (hook["release"], hook["previous"], hook["service"], hook["mark"]) == (b_id, a_id, "svc", "b")
    # In a process of the new release: a child of the new zygote; not the node, not an old worker.
    live = node.service("svc")["live"]
    assert live["release"] == b_id
    assert hook["ppid"] == live["zygote_pid"] != old_zygote
    assert hook["pid"] not in old_workers | {node.record["pid"], old_zygote, live["zygote_pid"]}
    assert hook["pid"] not in {w["pid"] for w in live["workers"]}

    # Once per release: an identical redeploy is a no-op, and going back and forth does not rerun it.
    again = node.cli("deploy", str(b))
    assert again.returncode == 0 and "no change" in again.stdout, again.stdout + again.stderr
    back = node.cli("rollback", "svc", "--to", a_id)
    assert back.returncode == 0, back.stdout + back.stderr
    forward = node.cli("deploy", str(b))
    assert forward.returncode == 0, forward.stdout + forward.stderr
    assert node.service("svc")["release"] == b_id
    assert len(lines()) == 2, lines()


# -- 3. automatic rollback --------------------------------------------------------------------

def test_release_crashing_after_shift_is_rolled_back_and_traffic_recovers(nodes, tmp_path):
    good = version(tmp_path, "a")
    crashing = version(tmp_path, "b", handler='if path != "/healthz": os._exit(1)', config={"readiness": '"/healthz"'})
    good_id, crashing_id = rid(good), rid(crashing)
    node = nodes.start(good)
    result = node.cli("deploy", str(crashing))  # passes warm: its readiness path does not crash
    assert result.returncode == 0, result.stdout + result.stderr
    assert node.service("svc")["release"] == crashing_id

    # Each distinct GET crashes a worker, is retried once, crashes another and is answered
    # 502: past 5 crashes in 60 s the release is crashlooping, and it is within rollback_window.
    statuses = []
    with httpx.Client(base_url=node.url, timeout=30) as client:
        for i in range(12):
            if node.service("svc")["rolled_back"]:
                break
            statuses.append(client.get(f"/crash?i={i}").status_code)
    assert 502 in statuses
    service = wait_for(lambda: (s := node.service("svc"))["rolled_back"] and s["release"] == good_id and s, 30,
                       what="automatic rollback to the previous release")
    assert crashing_id in service["rolled_back"] and f"rolled back to {good_id}" in service["rolled_back"]
    node.wait_output(rf"event=release\.rollback .*release={crashing_id}.*to={good_id}")

    # Traffic recovers on the previous release.
    wait_for(lambda: get(node, "/after")[:2] == (200, good_id), 20, what="traffic back on the previous release")
    with httpx.Client(base_url=node.url, timeout=20) as client:
        answers = [client.get(f"/recovered?i={i}") for i in range(20)]
    assert [(r.status_code, r.headers["anycore-release"]) for r in answers] == [(200, good_id)] * 20
    assert releases(node)["rolled_back"] == service["rolled_back"]


# -- 4. rollback and history ------------------------------------------------------------------

def test_rollback_after_failed_deploy_and_deploy_forward_again(nodes, tmp_path):
    a, b = version(tmp_path, "a"), version(tmp_path, "b")
    broken = version(tmp_path, "c", prelude="import anycore_no_such_module_xyz")
    a_id, b_id, broken_id = rid(a), rid(b), rid(broken)
    node = nodes.start(a)
    assert node.cli("deploy", str(b)).returncode == 0
    failed = node.cli("deploy", str(broken))
    assert failed.returncode == 1 and "ModuleNotFoundError" in failed.stderr
    assert get(node)[:2] == (200, b_id)

    back = node.cli("rollback", "svc", "--to", a_id)
    assert back.returncode == 0, back.stdout + back.stderr
    assert f"{a_id} is live" in back.stdout
    assert get(node)[:2] == (200, a_id)
    listing = releases(node)
    assert listing["live"] == a_id
    assert [r["id"] for r in listing["releases"] if r["live"]] == [a_id]
    assert {a_id, b_id} <= {r["id"] for r in listing["releases"]}

    forward = node.cli("deploy", str(b))
    assert forward.returncode == 0, forward.stdout + forward.stderr
    assert get(node)[:2] == (200, b_id)
    listing = releases(node)
    kept = {r["id"]: r for r in listing["releases"]}
    assert listing["live"] == b_id and kept[b_id]["live"] and not kept[a_id]["live"]
    assert broken_id not in kept or not kept[broken_id]["live"]
    for release, directory in ((a_id, a), (b_id, b)):
        assert kept[release]["deployed_at"] > 0
        assert kept[release]["source"] == str(directory.resolve())
    assert kept[b_id]["deployed_at"] > kept[a_id]["deployed_at"]

    # A plain rollback goes to the previous release.
    plain = node.cli("rollback", "svc")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert get(node)[:2] == (200, a_id)


# -- 5. identical redeploy --------------------------------------------------------------------

def test_identical_redeploy_is_a_no_op_without_worker_restarts(nodes, tmp_path):
    a = version(tmp_path, "a")
    node = nodes.start(a)
    before = node.service("svc")["live"]
    _, _, body = get(node)
    result = node.cli("deploy", str(a))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no change" in result.stdout
    after = node.service("svc")["live"]
    assert after["release"] == before["release"] == rid(a)
    assert after["zygote_pid"] == before["zygote_pid"]
    assert {w["pid"] for w in after["workers"]} == {w["pid"] for w in before["workers"]}
    assert get(node)[2] == body  # same worker pid answering
    assert "event=worker.exited" not in node.output


# -- 6. unsafe bundles ------------------------------------------------------------------------

def tar_bytes(*members: tuple[str, str, bytes | str]) -> bytes:
    """A gzipped tar of (kind, name, data-or-link-target) members, made by hand."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for kind, name, payload in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                assert isinstance(payload, bytes)
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            else:
                info.type = tarfile.SYMTYPE
                info.linkname = str(payload)
                tar.addfile(info)
    return buffer.getvalue()


APP_FILE = ("file", "app.py", b"app = None\n")


@pytest.mark.parametrize("member, message", [
    (("file", "../evil.py", b"x"), "'../evil.py' escapes the release directory"),
    (("file", "pkg/../../evil.py", b"x"), "escapes the release directory"),
    (("file", "/tmp/evil.py", b"x"), "escapes the release directory"),
    (("link", "passwd", "/etc/passwd"), "symlink 'passwd' points to an absolute path '/etc/passwd'"),
    (("link", "pkg/up", "../../outside"), "points outside the release directory"),
])
def test_bundle_with_escaping_path_or_link_is_refused(tmp_path, member, message):
    dest = tmp_path / "release"
    with pytest.raises(BundleRefused) as refused:
        unpack(tar_bytes(APP_FILE, member), str(dest))
    assert message in str(refused.value)
    assert not dest.exists(), "nothing may be written from a refused bundle"
    assert not (tmp_path / "evil.py").exists() and not Path("/tmp/evil.py").exists()
    # The same bundle without the bad member unpacks (the refusal is about that member).
    unpack(tar_bytes(APP_FILE, ("link", "alias.py", "app.py")), str(tmp_path / "ok"))
    assert (tmp_path / "ok" / "alias.py").read_bytes() == b"app = None\n"


def test_deploy_of_directory_with_symlink_to_absolute_path_is_refused(nodes, tmp_path):
    a = version(tmp_path, "a")
    evil = version(tmp_path, "b")
    (evil / "passwd").symlink_to("/etc/passwd")
    node = nodes.start(a)
    result = node.cli("deploy", str(evil))
    assert result.returncode != 0
    assert "symlink 'passwd' points to an absolute path '/etc/passwd'" in result.stderr, result.stdout + result.stderr
    assert get(node)[:2] == (200, rid(a))
    assert not (node.home / "releases" / rid(evil)).exists()
    assert releases(node)["live"] == rid(a)


# -- 7. anycore dev ---------------------------------------------------------------------------

def http_get_raw(sock: socket.socket, path: str) -> tuple[int, str]:
    """One GET on an open raw socket (keep-alive); returns (status, body)."""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed by the server after {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    assert "close" not in headers.get("connection", ""), headers
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed mid-body"
        body += chunk
    return int(lines[0].split()[1]), body[:length].decode()


def test_dev_hot_swaps_on_edit_and_keep_alive_connection_survives(tmp_path):
    directory = version(tmp_path, "v1")
    home = tmp_path / "devhome"
    env = {**os.environ, "ANYCORE_HOME": str(home), "PYTHONUNBUFFERED": "1", "ANYCORE_USER": "root"}
    env.pop("ANYCORE_TOKEN", None)
    out_path = tmp_path / "dev.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "dev", str(directory), "--listen", "127.0.0.1:0"],
                                stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL)
    node = RunningNode(home, proc, out_path, env)
    try:
        def started() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"anycore dev exited with {proc.returncode}:\n{node.output}")
            # Serving, and watching: an edit before `dev: watching` would not be seen.
            return (home / "node.json").exists() and "\nservice svc " in "\n" + node.output and "dev: watching" in node.output
        wait_for(started, 60, what="anycore dev serving")
        node.url = json.loads((home / "node.json").read_text())["gateway"]
        host, port = node.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=20) as sock, httpx.Client(base_url=node.url, timeout=20) as client:
            status, body = http_get_raw(sock, "/")
            assert status == 200 and body.startswith("v1 ")
            assert client.get("/").text.startswith("v1 ")
            app = directory / "app.py"
            app.write_text(app.read_text().replace('VERSION = "v1"', 'VERSION = "v2"'))
            # Poll on the same raw connection (which also keeps it from idling out).
            t0 = time.monotonic()
            wait_for(lambda: http_get_raw(sock, "/")[1].startswith("v2 "), 10, interval=0.1, what="the edit to be served")
            assert time.monotonic() - t0 < 10
            status, body = http_get_raw(sock, "/")
            assert status == 200 and body.startswith("v2 ")
            response = client.get("/")  # the httpx keep-alive connection survived too
            assert response.status_code == 200 and response.text.startswith("v2 ")
        node.wait_output(rf"dev: done {rid(directory)}", 15)  # the old release drained and retired too
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert "event=node.stopped" in node.output
    finally:
        node.stop()


# -- 8. several releases at once --------------------------------------------------------------

def test_deploy_while_previous_releases_drain(nodes, tmp_path):
    # A drain long enough for the long requests, which wait for the test to open their gate.
    a, b, c = (version(tmp_path, v, config={"drain_timeout": "25"}) for v in "abc")
    a_id, b_id, c_id = rid(a), rid(b), rid(c)
    node = nodes.start(a)
    gates = {x: tmp_path / f"gate-{x}" for x in "ab"}
    long: dict[str, Any] = {}

    def long_request(key: str) -> None:
        try:
            long[key] = get(node, f"/gate?{gates[key]}")
        except httpx.HTTPError as exc:
            long[key] = exc

    threads = {x: threading.Thread(target=long_request, args=(x,), daemon=True) for x in "ab"}
    try:
        threads["a"].start()
        wait_for(lambda: node.service("svc")["inflight"] == 1, 10, what="long request in flight on A")
        result = node.cli("deploy", str(b), "--detach")
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: (s := node.service("svc"))["release"] == b_id and [d["release"] for d in s["draining"]] == [a_id],
                 30, what="B live while A drains")
        threads["b"].start()
        wait_for(lambda: node.service("svc")["inflight"] == 2, 10, what="long request in flight on B")
        result = node.cli("deploy", str(c), "--detach")
        assert result.returncode == 0, result.stdout + result.stderr
        service = wait_for(lambda: (s := node.service("svc"))["release"] == c_id and len(s["draining"]) == 2 and s, 30,
                           what="C live while A and B drain")
        assert {d["release"] for d in service["draining"]} == {a_id, b_id}
        assert get(node)[:2] == (200, c_id)
        assert not long, "the long requests must still be in flight"
    finally:
        for gate in gates.values():
            gate.touch()
        for thread in threads.values():
            if thread.ident is not None:
                thread.join(30)
    assert long["a"][:2] == (200, a_id)
    assert long["b"][:2] == (200, b_id)
    wait_for(lambda: node.service("svc")["draining"] == [], 30, what="old releases retired")
    listing = releases(node)
    assert listing["live"] == c_id
    phases = {d["release"]: d["phase"] for d in listing["deploys"]}
    wait_for(lambda: {d["release"]: d["phase"] for d in releases(node)["deploys"]}.get(c_id) == "done", 15,
             what="C's deploy done")
    assert phases.get(b_id) == "done"
    assert get(node)[:2] == (200, c_id)


# -- 9. stop / start --------------------------------------------------------------------------

def test_stop_then_start_brings_back_the_deployed_release_from_cache(nodes, tmp_path):
    a, b = version(tmp_path, "a"), version(tmp_path, "b")
    node = nodes.start(a)
    assert node.cli("deploy", str(b)).returncode == 0
    b_id = rid(b)
    assert node.cli("stop", "svc").returncode == 0
    assert httpx.get(node.url + "/").status_code == 503
    # The source directory is gone: start must bring the release back from the node's cache.
    for path in b.iterdir():
        path.unlink()
    b.rmdir()
    result = node.cli("start", "svc")
    assert result.returncode == 0, result.stdout + result.stderr
    assert b_id in result.stdout
    assert get(node)[:2] == (200, b_id)
    assert get(node)[2].startswith("b ")
    assert node.service("svc")["live"]["release"] == b_id


def test_up_without_path_brings_back_the_live_releases_and_not_the_stopped_ones(nodes, tmp_path):
    on = make_service(tmp_path, "on", HELLO, 'name = "on"\nworkers = 1\nroutes = ["/on"]\n')
    off = make_service(tmp_path, "off", HELLO, 'name = "off"\nworkers = 1\nroutes = ["/off"]\n')
    first = nodes.start(on, off)
    release = first.service("on")["release"]
    assert first.cli("stop", "off").returncode == 0
    assert first.stop() == 0
    again = nodes.start(home=first.home, services=1)  # no PATH: restore from JetStream KV + cache
    assert again.service("on")["release"] == release
    response = httpx.get(again.url + "/on/")
    assert response.status_code == 200 and response.headers["anycore-release"] == release
    assert "off" not in {s["name"] for s in again.ps()["services"]}  # it was stopped: it stays off


LINEAGE = """
import os, sys

def parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    zygote = os.getppid()
    body = f"{parent_of(zygote)} {sys.flags.optimize} {os.environ.get('ANYCORE_RELEASE', '')}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})
"""


def test_zygotes_fork_from_the_template_unless_the_env_sets_python_variables(nodes, tmp_path):
    """A zygote is forked from the node's pre-imported template (its parent is not the
    node), with the service's env; PYTHON* variables act at interpreter start, so such a
    service gets a fresh interpreter (parent: the node) and the flag really applies."""
    plain = make_service(tmp_path, "plain", LINEAGE, 'name = "plain"\nroutes = ["/plain"]\n')
    flagged = make_service(tmp_path, "flagged", LINEAGE,
                           'name = "flagged"\nroutes = ["/flagged"]\nenv = { PYTHONOPTIMIZE = "1" }\n')
    node = nodes.start(plain, flagged)
    node_pid = node.proc.pid
    zygote_parent, flag, release = httpx.get(node.url + "/plain", timeout=10).text.split()
    assert int(zygote_parent) != node_pid and flag == "0" and release.startswith("plain@")
    zygote_parent, flag, release = httpx.get(node.url + "/flagged", timeout=10).text.split()
    assert int(zygote_parent) == node_pid and flag == "1" and release.startswith("flagged@")
