"""L2 — one node per ``$ANYCORE_HOME``: an ``flock`` on ``$ANYCORE_HOME/node.lock`` held for the
node's whole life.

The kernel releases an flock when the last descriptor of its open file is closed, which
for the node is when its process exits, however it exits (``kill -9`` included): there is
no stale lock to clean up, and "the lock is free" means "the node process is gone". So
``anycore up`` takes it first, before touching anything of the home (the embedded NATS
store, ``node.json``, a stale nats-server), and a second ``up`` leaves all of it alone;
``anycore down`` waits for it to be free to know the node has exited. The descriptor is
close-on-exec and no process forks the node without exec, so no child can keep it held.

The file holds the owner's pid (written after locking, for the message a second ``up``
prints while ``node.json`` does not exist yet).
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from anycore.errors import NodeRunning


def lock_path(home: Path) -> Path:
    return home / "node.lock"


class NodeLock:
    def __init__(self, home: Path) -> None:
        self.home = home
        self.fd = -1

    def acquire(self) -> None:
        """Take the lock or raise NodeRunning naming the running node's pid and URL."""
        fd = os.open(lock_path(self.home), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise NodeRunning(self.home, *owner(self.home)) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def held(home: Path) -> bool:
    """True while a node holds the lock of ``home`` (its process is alive)."""
    try:
        fd = os.open(lock_path(home), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def owner(home: Path) -> tuple[int, str]:
    """The running node's pid (from the lock file) and its gateway URL (from ``node.json``,
    if that record is the same node's and not one left by an earlier node); 0 / "" if unknown."""
    try:
        pid = int(lock_path(home).read_text().strip() or 0)
    except (OSError, ValueError):
        pid = 0
    try:
        record = json.loads((home / "node.json").read_text())
        if int(record.get("pid", 0)) == pid:
            return pid, str(record.get("gateway", ""))
    except (OSError, ValueError, AttributeError):
        pass
    return pid, ""
