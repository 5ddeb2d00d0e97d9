"""The pure parts of release environments and launches: what a release declares, the keys,
uv output parsing, credentials redaction, the user plan, the scrubbed environment, and
garbage collection over a directory tree (no uv, no processes)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from anycore.errors import ReleaseFailed
from anycore.release.bundle import release_id, remove_tree, seal
from anycore.config import ServiceConfig
from anycore.release.env import (EnvInfo, Environments, IndexSettings, declared, env_key, parse_installed, redact,
                                 resolved_set, spec_key)
from anycore.supervisor.launch import Launch, plan_user, secure_home, service_environ


def test_requirements_txt_wins_and_inlines_its_includes(tmp_path):
    (tmp_path / "requirements.txt").write_text("# comment\nflask>=3  # web\n-r more.txt\n\n")
    (tmp_path / "more.txt").write_text("redis==5.0\n")
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["django"]\n')
    assert declared(str(tmp_path)) == "flask>=3\nredis==5.0\n"


def test_pyproject_dependencies_and_none(tmp_path):
    assert declared(str(tmp_path)) == ""
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "x"\ndependencies = ["django>=4", "redis"]\n')
    assert declared(str(tmp_path)) == "django>=4\nredis\n"
    (tmp_path / "pyproject.toml").write_text('[project]\ndependencies = "django"\n')
    with pytest.raises(ReleaseFailed, match="must be a list"):
        declared(str(tmp_path))


def test_keys_change_with_each_input_and_ignore_order_of_the_resolved_set():
    runtime = ["msgspec==0.23.0"]
    base = spec_key("cpython-3.11.7-linux", runtime, "greet==1.0\n")
    assert base == spec_key("cpython-3.11.7-linux", runtime, "greet==1.0\n")
    assert len({base, spec_key("cpython-3.12.1-linux", runtime, "greet==1.0\n"),
                spec_key("cpython-3.11.7-linux", ["msgspec==0.22.0"], "greet==1.0\n"),
                spec_key("cpython-3.11.7-linux", runtime, "greet==2.0\n")}) == 4
    assert env_key("t", runtime, ["a==1", "b==2"]) == env_key("t", runtime, ["b==2", "a==1"])
    assert env_key("t", runtime, ["a==1"]) != env_key("t", runtime, ["a==2"])


def test_uv_output_parsing_leaves_out_the_runtime():
    assert parse_installed("Resolved 2 packages\n + greet==1.0\n + idna==3.7\n - old==1\n") == ["greet==1.0", "idna==3.7"]
    freeze = "-e file:///src/anycore\nGreet==1.0\nmsgspec==0.23.0\nuvloop==0.23.0\nzz @ file:///w/zz.whl\n"
    assert resolved_set(freeze) == ["Greet==1.0", "zz @ file:///w/zz.whl"]


def test_credentials_never_reach_a_message():
    text = "error: Failed to fetch https://alice:s3cret@pypi.example.com/simple/greet/ (401)"
    assert "s3cret" not in redact(text) and "https://***@pypi.example.com/simple/greet/" in redact(text)
    index = IndexSettings("https://u:p@idx/simple", ("https://extra/simple",), ("/w1", "/w2"), True)
    assert index.uv_env() == {"UV_DEFAULT_INDEX": "https://u:p@idx/simple", "UV_INDEX": "https://extra/simple",
                              "UV_FIND_LINKS": "/w1,/w2", "UV_NO_INDEX": "1"}


def test_the_user_plan():
    assert plan_user("", "nobody", euid=0) == ("nobody", "")
    assert plan_user("www-data", "nobody", euid=0) == ("www-data", "")
    assert plan_user("", "", euid=0) == ("nobody", "")
    assert plan_user("", "nobody", euid=1000) == ("", "")  # a non-root node cannot switch: services run as it
    user, why = plan_user("www-data", "nobody", euid=1000)
    assert user == "" and "ignored" in why
    with pytest.raises(Exception, match="not a valid user name"):
        ServiceConfig(name="x", user="bad name")


def test_a_service_gets_no_secret_of_the_node():
    base = {"PATH": "/bin", "ANYCORE_TOKEN": "t", "ANYCORE_HOME": "/h", "ANYCORE_NATS": "nats://x", "UV_INDEX_URL": "https://u:p@i"}
    launch = Launch(variables={"ANYCORE_DATA_DIR": "/h/data/svc", "ANYCORE_SERVICE": "svc"})
    env = service_environ(base, {"MODE": "prod"}, launch, "svc@abc")
    assert env == {"PATH": "/bin", "MODE": "prod", "ANYCORE_DATA_DIR": "/h/data/svc", "ANYCORE_SERVICE": "svc",
                   "ANYCORE_RELEASE": "svc@abc"}


def test_secure_home_closes_all_but_what_services_need(tmp_path):
    home = tmp_path / "home"
    for name in ("releases", "envs", "data", "nats", "run"):
        (home / name).mkdir(parents=True)
    (home / "token").write_text("t")
    os.chmod(home / "token", 0o644)
    secure_home(home)
    mode = lambda p: stat.S_IMODE(os.stat(p).st_mode)  # noqa: E731
    assert mode(home) == 0o711
    assert mode(home / "token") == 0o600 and mode(home / "nats") & 0o077 == 0 and mode(home / "run") & 0o077 == 0
    assert mode(home / "releases") == 0o711 and mode(home / "envs") == 0o711


def test_seal_compiles_and_makes_read_only_without_changing_the_release_id(tmp_path):
    code = tmp_path / "code"
    (code / "pkg").mkdir(parents=True)
    (code / "app.py").write_text("x = 1\n")
    (code / "pkg" / "__init__.py").write_text("")
    config = ServiceConfig(name="svc")
    before = release_id(str(code), config)
    seal(str(code))
    assert release_id(str(code), config) == before
    assert list((code / "__pycache__").glob("app.*.pyc"))
    assert all(not os.stat(p).st_mode & 0o222 for p in [code, code / "app.py", code / "pkg"])
    remove_tree(code)
    assert not code.exists()


def _env(root: Path, name: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "anycore-env.json").write_text(json.dumps(EnvInfo(name, str(root / name), "py", ["a==1"]).__dict__))


def test_collect_removes_environments_no_kept_or_running_release_uses(tmp_path):
    envs = Environments(tmp_path, uv="uv")
    envs._dirs()
    for name in ("e1", "e2", "e3", "e4"):
        _env(tmp_path, name)
    (tmp_path / ".build-x").mkdir()
    for release, env in (("s@1", "e1"), ("s@2", "e2"), ("s@3", "e3")):
        (tmp_path / "uses" / release).write_text(env)
    (tmp_path / "specs" / "k2").write_text("e2")
    removed = envs.collect(kept_releases={"s@1", "s@3"}, in_use={"e4"})
    assert sorted(removed) == ["e2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".build-x", "e1", "e3", "e4", "specs", "uses"]
    assert not (tmp_path / "uses" / "s@2").exists() and not (tmp_path / "specs" / "k2").exists()
    assert envs.used_by("s@1").hash == "e1" and envs.used_by("s@2") is None  # type: ignore[union-attr]


UV_LOCK = '''
version = 1
requires-python = ">=3.11"

[[package]]
name = "shop"
version = "0.1.0"
source = { virtual = "." }
dependencies = [
    { name = "flask" },
    { name = "uvicorn", extra = ["standard"] },
]

[package.dev-dependencies]
dev = [{ name = "pytest" }]

[[package]]
name = "flask"
version = "3.0.3"
source = { registry = "https://pypi.org/simple" }
dependencies = [{ name = "click" }, { name = "colorama", marker = "sys_platform == 'win32'" }]

[[package]]
name = "click"
version = "8.1.7"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "colorama"
version = "0.4.6"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "uvicorn"
version = "0.30.1"
source = { registry = "https://pypi.org/simple" }

[package.optional-dependencies]
standard = [{ name = "httptools" }]

[[package]]
name = "httptools"
version = "0.6.1"
source = { registry = "https://pypi.org/simple" }

[[package]]
name = "pytest"
version = "8.2.0"
source = { registry = "https://pypi.org/simple" }
'''


def test_a_uv_lock_gives_the_pinned_closure_without_dev_groups(tmp_path):
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "shop"\ndependencies = ["flask", "uvicorn[standard]"]\n')
    (tmp_path / "uv.lock").write_text(UV_LOCK)
    assert declared(str(tmp_path)) == ("click==8.1.7\ncolorama==0.4.6 ; sys_platform == 'win32'\nflask==3.0.3\n"
                                       "httptools==0.6.1\nuvicorn==0.30.1\n")
    # A package needed under a marker on one path and always on another is always needed,
    # whichever path the walk takes first; two conditional paths are OR-ed.
    always = UV_LOCK.replace('name = "click"\nversion = "8.1.7"\nsource = { registry = "https://pypi.org/simple" }',
                             'name = "click"\nversion = "8.1.7"\nsource = { registry = "https://pypi.org/simple" }\n'
                             'dependencies = [{ name = "colorama" }]')
    (tmp_path / "uv.lock").write_text(always)
    assert "colorama==0.4.6\n" in declared(str(tmp_path))
    both = UV_LOCK.replace('[package.optional-dependencies]\nstandard = [{ name = "httptools" }]',
                           '[package.optional-dependencies]\nstandard = [{ name = "httptools" }, '
                           '{ name = "colorama", marker = "os_name == \'nt\'" }]')
    (tmp_path / "uv.lock").write_text(both)
    assert "colorama==0.4.6 ; (os_name == 'nt') or (sys_platform == 'win32')\n" in declared(str(tmp_path))


def test_reachable_checks_the_bit_that_applies_to_the_service_user():
    import tempfile

    from anycore.errors import ConfigError
    from anycore.supervisor.launch import check_reachable

    root = Path(tempfile.mkdtemp())  # under /tmp: pytest's own tmp dirs are 0700
    os.chmod(root, 0o711)
    closed = root / "closed"
    (closed / "home").mkdir(parents=True)
    os.chmod(closed, 0o750)
    owner = os.stat(closed)
    check_reachable(closed / "home", "owner", owner.st_uid, None)  # u+x applies
    check_reachable(closed / "home", "group", 65534, owner.st_gid)  # g+x applies
    with pytest.raises(ConfigError, match=f"chmod o\\+x {closed}"):
        check_reachable(closed / "home", "nobody", 65534, 65534)
    remove_tree(root)


def _fake_uv(tmp_path: Path, script: str) -> str:
    """A stand-in for the uv binary: a real executable, so the real subprocess path runs."""
    path = tmp_path / "fake-uv"
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_uv_runs_without_the_nodes_secrets_and_a_full_disk_is_a_storage_error(tmp_path, monkeypatch):
    import asyncio

    from anycore.errors import StorageError

    monkeypatch.setenv("ANYCORE_TOKEN", "s3cret")
    seen = tmp_path / "env.txt"
    uv = _fake_uv(tmp_path, f'env > {seen}\necho "error: failed to write to file: No space left on device (os error 28)" >&2\nexit 2\n')
    envs = Environments(tmp_path / "envs", uv=uv)
    with pytest.raises(StorageError) as raised:
        asyncio.run(envs._uv_run("svc@1", ["pip", "install"], str(tmp_path)))
    assert "free some disk space" in str(raised.value) and "os error 28" in str(raised.value)
    assert "s3cret" not in seen.read_text() and "ANYCORE_TOKEN" not in seen.read_text()
    # Anything else that fails is the requirements' (or the index's) failure, with uv's words.
    uv = _fake_uv(tmp_path, 'echo "No solution found when resolving dependencies" >&2\nexit 1\n')
    with pytest.raises(ReleaseFailed) as raised:
        asyncio.run(Environments(tmp_path / "envs", uv=uv)._uv_run("svc@1", ["pip", "install"], str(tmp_path)))
    assert "No solution found" in str(raised.value) and not isinstance(raised.value, StorageError)


def test_builds_left_by_a_killed_node_are_removed_when_the_next_one_starts(tmp_path):
    root = tmp_path / "envs"
    (root / ".build-dead1234" / "lib").mkdir(parents=True)
    (root / "0123abcd").mkdir()
    Environments(root)
    assert sorted(p.name for p in root.iterdir()) == ["0123abcd"]


def test_only_a_refusing_disk_is_a_storage_error():
    import errno

    from anycore.errors import StorageError

    full = StorageError.of_disk("deploy of svc@1", OSError(errno.ENOSPC, "No space left on device"))
    assert full is not None and "free some disk space" in str(full)
    assert StorageError.of_disk("deploy of svc@1", BrokenPipeError(errno.EPIPE, "Broken pipe")) is None
    assert StorageError.of_disk("deploy of svc@1", PermissionError(errno.EACCES, "Permission denied")) is None


def test_a_collection_keeps_the_environment_a_deploy_is_between_finding_and_recording(tmp_path):
    envs = Environments(tmp_path, uv="uv")
    envs._dirs()
    for name in ("e8", "e9"):
        _env(tmp_path, name)
    (tmp_path / "specs" / "k9").write_text("e9")
    envs._ensuring["k9"] += 1  # its deploy found (or built) e9 and has not written uses/ yet
    assert envs.retire_unused(kept_releases=set(), in_use=set()) == ["e8"]
    assert (tmp_path / "e9").is_dir() and not (tmp_path / "e8").exists()
    assert [p.name.startswith(".trash-e8-") for p in tmp_path.iterdir() if p.name.startswith(".")] == [True]
    envs.purge()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
