"""Release identity: ``name@hash12`` is a pure function of the service's code and config.
The same tree gives the same id anywhere; any change to code, file mode or config gives a
new one; caches, VCS data, virtualenvs and ``.anycoreignore`` patterns do not count."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from anycore.config import ServiceConfig
from anycore.release.bundle import iter_files, pack, release_id, unpack

CONFIG = ServiceConfig(name="shop")


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "shop"
    (root / "pkg").mkdir(parents=True)
    (root / "app.py").write_text("from pkg.views import app\n")
    (root / "pkg" / "__init__.py").write_text("")
    (root / "pkg" / "views.py").write_text("async def app(scope, receive, send):\n    pass\n")
    (root / "static").mkdir()
    (root / "static" / "logo.bin").write_bytes(bytes(range(256)))
    return root


def rid(root: Path, config: ServiceConfig = CONFIG) -> str:
    return release_id(str(root), config)


def test_release_id_is_name_at_12_hex_digits(tree: Path) -> None:
    assert re.fullmatch(r"shop@[0-9a-f]{12}", rid(tree))


def test_release_id_is_stable_for_the_same_tree(tree: Path, tmp_path: Path) -> None:
    first = rid(tree)
    assert rid(tree) == first
    copy = tmp_path / "elsewhere" / "copy"
    shutil.copytree(tree, copy)
    assert rid(copy) == first  # relative paths: where the tree lives does not matter
    os.utime(copy / "app.py", (1, 1))
    assert rid(copy) == first  # nor do timestamps


@pytest.mark.parametrize(
    "change",
    [
        lambda root: (root / "pkg" / "views.py").write_text("async def app(scope, receive, send):\n    pass  \n"),
        lambda root: (root / "static" / "logo.bin").write_bytes(bytes(range(255))),
        lambda root: (root / "pkg" / "models.py").write_text(""),
        lambda root: (root / "pkg" / "views.py").rename(root / "pkg" / "view.py"),
        lambda root: (root / "app.py").unlink(),
        lambda root: (root / "empty.txt").write_text(""),
        lambda root: os.chmod(root / "app.py", 0o755),
        lambda root: os.symlink("app.py", root / "main.py"),
    ],
    ids=["edit", "edit-binary", "add", "rename", "delete", "add-empty", "chmod", "symlink"],
)
def test_release_id_changes_with_the_code(tree: Path, change) -> None:  # type: ignore[no-untyped-def]
    before = rid(tree)
    change(tree)
    assert rid(tree) != before


def test_moving_bytes_between_files_changes_the_id(tree: Path) -> None:
    (tree / "a").write_text("xy")
    (tree / "b").write_text("z")
    before = rid(tree)
    (tree / "a").write_text("x")
    (tree / "b").write_text("yz")
    assert rid(tree) != before


def test_one_file_holding_the_bytes_of_two_is_a_different_release(tmp_path: Path) -> None:
    # Without framing, file a = "X" followed by file b = "yz" hashed exactly like one file a
    # whose content is "X" + b's header + "yz": two different trees, one release id (and the
    # code store verifies fetched bundles by their release id).
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    (two / "a").write_bytes(b"X")
    (two / "b").write_bytes(b"yz")
    (one / "a").write_bytes(b"X" + b"b\0F%o\0" % ((two / "b").stat().st_mode & 0o777) + b"yz")
    for f in (two / "a", one / "a"):
        os.chmod(f, (two / "b").stat().st_mode & 0o777)
    assert rid(two) != rid(one)
    (two / "c").symlink_to("xy")
    (one / "c").symlink_to("x")
    (one / "y").write_text("")
    assert rid(two) != rid(one)


def test_release_id_changes_with_the_config(tree: Path) -> None:
    base = rid(tree, ServiceConfig(name="shop"))
    assert rid(tree, ServiceConfig(name="shop", slots=4)) != base
    assert rid(tree, ServiceConfig(name="shop", env={"MODE": "prod"})) != base
    assert rid(tree, ServiceConfig(name="shop", routes=["/api"])) != base
    renamed = rid(tree, ServiceConfig(name="store"))
    assert renamed.startswith("store@") and renamed.split("@")[1] != base.split("@")[1]
    assert rid(tree, ServiceConfig(name="shop")) == base


def test_release_id_ignores_caches_vcs_and_virtualenvs(tree: Path) -> None:
    before = rid(tree)
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "app.cpython-311.pyc").write_bytes(b"\x00" * 16)
    (tree / "pkg" / "__pycache__").mkdir()
    (tree / "pkg" / "__pycache__" / "views.cpython-311.pyc").write_bytes(b"\x01" * 16)
    (tree / "pkg" / "stale.pyc").write_bytes(b"\x02")
    (tree / ".git" / "objects").mkdir(parents=True)
    (tree / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (tree / ".venv" / "lib").mkdir(parents=True)
    (tree / ".venv" / "lib" / "site.py").write_text("")
    (tree / "env3").mkdir()  # a virtualenv under any name: it has pyvenv.cfg
    (tree / "env3" / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (tree / "env3" / "x.py").write_text("")
    (tree / ".pytest_cache").mkdir()
    (tree / ".pytest_cache" / "v").write_text("")
    assert rid(tree) == before
    assert all(p.parts[0] not in {"__pycache__", ".git", ".venv", "env3", ".pytest_cache"} for p in iter_files(str(tree)))


def test_release_id_ignores_anycoreignore_patterns(tree: Path) -> None:
    (tree / ".anycoreignore").write_text("# local junk\n*.log\ndata\nstatic/*.tmp\n")
    before = rid(tree)
    (tree / "server.log").write_text("GET / 200\n")
    (tree / "pkg" / "debug.log").write_text("x\n")
    (tree / "data").mkdir()
    (tree / "data" / "big.csv").write_text("1,2,3\n")
    (tree / "static" / "upload.tmp").write_text("partial")
    assert rid(tree) == before
    (tree / "static" / "upload.txt").write_text("kept")  # not matched by any pattern
    assert rid(tree) != before


def test_the_ignore_file_itself_is_part_of_the_release(tree: Path) -> None:
    before = rid(tree)
    (tree / ".anycoreignore").write_text("*.log\n")
    assert rid(tree) != before


def test_pack_is_deterministic_and_unpacks_to_the_same_release(tree: Path, tmp_path: Path) -> None:
    (tree / "__pycache__").mkdir()
    (tree / "__pycache__" / "x.pyc").write_bytes(b"\x00")
    data = pack(str(tree))
    os.utime(tree / "app.py", (12345, 12345))
    assert pack(str(tree)) == data  # mtimes, owners: normalised away
    dest = tmp_path / "unpacked"
    unpack(data, str(dest))
    assert rid(dest) == rid(tree)
    assert not (dest / "__pycache__").exists()
