"""L1 — telling an OOM kill from another SIGKILL: the OOM-kill counter of the right memory cgroup.

A worker killed by the kernel's OOM killer dies of SIGKILL like any other; the only trace
is the ``oom_kill`` counter of its memory cgroup. So the counter must be the one of the
cgroup the worker actually lives in, not the root's (inside a container or a systemd
unit the root's counter never moves):

- ``/proc/<pid>/cgroup`` names the process's cgroup per hierarchy: ``0::/a/b`` for cgroup
  v2, ``N:memory:/a/b`` (controllers may be comma-joined) for the v1 memory controller.
- ``/proc/self/mountinfo`` says where each hierarchy is mounted and which part of it the
  mount shows (its *root*: inside a cgroup namespace or a bind mount, the path in
  ``/proc/<pid>/cgroup`` is relative to that root, or already stripped of it).
- v2 keeps the counter in ``<dir>/memory.events`` (hierarchical: it counts the subtree);
  v1 in ``<dir>/memory.oom_control`` (not hierarchical: it counts that cgroup only).

Because v1 is not hierarchical, the supervisor reads the node's cgroup *and* the zygote's
(workers are forked by the zygote and stay in its cgroup unless moved). ``paths`` and
``resolve`` take the /proc root as a parameter so a fake tree can test them.
"""

from __future__ import annotations

from pathlib import Path

PROC = Path("/proc")


def _mounts(proc: Path) -> list[tuple[str, str, str, set[str]]]:
    """(fstype, mount root, mount point, super options) of every cgroup mount."""
    found = []
    try:
        text = (proc / "self" / "mountinfo").read_text()
    except OSError:
        return []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if not sep or len(fields) < 5 or len(tail) < 3 or tail[0] not in ("cgroup", "cgroup2"):
            continue
        found.append((tail[0], fields[3], fields[4], set(tail[2].split(","))))
    return found


def _join(mount_root: str, mount_point: str, cgroup: str) -> Path:
    """The directory of ``cgroup`` (a path of the hierarchy) under a mount showing ``mount_root``."""
    if mount_root != "/" and (cgroup == mount_root or cgroup.startswith(mount_root.rstrip("/") + "/")):
        cgroup = cgroup[len(mount_root.rstrip("/")):]
    return Path(mount_point) / cgroup.lstrip("/")


def resolve(pid: int | str = "self", proc: Path = PROC) -> list[Path]:
    """The files holding ``oom_kill`` for the memory cgroup(s) of ``pid``, those that exist."""
    try:
        lines = (proc / str(pid) / "cgroup").read_text().splitlines()
    except OSError:
        return []
    mounts = _mounts(proc)
    files: list[Path] = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, cgroup = parts
        if hierarchy == "0" and controllers == "":
            candidates = [_join(root, point, cgroup) / "memory.events" for kind, root, point, _ in mounts if kind == "cgroup2"]
        elif "memory" in controllers.split(","):
            candidates = [_join(root, point, cgroup) / "memory.oom_control"
                          for kind, root, point, options in mounts if kind == "cgroup" and "memory" in options]
        else:
            continue
        files += [path for path in candidates if path.is_file()]
    return files


def read_count(path: Path) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


class OomCounter:
    """The sum of the ``oom_kill`` counters of a set of cgroups; ``moved()`` says whether it
    grew since the last look (an OOM kill happened in one of them)."""

    def __init__(self, proc: Path = PROC) -> None:
        self.proc = proc
        self.files: list[Path] = []
        self.last = 0

    def watch(self, pid: int | str) -> None:
        """Add the memory cgroup(s) of ``pid`` (the node: "self"; a zygote: its pid)."""
        for path in resolve(pid, self.proc):
            if path not in self.files:
                self.files.append(path)
        self.last = self.count()

    def count(self) -> int:
        return sum(read_count(path) for path in self.files)

    def moved(self) -> bool:
        now = self.count()
        grew, self.last = now > self.last, now
        return grew

