"""Release identity and bundles (anycore.release.bundle), on real files in a temp dir.

``release_id`` is the content hash of the code and the config: stable, changed by any
code or config change, blind to ``__pycache__``, ``.git`` and ``.anycoreignore`` patterns.
A bundle packed from a tree and unpacked elsewhere hashes to the same release id (the
code store checks exactly that before it runs a fetched release).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import msgspec
import pytest

from anycore.config import ServiceConfig
from anycore.release.bundle import iter_files, pack, release_id, unpack

CONFIG = ServiceConfig(name="shop")


def make_tree(root: Path) -> Path:
    d = root / "shop"
    (d / "pkg").mkdir(parents=True)
    (d / "app.py").write_text("from pkg.views import app\n")
    (d / "pkg" / "__init__.py").write_text("")
    (d / "pkg" / "views.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (d / "static").mkdir()
    (d / "static" / "logo.bin").write_bytes(bytes(range(256)) * 10)
    (d / "run.sh").write_text("#!/bin/sh\nexit 0\n")
    (d / "run.sh").chmod(0o755)
    return d


def test_release_id_is_stable_and_names_the_service(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    rid = release_id(str(d), CONFIG)
    assert rid == release_id(str(d), CONFIG)
    name, digest = rid.split("@")
    assert name == "shop" and len(digest) == 12 and int(digest, 16) >= 0


def test_the_same_tree_elsewhere_has_the_same_id(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    copy = tmp_path / "elsewhere" / "other-name"
    shutil.copytree(d, copy)
    assert release_id(str(copy), CONFIG) == release_id(str(d), CONFIG)


@pytest.mark.parametrize("change", ["edit", "add", "remove", "rename", "chmod"])
def test_release_id_changes_with_the_code(tmp_path: Path, change: str) -> None:
    d = make_tree(tmp_path)
    before = release_id(str(d), CONFIG)
    if change == "edit":
        (d / "pkg" / "views.py").write_text("async def app(scope, receive, send):\n    return None\n")
    elif change == "add":
        (d / "pkg" / "new.py").write_text("")
    elif change == "remove":
        (d / "static" / "logo.bin").unlink()
    elif change == "rename":
        (d / "pkg" / "views.py").rename(d / "pkg" / "views2.py")
    else:
        (d / "app.py").chmod(0o755)
    assert release_id(str(d), CONFIG) != before


def test_release_id_changes_with_the_config(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    ids = {
        release_id(str(d), CONFIG),
        release_id(str(d), ServiceConfig(name="shop", slots=4)),
        release_id(str(d), ServiceConfig(name="shop", env={"DEBUG": "1"})),
        release_id(str(d), ServiceConfig(name="shop", routes=["/api"])),
    }
    assert len(ids) == 4
    other = release_id(str(d), ServiceConfig(name="store"))
    assert other.startswith("store@") and other.split("@")[1] != release_id(str(d), CONFIG).split("@")[1]


def test_pycache_git_venvs_and_bytecode_are_ignored(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    before = release_id(str(d), CONFIG)
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\x00" * 64)
    (d / "pkg" / "__pycache__").mkdir()
    (d / "pkg" / "__pycache__" / "views.cpython-311.pyc").write_bytes(b"\x01" * 64)
    (d / "pkg" / "stale.pyc").write_bytes(b"\x02")
    (d / ".git" / "objects").mkdir(parents=True)
    (d / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (d / ".venv" / "lib").mkdir(parents=True)
    (d / ".venv" / "lib" / "x.py").write_text("x = 1\n")
    (d / "myenv").mkdir()
    (d / "myenv" / "pyvenv.cfg").write_text("home = /usr\n")  # a virtualenv under any name
    (d / "myenv" / "y.py").write_text("y = 1\n")
    assert release_id(str(d), CONFIG) == before
    assert not any(part in ("__pycache__", ".git", ".venv", "myenv") for f in iter_files(str(d)) for part in f.parts)


def test_anycoreignore_patterns_are_ignored(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    (d / ".anycoreignore").write_text("# local stuff\n*.log\ndata\nstatic/*.tmp\n\n")
    before = release_id(str(d), CONFIG)
    (d / "server.log").write_text("noise\n")
    (d / "pkg" / "debug.log").write_text("noise\n")
    (d / "data" / "big").mkdir(parents=True)
    (d / "data" / "big" / "dump.sql").write_text("-- 1 GB\n")
    (d / "static" / "upload.tmp").write_bytes(b"partial")
    assert release_id(str(d), CONFIG) == before
    # and a file not matched is still code
    (d / "static" / "upload.png").write_bytes(b"png")
    assert release_id(str(d), CONFIG) != before


def test_pack_unpack_roundtrip_gives_the_same_release_id(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    (d / "__pycache__").mkdir()
    (d / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\x00")
    (d / "pkg" / "link.py").symlink_to("views.py")  # a symlink inside the tree
    rid = release_id(str(d), CONFIG)
    dest = tmp_path / "cache" / rid
    unpack(pack(str(d)), str(dest))
    assert release_id(str(dest), CONFIG) == rid
    assert (dest / "pkg" / "views.py").read_text() == (d / "pkg" / "views.py").read_text()
    assert os.readlink(dest / "pkg" / "link.py") == "views.py"
    assert os.access(dest / "run.sh", os.X_OK)
    assert not (dest / "__pycache__").exists()
    assert sorted(iter_files(str(dest))) == sorted(iter_files(str(d)))


@pytest.mark.parametrize("mode", [0o644, 0o664, 0o666, 0o600, 0o444, 0o755, 0o775, 0o700])
def test_roundtrip_keeps_the_release_id_whatever_the_file_modes(tmp_path: Path, mode: int) -> None:
    """Regression: files written under umask 002 (group-writable, 0o664) unpacked as 0o644
    (tarfile's "data" filter drops group/other write), so the fetched bundle hashed to a
    different id and the code store refused it."""
    d = make_tree(tmp_path)
    (d / "pkg" / "views.py").chmod(mode)
    rid = release_id(str(d), CONFIG)
    dest = tmp_path / "unpacked"
    unpack(pack(str(d)), str(dest))
    assert release_id(str(dest), CONFIG) == rid
    assert os.access(dest / "pkg" / "views.py", os.X_OK) == bool(mode & 0o100)


def test_the_executable_bit_is_part_of_the_id(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    before = release_id(str(d), CONFIG)
    (d / "run.sh").chmod(0o644)
    assert release_id(str(d), CONFIG) != before


def test_config_is_hashed_as_its_canonical_encoding(tmp_path: Path) -> None:
    d = make_tree(tmp_path)
    # the same config built two ways is the same config
    decoded = msgspec.json.decode(msgspec.json.encode(ServiceConfig(name="shop", slots=4)), type=ServiceConfig)
    assert release_id(str(d), decoded) == release_id(str(d), ServiceConfig(name="shop", slots=4))
