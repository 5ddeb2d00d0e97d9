"""Cluster fixtures: a real nats-server (token + JetStream, data kept across restarts) that
the test starts itself, optionally three of them joined by routes, and anycore nodes that
join it with ``anycore up --nats URL`` (token through $ANYCORE_TOKEN), each with its own
$ANYCORE_HOME and gateway port. Everything is stopped at teardown, bounded. Waits read
the nodes through their control probes (tests/conftest.py), not CLI processes."""

from __future__ import annotations

import json
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from anycore.cluster.embedded import nats_server_binary
from tests.conftest import NodeFactory, RunningNode, wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class NatsServer:
    """One nats-server on a fixed port (so a restart comes back at the same URL)."""

    directory: Path
    token: str
    name: str = "n0"
    port: int = field(default_factory=free_port)
    cluster_port: int = 0
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nats.conf"
        text = (f"server_name: {self.name}\nhost: 127.0.0.1\nport: {self.port}\n"
                f"authorization {{ token: {json.dumps(self.token)} }}\n"
                f"jetstream {{ store_dir: {json.dumps(str(self.directory / 'js'))} }}\n")
        if self.cluster_port:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for p in self.routes)
            text += f"cluster {{ name: anycore, listen: 127.0.0.1:{self.cluster_port}, routes: [{routes}] }}\n"
        conf.write_text(text)
        log = open(self.directory / "nats.log", "ab")
        self.proc = subprocess.Popen([nats_server_binary(), "-c", str(conf)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        wait_for(lambda: _accepts(self.port), timeout, what=f"nats-server {self.name} to listen")

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats", secrets.token_hex(16))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsServer]]:
    """Three nats-servers joined by routes, JetStream on each (a RAFT meta group of 3)."""
    token = secrets.token_hex(16)
    cluster_ports = [free_port() for _ in range(3)]
    servers = [NatsServer(tmp_path / f"nats{i}", token, name=f"n{i}", cluster_port=cluster_ports[i],
                          routes=[p for j, p in enumerate(cluster_ports) if j != i]) for i in range(3)]
    try:
        for server in servers:
            server.start()
        wait_for(lambda: _jetstream_ready(servers[0]), 30, interval=0.2, what="the NATS cluster's JetStream (meta leader)")
        yield servers
    finally:
        for server in reversed(servers):
            server.stop()


def _jetstream_ready(server: NatsServer) -> bool:
    import asyncio

    import nats

    async def probe() -> bool:
        try:
            nc = await nats.connect(server.url, token=server.token, connect_timeout=1, allow_reconnect=False)
        except Exception:
            return False
        try:
            await nc.jetstream().account_info()
            return True
        except Exception:
            return False
        finally:
            await nc.close()

    return asyncio.run(probe())


class ClusterNodes(NodeFactory):
    """Nodes that join one NATS (``url``) instead of each embedding its own."""

    def __init__(self, tmp_path: Path, url: str, token: str) -> None:
        super().__init__(tmp_path)
        self.url = url
        self.token = token

    def join(self, *paths: str | Path, url: str | None = None, **kwargs: Any) -> RunningNode:
        args = ("--nats", url or self.url, *kwargs.pop("args", ()))
        return self.start(*paths, args=args, env={"ANYCORE_TOKEN": self.token}, **kwargs)


@pytest.fixture
def cluster(tmp_path: Path, nats_server: NatsServer) -> Iterator[ClusterNodes]:
    factory = ClusterNodes(tmp_path, nats_server.url, nats_server.token)
    yield factory
    factory.stop_all()


def cluster_view(node: RunningNode) -> dict[str, Any]:
    """``anycore ps --cluster --json``'s nodes by id, read over the node's probe connection
    (the CLI's own heartbeat reader, no CLI process); test_membership runs the CLI itself."""
    return {n["node"]: n for n in node.probe.cluster()}


def wait_peers(nodes: list[RunningNode], service: str | None = None, timeout: float = 20.0) -> None:
    """Until every node sees every other one in its peer table (and serving ``service``)."""
    ids = {n.record["node_id"] for n in nodes}

    def seen() -> bool:
        for node in nodes:
            peers = node.ps()["cluster"]["peers"]
            if set(peers) != ids - {node.record["node_id"]}:
                return False
        if service is not None:
            view = cluster_view(nodes[0])
            return all(view.get(i, {}).get("services", {}).get(service, {}).get("release") for i in ids)
        return True

    wait_for(seen, timeout, interval=0.2, what="every node to see its peers")


class Load:
    """Background clients sending requests to some gateways until stopped; counts outcomes."""

    def __init__(self, urls: list[str], path: str = "/", clients: int = 2, timeout: float = 30.0) -> None:
        self.urls = urls
        self.path = path
        self.timeout = timeout
        self.running = True
        self.ok = 0
        self.errors: list[str] = []
        self.by_node: dict[str, int] = {}
        self.releases: list[str] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def __enter__(self) -> "Load":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.running = False
        for t in self.threads:
            t.join(self.timeout + 5)

    def mark(self) -> tuple[int, int]:
        with self.lock:
            return self.ok, len(self.errors)

    def _run(self, index: int) -> None:
        url = self.urls[index % len(self.urls)]
        with httpx.Client(timeout=self.timeout) as client:
            while self.running:
                try:
                    response = client.get(url + self.path)
                    with self.lock:
                        if response.status_code == 200:
                            self.ok += 1
                            node = response.headers.get("anycore-node", "")
                            self.by_node[node] = self.by_node.get(node, 0) + 1
                            self.releases.append(response.headers.get("anycore-release", ""))
                        else:
                            self.errors.append(f"{url}: {response.status_code} {response.text[:200]}")
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.errors.append(f"{url}: {exc!r}")
                    time.sleep(0.05)  # a refused connection must not spin
