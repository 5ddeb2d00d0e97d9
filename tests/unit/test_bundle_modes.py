"""Release ids across file modes and config encodings (the rest is in test_bundle.py).

A bundle packed from a tree and unpacked elsewhere must hash to the same release id
whatever the files' modes: the code store checks exactly that before it runs a release.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest

from anycore.config import ServiceConfig
from anycore.release.bundle import pack, release_id, unpack

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
