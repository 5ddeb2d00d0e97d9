"""Pure parts of node ownership: the home lock, recognising a stale nats-server of a home,
resolving `rollback --to`, and the release cache under a full disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from anycore.cluster.embedded import serves_home
from anycore.errors import ConfigError, NodeRunning, StorageError
from anycore.node.deployer import resolve_release
from anycore.node.lock import NodeLock, held, owner
from tests.conftest import tmpfs_disk


def test_the_lock_is_exclusive_and_names_the_owner(tmp_path):
    first = NodeLock(tmp_path)
    first.acquire()
    (tmp_path / "node.json").write_text(f'{{"pid": {os.getpid()}, "gateway": "http://127.0.0.1:9"}}')
    assert held(tmp_path)
    # flock is per open file: another process (not this one's descriptor) is refused.
    probe = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from anycore.node.lock import NodeLock\n"
                            "try:\n NodeLock(Path(sys.argv[1])).acquire()\nexcept Exception as e:\n print(e)",
                            str(tmp_path)], capture_output=True, text=True)
    assert f"pid {os.getpid()}, serving on http://127.0.0.1:9" in probe.stdout
    assert owner(tmp_path) == (os.getpid(), "http://127.0.0.1:9")
    first.release()
    assert not held(tmp_path)


def test_a_stale_node_json_is_not_taken_for_the_owner(tmp_path):
    lock = NodeLock(tmp_path)
    lock.acquire()
    (tmp_path / "node.json").write_text('{"pid": 1, "gateway": "http://old"}')  # left by a killed node
    assert owner(tmp_path) == (os.getpid(), "")
    assert "still starting" in str(NodeRunning(tmp_path, *owner(tmp_path)))
    lock.release()


def test_a_nats_server_counts_as_ours_only_if_it_names_our_config(tmp_path):
    conf = tmp_path / "home" / "nats.conf"
    proc = tmp_path / "proc"
    for pid, argv in {"10": ["/venv/bin/nats-server", "-c", str(conf)], "11": ["/usr/bin/nats-server", "-c", "/other/nats.conf"],
                      "12": ["python", "-c", str(conf)]}.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    assert serves_home(10, conf, proc)
    assert not serves_home(11, conf, proc)  # another home's server
    assert not serves_home(12, conf, proc)  # a recycled pid that is not a nats-server
    assert not serves_home(13, conf, proc)  # gone


def test_rollback_to_resolves_full_ids_and_unique_prefixes():
    kept = ["shop@aaaa1111", "shop@aaaa2222", "shop@bbbb3333"]
    assert resolve_release("shop", "shop@bbbb3333", kept) == "shop@bbbb3333"
    assert resolve_release("shop", "bbbb", kept) == "shop@bbbb3333"
    assert resolve_release("shop", "shop@aaaa2", kept) == "shop@aaaa2222"
    with pytest.raises(ConfigError, match="matches several kept releases"):
        resolve_release("shop", "aaaa", kept)
    with pytest.raises(ConfigError, match="'bogus' is not a kept release of service shop"):
        resolve_release("shop", "bogus", kept)
    with pytest.raises(ConfigError, match="belongs to service 'cart'"):
        resolve_release("shop", "cart@1", kept)
    with pytest.raises(ConfigError, match="not a kept release"):
        resolve_release("shop", "", kept)


def test_storage_errors_say_the_cause_and_what_to_do():
    import errno

    error = StorageError.from_os("deploy of shop@1", OSError(errno.ENOSPC, "No space left on device", "/x/y"))
    assert str(error) == "deploy of shop@1 failed: No space left on device (/x/y) — free some disk space, then try again"
    assert "read-only" in str(StorageError("upload", "write /x: read-only file system"))
    assert "dmesg" in str(StorageError.from_os("read", OSError(errno.EIO, "Input/output error")))


@pytest.fixture
def full_disk(tmp_path: Path):
    with tmpfs_disk(tmp_path, "2m") as mount:
        yield mount


def test_the_release_cache_takes_nothing_half_written_on_a_full_disk(full_disk, tmp_path):
    import asyncio

    from anycore.config import load_service
    from anycore.release.bundle import pack, release_id
    from anycore.release.store import CodeStore, ReleaseRecord

    source = tmp_path / "big"
    source.mkdir()
    (source / "app.py").write_text("app = None\n")
    (source / "blob.bin").write_bytes(os.urandom(3 << 20))  # more than the 2 MiB disk holds
    service = load_service(str(source))
    record = ReleaseRecord(id=release_id(str(source), service.config), service=service.config.name,
                           config=service.config, source=str(source))
    data = pack(str(source))

    class Objects:  # the Object Store's side is not under test here: the bundle as it was put
        async def get(self, name: str) -> object:
            return type("Result", (), {"data": data})()

    store = CodeStore(None, full_disk / "releases")  # type: ignore[arg-type]
    store.objects = Objects()
    (full_disk / "releases").mkdir()
    with pytest.raises(StorageError, match="No space left on device"):
        asyncio.run(store.materialize(record))
    assert os.listdir(full_disk / "releases") == []  # no release, no staging left
    assert store.cached(record.id) is None
