"""Full disks (issue 12, item 5): a deploy onto a full disk fails with one line, the node
keeps serving, and once space is free the next deploy succeeds: no restart of the node.

The disk is real: $ANYCORE_HOME is a 48 MiB tmpfs (we run as root in CI), so the
nats-server's JetStream files and the release cache hit a true ENOSPC."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from tests.conftest import HELLO, make_service, tmpfs_disk


@pytest.fixture
def small_disk(tmp_path: Path):
    with tmpfs_disk(tmp_path, "48m") as mount:
        yield mount


def fill(disk: Path, leave_kib: int) -> Path:
    filler = disk / "filler"
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize // 1024
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave_kib) * 1024)
    return filler


def test_deploy_onto_a_full_disk_fails_in_one_line_and_a_later_deploy_succeeds(small_disk, nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "shop", HELLO), home=small_disk / "home")
    try:
        big = make_service(tmp_path, "big", HELLO.replace("hello", "big"), 'routes = ["/big"]\n')
        (big / "blob.bin").write_bytes(os.urandom(4 << 20))  # incompressible: 4 MiB in JetStream and in the cache
        filler = fill(small_disk, leave_kib=1000)

        failed = node.cli("deploy", str(big))
        assert failed.returncode != 0
        lines = [line for line in failed.stderr.splitlines() if line.strip()]
        assert "Traceback" not in failed.stderr and "internal error" not in failed.stderr, failed.stderr
        assert len(lines) == 1 and "free some disk space" in lines[0], failed.stderr
        assert httpx.get(node.url + "/").text == "hello"  # the node keeps serving
        assert node.ps()["services"][0]["name"] == "shop"
        assert not list((small_disk / "home" / "releases").glob("big@*"))  # no half-written release in the cache

        filler.unlink()
        deployed = node.cli("deploy", str(big))
        assert deployed.returncode == 0, deployed.stdout + deployed.stderr
        assert httpx.get(node.url + "/big").text == "big"
        assert list((small_disk / "home" / "releases").glob("big@*"))
    finally:
        node.stop()
