"""Shared fixtures: real nodes (``anycore up`` as a subprocess, with its own embedded
nats-server on a free port and its own $ANYCORE_HOME), and service directories written
on the fly. Every process a test starts is stopped at teardown, bounded.

A test reads a node's state (``node.ps()``, ``service``, ``workers``...) through a
``ControlProbe``: one NATS connection per node, kept for the node's life, that sends the
same ``ps`` request the CLI sends (``anycore.node.<id>.ps``, authenticated with the token
from $ANYCORE_HOME or $ANYCORE_TOKEN) and returns the same JSON ``anycore ps --json``
prints. A poll costs a request (well under a millisecond of CPU) instead of a Python
interpreter start per poll (~0.3 s of CPU for the CLI process). Tests of the CLI itself
call it (``node.cli(...)``, ``node.ps_cli()``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Coroutine, Iterator, TypeVar

import msgspec
import nats
import pytest

from anycore.cluster.control import ControlClient, control_subject

T = TypeVar("T")


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def tmpfs_disk(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real small disk: a tmpfs of ``size`` (e.g. "48m") mounted in ``tmp_path``; the test
    is skipped where mounting is not possible (not root, no tmpfs)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs mounts to make a small real disk")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def make_service(root: Path, name: str, code: str, config: str = "") -> Path:
    """Write a service directory ``root/name`` with ``app.py`` and an optional anycore.toml."""
    directory = root / name
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "app.py").write_text(textwrap.dedent(code))
    if config:
        (directory / "anycore.toml").write_text(textwrap.dedent(config))
    return directory


class _ProbeLoop:
    """One event loop on a daemon thread for every probe of the test session, so sync tests
    (and async ones, from ``asyncio.to_thread``) can await NATS without a loop of their own."""

    _loop: asyncio.AbstractEventLoop | None = None
    _lock = threading.Lock()

    @classmethod
    def run(cls, coro: Coroutine[Any, Any, T], timeout: float) -> T:
        with cls._lock:
            if cls._loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name="control-probe", daemon=True).start()
                cls._loop = loop
        future = asyncio.run_coroutine_threadsafe(coro, cls._loop)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise AssertionError(f"the control probe got no answer within {timeout}s") from None


class ControlProbe:
    """The test process's own line to one node's control subject (see the module doc).

    It finds the node as the CLI does with the node's ``env`` (the same dict as
    ``RunningNode.env``, so a test that changes it is followed): $ANYCORE_NATS, else the NATS
    URL in ``$ANYCORE_HOME/node.json``; $ANYCORE_NODE, else the node id there; $ANYCORE_TOKEN,
    else ``$ANYCORE_HOME/token``. These are read again on every connect, and a changed URL
    means a new connection, so a node whose NATS restarted (or a test that points at another
    server) is found again. A failed request drops the connection and the next call
    connects afresh, as a new CLI process would; like a failed ``anycore ps``, the failure
    itself is an AssertionError in the test."""

    CONNECT_BOUND = 5.0

    def __init__(self, home: Path, env: dict[str, str]) -> None:
        self.home = home
        self.env = env
        self.nc: Any = None
        self.url = ""
        self.node_id = ""
        self._connecting: asyncio.Lock | None = None

    def ps(self, timeout: float = 10.0) -> dict[str, Any]:
        """What ``anycore ps --json`` prints for this node."""
        return self.call("ps", timeout)

    def cluster(self, timeout: float = 10.0) -> list[dict[str, Any]]:
        """What ``anycore ps --cluster --json`` lists under "nodes": the live heartbeats."""
        return _ProbeLoop.run(self._guarded(self._cluster()), timeout + self.CONNECT_BOUND + 5)

    def call(self, command: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        return _ProbeLoop.run(self._guarded(self._call(command, timeout, args)), timeout + self.CONNECT_BOUND + 5)

    def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                _ProbeLoop.run(self._close(), 5.0)

    async def _connected(self) -> Any:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.nc is not None and self.nc.is_connected and self.env.get("ANYCORE_NATS", self.url) == self.url:
                return self.nc
            await self._close()
            record = json.loads((self.home / "node.json").read_text())
            url = self.env.get("ANYCORE_NATS") or record["nats_url"]
            token = self.env.get("ANYCORE_TOKEN") or (self.home / "token").read_text().strip()
            servers = [u.strip() for u in url.split(",") if u.strip()]
            self.nc = await asyncio.wait_for(
                nats.connect(servers, token=token, name="anycore-test-probe", allow_reconnect=False,
                             connect_timeout=3, max_reconnect_attempts=0), self.CONNECT_BOUND)
            self.url = url
            self.node_id = self.env.get("ANYCORE_NODE") or record["node_id"]
            return self.nc

    async def _call(self, command: str, timeout: float, args: dict[str, Any]) -> dict[str, Any]:
        nc = await self._connected()
        msg = await nc.request(control_subject(self.node_id, command), json.dumps(args).encode(), timeout=timeout)
        reply: dict[str, Any] = json.loads(msg.data)
        if not reply.get("ok"):
            raise AssertionError(f"node {self.node_id} refused `{command}`: {reply.get('error')}")
        return reply

    async def _cluster(self) -> list[dict[str, Any]]:
        client = ControlClient(None, None, None)  # the CLI's own reading of the heartbeats, on our connection
        client.nc = await self._connected()
        nodes = [msgspec.to_builtins(h) for h in await client.cluster()]
        return json.loads(json.dumps(nodes))  # exactly what the CLI's JSON carries

    async def _guarded(self, coro: Coroutine[Any, Any, T]) -> T:
        try:
            return await coro
        except AssertionError:
            raise
        except Exception as exc:  # connection refused, no responders, timeout, no node.json yet
            await self._close()
            raise AssertionError(f"control probe of {self.home}: {type(exc).__name__}: {exc}") from None

    async def _close(self) -> None:
        nc, self.nc = self.nc, None
        if nc is not None and not nc.is_closed:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.close(), 2.0)


@dataclass
class RunningNode:
    home: Path
    proc: subprocess.Popen[bytes]
    out_path: Path
    env: dict[str, str]
    url: str = ""
    record: dict[str, Any] = field(default_factory=dict)
    probe: ControlProbe = field(init=False)

    def __post_init__(self) -> None:
        self.probe = ControlProbe(self.home, self.env)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        return wait_for(lambda: re.search(pattern, self.output), timeout, what=f"node output matching {pattern!r}")  # type: ignore[no-any-return]

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "anycore.cli.main", *args], env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ps(self) -> dict[str, Any]:
        """The node's ``ps`` reply, through the probe's NATS connection (no CLI process)."""
        return self.probe.ps()

    def ps_cli(self) -> dict[str, Any]:
        """``anycore ps --json`` run as the CLI: for tests of the CLI itself."""
        result = self.cli("ps", "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def service(self, name: str) -> dict[str, Any]:
        return next(s for s in self.ps()["services"] if s["name"] == name)

    def workers(self, name: str) -> list[dict[str, Any]]:
        live = self.service(name)["live"] or {}
        return live.get("workers", [])  # type: ignore[no-any-return]

    def ready_workers(self, name: str) -> list[dict[str, Any]]:
        return [w for w in self.workers(name) if w["state"] == "ready"]

    def nats_pids(self) -> list[int]:
        run = self.home / "run"
        return [int(m.group(1)) for p in run.glob("nats-server_*.ports") if (m := re.search(r"_(\d+)\.ports$", p.name))] if run.exists() else []

    def stop(self, timeout: float = 30.0) -> int:
        self.probe.close()
        servers = self.nats_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in servers:  # an embedded nats-server outlives a node killed with -9
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.returncode


class NodeFactory:
    def __init__(self, tmp_path: Path, data_plane: str = "") -> None:
        self.tmp_path = tmp_path
        self.nodes: list[RunningNode] = []
        self.data_plane = data_plane  # "python": nodes default to --gateway python (the smoke variant)

    def start(self, *paths: str | Path, args: tuple[str, ...] = (), wait: bool = True, timeout: float = 60.0,
              home: Path | None = None, services: int | None = None, env: dict[str, str] | None = None) -> RunningNode:
        """Start `anycore up PATHS`; ``home`` reuses an earlier node's $ANYCORE_HOME, and
        ``services`` is how many services to wait for (default: one per PATH); ``env`` adds
        variables (e.g. ANYCORE_TOKEN for a node joining a cluster with --nats)."""
        index = len(self.nodes)
        home = home or self.tmp_path / f"home{index}"
        extra = env or {}
        # Tests run as root and many services write markers into pytest's 0700 tmp dirs, so
        # services keep root here unless a test asks otherwise (tests/e2e/test_release_env.py
        # runs them as the default unprivileged user).
        env = {**os.environ, "ANYCORE_HOME": str(home), "PYTHONUNBUFFERED": "1", "ANYCORE_USER": "root"}
        env.pop("ANYCORE_TOKEN", None)
        if self.data_plane:
            env["ANYCORE_GATEWAY"] = self.data_plane  # a test's own --gateway still wins
        env.update(extra)
        out_path = self.tmp_path / f"node{index}.out"
        out = open(out_path, "wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "anycore.cli.main", "up", *map(str, paths), "--listen", "127.0.0.1:0", *args],
            stdout=out, stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
        )
        out.close()
        node = RunningNode(home, proc, out_path, env)
        self.nodes.append(node)
        if wait:
            def started() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"node exited with {proc.returncode}:\n{node.output}")
                expected = len(paths) if services is None else services
                return (home / "node.json").exists() and node.output.count("\nservice ") + node.output.startswith("service ") >= expected
            wait_for(started, timeout, what="node start")
            node.record = json.loads((home / "node.json").read_text())
            node.url = node.record["gateway"]
        return node

    def stop_all(self) -> None:
        for node in reversed(self.nodes):
            node.stop()


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path)
    yield factory
    factory.stop_all()


def default_data_plane() -> str:
    """What `anycore up` runs on here without --gateway: "native" or "python" (the CLI's
    default, `auto` once native is the default, or $ANYCORE_GATEWAY)."""
    from anycore.cli.main import GATEWAY_DEFAULT
    from anycore.node.native import find_binary

    choice = os.environ.get("ANYCORE_GATEWAY") or GATEWAY_DEFAULT
    return "native" if choice == "native" or (choice == "auto" and find_binary()) else "python"


HELLO = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""


DATA_PLANES = ("python", "native")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test that needs ``plane_name`` (through tests/e2e/planes.py's ``gateway`` or
    ``nodes``) runs once per data plane, or on those its ``planes`` mark names."""
    if "plane_name" in metafunc.fixturenames:
        mark = metafunc.definition.get_closest_marker("planes")
        metafunc.parametrize("plane_name", mark.args if mark else DATA_PLANES)


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI (``ANYCORE_REQUIRE_NATIVE``, set by .ci/run) the native gateway's tests must run,
    not skip: a build that failed quietly at install is a failed run, said at once."""
    if not os.environ.get("ANYCORE_REQUIRE_NATIVE"):
        return
    from anycore.node.native import find_binary

    built = Path(__file__).resolve().parents[1] / "native" / "target" / "release" / "anycore-gateway"
    if find_binary() is None or not built.is_file():
        pytest.exit("ANYCORE_REQUIRE_NATIVE is set but anycore-gateway is not built (native/target/release and "
                    "src/anycore/bin): see the install output, README 'Native gateway'", returncode=1)
