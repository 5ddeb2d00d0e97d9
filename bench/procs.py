"""Process trees from /proc: who belongs to a system under test, its CPU and memory, and stopping it all.

Every system is started in a session of its own, but its helpers may start sessions of their
own too (anycore's nats-server and zygote, Ray's daemons): the tree is followed by parent
pid, and a pid is only ever killed if it still has the start time it had when we saw it
(so a recycled pid is never touched).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    start: int  # clock ticks after boot: (pid, start) names one process for good
    cpu_s: float  # user + system


def snapshot() -> dict[int, Proc]:
    procs = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is stat field 3 (state)
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        pid = int(entry.name)
        procs[pid] = Proc(pid, int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return procs


def tree(root: int, procs: dict[int, Proc] | None = None) -> dict[int, Proc]:
    """`root` and all its live descendants."""
    procs = snapshot() if procs is None else procs
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in procs and pid not in found:
            found[pid] = procs[pid]
            frontier += children.get(pid, [])
    return found


def cpu_seconds(procs: dict[int, Proc]) -> float:
    return sum(p.cpu_s for p in procs.values())


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS in MiB from smaps_rollup (USS = Private_Clean + Private_Dirty)."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                fields[parts[0].rstrip(":")] = int(parts[1])
    mib = 1024.0
    return {"rss": fields.get("Rss", 0) / mib, "pss": fields.get("Pss", 0) / mib,
            "uss": (fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)) / mib}


def kill_tree(procs: dict[int, Proc], sig: int = signal.SIGKILL) -> None:
    """Signal every process of a snapshot that is still the same process."""
    alive = snapshot()
    for pid, p in procs.items():
        if pid in alive and alive[pid].start == p.start:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


def wait_gone(procs: dict[int, Proc], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = snapshot()
        if not any(pid in alive and alive[pid].start == p.start for pid, p in procs.items()):
            return True
        time.sleep(0.05)
    return False


def stop_tree(proc: "subprocess.Popen[bytes]") -> None:
    """SIGTERM ``proc`` and give its whole tree 30 s (the process) and 10 s (the rest) to go;
    then SIGKILL what is left of the tree as it was when asked to stop."""
    seen = tree(proc.pid)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    if not wait_gone(seen, 10):
        kill_tree(seen)


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    """Poll ``predicate`` until true; a bench script gives up with the reason past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def stop_all(procs: "list[subprocess.Popen[bytes]]") -> None:
    """SIGTERM every process (newest first), then wait for each, killing what does not exit in 30 s."""
    for proc in reversed(procs):
        proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
