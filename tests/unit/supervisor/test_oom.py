"""OOM-kill counters are read from the process's own memory cgroup (v1 and v2), over a
fake /proc and /sys tree (the same parsing the supervisor runs against the real ones)."""

from __future__ import annotations

from pathlib import Path

from anycore.supervisor.oom import OomCounter, resolve

V2_MOUNTS = "30 23 0:26 / /SYS/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = ("31 23 0:28 / /SYS/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
             "35 31 0:32 / /SYS/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
             "36 31 0:33 / /SYS/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n")


def tree(tmp_path: Path, mountinfo: str, cgroup: str, pid: str = "self") -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "mountinfo").write_text(mountinfo.replace("/SYS", str(tmp_path / "sys")))
    (proc / pid).mkdir(parents=True, exist_ok=True)
    (proc / pid / "cgroup").write_text(cgroup)
    return proc


def events(directory: Path, name: str, oom_kill: int) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if name == "memory.events":
        path.write_text(f"low 0\nhigh 0\nmax 3\noom 1\noom_kill {oom_kill}\noom_group_kill 0\n")
    else:
        path.write_text(f"oom_kill_disable 0\nunder_oom 0\noom_kill {oom_kill}\n")
    return path


def test_v2_reads_the_node_cgroup_not_the_root(tmp_path):
    proc = tree(tmp_path, V2_MOUNTS, "0::/system.slice/anycore.service\n")
    events(tmp_path / "sys/fs/cgroup", "memory.events", 7)  # the root's: must not be used
    mine = events(tmp_path / "sys/fs/cgroup/system.slice/anycore.service", "memory.events", 0)
    assert resolve("self", proc) == [mine]
    counter = OomCounter(proc)
    counter.watch("self")
    assert not counter.moved()
    events(mine.parent, "memory.events", 1)
    assert counter.moved() and not counter.moved()


def test_v1_reads_the_memory_controller_of_the_node(tmp_path):
    proc = tree(tmp_path, V1_MOUNTS, "9:name=systemd:/docker/abc\n4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    events(tmp_path / "sys/fs/cgroup/memory", "memory.oom_control", 5)
    mine = events(tmp_path / "sys/fs/cgroup/memory/docker/abc", "memory.oom_control", 2)
    assert resolve("self", proc) == [mine]


def test_a_namespaced_mount_root_is_stripped(tmp_path):
    # Inside a cgroup namespace or a bind mount the mount shows /docker/abc as its root.
    mounts = "35 31 0:32 /docker/abc /SYS/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    proc = tree(tmp_path, mounts, "4:memory:/docker/abc/inner\n")
    mine = events(tmp_path / "sys/fs/cgroup/memory/inner", "memory.oom_control", 0)
    assert resolve("self", proc) == [mine]


def test_the_zygote_cgroup_counts_too_and_missing_files_are_skipped(tmp_path):
    proc = tree(tmp_path, V1_MOUNTS, "4:memory:/node\n")
    tree(tmp_path, V1_MOUNTS, "4:memory:/node/workers\n", pid="4242")
    events(tmp_path / "sys/fs/cgroup/memory/node", "memory.oom_control", 0)
    workers = events(tmp_path / "sys/fs/cgroup/memory/node/workers", "memory.oom_control", 0)
    counter = OomCounter(proc)
    counter.watch("self")
    counter.watch(4242)
    assert len(counter.files) == 2
    events(workers.parent, "memory.oom_control", 1)  # v1 is not hierarchical: only the child moves
    assert counter.moved()
    assert resolve(999, proc) == []
