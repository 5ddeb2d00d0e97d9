"""Shared fixtures: real nodes (``anycore up`` as a subprocess, with its own embedded
nats-server on a free port and its own $ANYCORE_HOME), and service directories written
on the fly. Every process a test starts is stopped at teardown, bounded."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest


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


@dataclass
class RunningNode:
    home: Path
    proc: subprocess.Popen[bytes]
    out_path: Path
    env: dict[str, str]
    url: str = ""
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_output(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        return wait_for(lambda: re.search(pattern, self.output), timeout, what=f"node output matching {pattern!r}")  # type: ignore[no-any-return]

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "anycore.cli.main", *args], env=env or self.env,
                              capture_output=True, text=True, timeout=timeout)

    def ps(self) -> dict[str, Any]:
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
        nats = self.nats_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in nats:  # an embedded nats-server outlives a node killed with -9
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.returncode


class NodeFactory:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.nodes: list[RunningNode] = []

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


HELLO = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello"})
"""
