"""L2 — getting the node's stores back after a disk error (ENOSPC, EIO, EROFS, EACCES).

Two stores live under ``$ANYCORE_HOME``: the release cache (ours: a failed unpack leaves no
directory, see ``release/store.py``, so nothing needs repair) and the embedded nats-server's
JetStream files. nats-server keeps a stream's *critical write error* until the server
restarts: once a write to a stream has failed, every later write to that stream fails
with the same error even after space was freed (measured: nats-server 2.15 on a full
tmpfs). So after a storage error the node must restart its nats-server, but only once
the disk takes writes again, or the restart itself fails.

``StorageHealer`` does that: ``failed()`` (a StorageError was seen, by a deploy on the node
or reported by the CLI) starts one background task that writes a probe file of
``PROBE_BYTES`` into the JetStream directory every ``PROBE_INTERVAL`` seconds; the first
probe that succeeds restarts the embedded server (same port, store and token; the node's
client reconnects by itself) and the task ends. ``recover()`` is the CLI's synchronous
version of one round: probe now; StorageError if the disk still refuses, else restart and
wait for the reconnection (bounded). With ``--nats`` the server is not ours: the error
says to fix and restart that server.

The healer sees the node through ``StorageHost`` (its home, embedded server, NATS client
and reconnection count), never the ``Node`` class; its probing task belongs to its
``TaskGroup``.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from anycore.errors import AnycoreError, StorageError
from anycore.log import NodeLog
from anycore.tasks import TaskGroup

if TYPE_CHECKING:
    from anycore.cluster.control import NatsAuth
    from anycore.cluster.embedded import EmbeddedNats

PROBE_BYTES = 1 << 20
PROBE_INTERVAL = 1.0
RECONNECT_BOUND = 10.0


def probe(directory: Path, size: int = PROBE_BYTES) -> None:
    """Write, fsync and remove ``size`` bytes in ``directory``; the disk's OSError if it refuses."""
    path = directory / ".anycore-write-probe"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, b"\0" * size)
            os.fsync(fd)
        finally:
            os.close(fd)
    finally:
        try:
            path.unlink()
        except OSError:
            pass


class StorageHost(Protocol):
    """The node as the healer sees it (implemented by ``node.node.Node``)."""

    @property
    def home(self) -> Path: ...

    @property
    def log(self) -> NodeLog: ...

    @property
    def embedded(self) -> "EmbeddedNats | None": ...  # None with --nats: the server is not ours

    @property
    def auth(self) -> "NatsAuth": ...

    @property
    def nc(self) -> Any: ...

    @property
    def nats_reconnects(self) -> int: ...


class StorageHealer:
    def __init__(self, node: StorageHost) -> None:
        self.node = node
        self.tasks = TaskGroup("storage", on_error=lambda name, exc: node.log.event(
            "node.storage_heal_failed", error=repr(exc)[:300]))
        self.heals = 0
        self._restarting = asyncio.Lock()

    @property
    def healing(self) -> bool:
        return len(self.tasks) > 0

    @property
    def store_dir(self) -> Path:
        return self.node.home / "nats"

    def failed(self, error: StorageError) -> None:
        """A storage error was seen: restart the embedded server as soon as the disk takes writes."""
        if self.node.embedded is None or self.healing or self.tasks.closed:
            return
        self.node.log.event("node.storage_error", error=str(error))
        self.tasks.spawn(self._heal(), "heal")

    async def _heal(self) -> None:
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(None, probe, self.store_dir)
                break
            except OSError:
                await asyncio.sleep(PROBE_INTERVAL)
        await self._restart_nats()

    async def recover(self) -> str:
        """Probe now: StorageError if the disk still refuses writes; else restart the embedded
        server (its streams forget their write errors) and wait until the node is connected."""
        if self.node.embedded is None:
            raise AnycoreError(f"the NATS server at {self.node.auth.url} reported a storage error; fix its disk, "
                               "then restart that server (its streams keep the error until it restarts)")
        try:
            await asyncio.get_running_loop().run_in_executor(None, probe, self.store_dir)
        except OSError as exc:
            error = StorageError.from_os(f"writing to the code store's disk ({self.store_dir})", exc)
            self.failed(error)
            raise error from None
        heals = self.heals
        if self.healing:
            # A heal is under way (probing, or already restarting the server): wait for it
            # rather than cancel it. Cancelled mid-restart, it could leave the old server
            # (and its stream's write error) in place while this call reported it healed.
            await asyncio.wait(list(self.tasks.tasks), timeout=PROBE_INTERVAL + RECONNECT_BOUND + 5)
        if self.heals == heals:  # no heal restarted the server meanwhile: this call does
            self.tasks.cancel()
            await self._restart_nats()
        return f"the embedded nats-server was restarted after a storage error (now {self.node.auth.url})"

    async def _restart_nats(self) -> None:
        async with self._restarting:  # one restart at a time: never two servers' lives interleaved
            await self._restart_once()

    async def _restart_once(self) -> None:
        embedded, nc = self.node.embedded, self.node.nc
        assert embedded is not None
        before = self.node.nats_reconnects
        await embedded.restart()
        self.heals += 1
        loop = asyncio.get_running_loop()
        deadline = loop.time() + RECONNECT_BOUND
        while nc is not None and self.node.nats_reconnects == before and loop.time() < deadline:
            await asyncio.sleep(0.05)
        self.node.log.event("node.storage_healed", nats=self.node.auth.url, connected=nc.is_connected if nc else None)

    async def close(self) -> None:
        await self.tasks.close()
