"""Releases with their own Python dependencies, data that outlives releases, and services
that cannot reach the control plane.

Everything is offline: the packages are wheels written by the test (tests/wheels.py) and
the node runs with ``--no-index --find-links``. The nodes here run as root (like the
suite) but run their services as the default unprivileged user (``nobody``), so the
read-only release directory and the closed token hold as they would under systemd.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from anycore.release.bundle import remove_tree
from tests.conftest import make_service, wait_for
from tests.wheels import make_wheel, wheel_from_installed

APP = '''
import asyncio, json, os, sys

import greet

STAMP = {stamp!r}

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/slow":
        await asyncio.sleep(3)
    body = {{"greet": greet.VERSION, "file": greet.__file__, "prefix": sys.prefix, "stamp": STAMP}}
    if path == "/data":
        counter = os.path.join(os.environ["ANYCORE_DATA_DIR"], "count")
        count = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
        with open(counter, "w") as f:
            f.write(str(count))
        body["count"] = count
    if path == "/write":
        try:
            open("written.txt", "w").write("lost on the next deploy")
            body["write"] = "written"
        except OSError as exc:
            body["write"] = type(exc).__name__
    if path == "/secrets":
        home = os.environ["NODE_HOME"]
        body["uid"] = os.getuid()
        body["anycore_env"] = sorted(k for k in os.environ if k.startswith(("ANYCORE_", "UV_")))
        for what, probe in (("token", lambda: open(os.path.join(home, "token")).read()),
                            ("listing", lambda: os.listdir(home)),
                            ("nats", lambda: os.listdir(os.path.join(home, "nats")))):
            try:
                body[what] = repr(probe())
            except OSError as exc:
                body[what] = type(exc).__name__
    await send({{"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}})
    await send({{"type": "http.response.body", "body": json.dumps(body).encode()}})
'''


@pytest.fixture
def open_home() -> Iterator[Path]:
    """A home whose parents the service user may traverse (pytest's tmp dirs are 0700)."""
    root = Path(tempfile.mkdtemp(prefix="anycore-env-test-"))
    os.chmod(root, 0o711)
    yield root / "home"
    remove_tree(root)


@pytest.fixture(autouse=True)
def reachable_interpreter() -> Iterator[None]:
    """The node's interpreter, its virtualenv and anycore's source (an editable install)
    must be readable by the service user. Where they live under a 0700 directory (pyenv in
    /root, a checkout cloned into a mkdtemp directory), grant traversal (o+x, not listing)
    for the test."""
    import anycore

    changed = []
    parents = {p for path in (sys.base_prefix, sys.prefix, anycore.__file__) for p in Path(path).resolve().parents}
    for parent in sorted(parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            os.chmod(parent, mode | stat.S_IXOTH)
            changed.append((parent, mode))
    yield
    for parent, mode in changed:
        os.chmod(parent, stat.S_IMODE(mode))


def service(root: Path, stamp: str, requirements: str, home: Path) -> Path:
    directory = make_service(root / stamp, "svc", APP.format(stamp=stamp),
                             f'name = "svc"\nworkers = 1\ndrain_timeout = 10\nenv = {{ NODE_HOME = "{home}" }}\n')
    (directory / "requirements.txt").write_text(requirements)
    return directory


def get(node, path: str = "/") -> dict:
    response = httpx.get(node.url + path, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def env_phase(output: str) -> str:
    return "\n".join(line for line in output.splitlines() if line.strip().startswith("env"))


def test_dependencies_per_release_side_by_side_reused_and_refused_under_load(nodes, tmp_path, open_home):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "greet", "1.0")
    make_wheel(wheels, "greet", "2.0")
    make_wheel(wheels, "oldspec", "1.0", requires=("msgspec<0.18",))  # anycore's runtime needs msgspec 0.2x
    v1 = service(tmp_path, "v1", "greet==1.0\n", open_home)
    node = nodes.start(v1, home=open_home, args=("--no-index", "--find-links", str(wheels)),
                       env={"ANYCORE_USER": ""}, timeout=120)

    first = get(node)
    assert first["greet"] == "1.0" and first["prefix"].startswith(str(open_home / "envs")), first
    # anycore's own environment never gains the package.
    assert subprocess.run([sys.executable, "-c", "import greet"], capture_output=True).returncode != 0

    # v2 pins another version: during the drain both run side by side.
    v2 = service(tmp_path, "v2", "greet==2.0\n", open_home)
    slow: dict = {}
    holder = threading.Thread(target=lambda: slow.update(get(node, "/slow")))
    holder.start()
    wait_for(lambda: node.service("svc")["inflight"] >= 1, 10, what="the slow request on v1")
    deploy = node.cli("deploy", str(v2), timeout=120)
    assert deploy.returncode == 0, deploy.stdout + deploy.stderr
    assert "built environment" in env_phase(deploy.stdout) and "greet==2.0" in deploy.stdout, deploy.stdout
    assert get(node)["greet"] == "2.0"
    v2_prefix = get(node)["prefix"]
    holder.join(30)
    assert slow["greet"] == "1.0" and slow["stamp"] == "v1", slow  # finished on v1's environment
    assert slow["prefix"] != get(node)["prefix"]

    # Same requirements, new code: the environment is reused and the phase says so.
    v3 = service(tmp_path, "v3", "greet==2.0\n", open_home)
    deploy = node.cli("deploy", str(v3), timeout=120)
    assert deploy.returncode == 0, deploy.stderr
    assert "cache hit" in env_phase(deploy.stdout), deploy.stdout
    assert get(node)["stamp"] == "v3" and get(node)["prefix"] == v2_prefix

    # The CLI shows each release's environment, which environment each worker runs, the packages.
    listing = json.loads(node.cli("releases", "svc", "--json").stdout)
    envs = {r["id"]: r["env"] for r in listing["releases"]}
    assert all(e and e["packages"] == 1 and e["size_mib"] > 0 for e in envs.values()), envs
    assert len({e["hash"] for e in envs.values()}) == 2  # v2 and v3 share one
    live = node.service("svc")["live"]
    assert live["env"] == envs[live["release"]]["hash"] and live["workers"]
    assert all(w["env"] == live["env"] for w in live["workers"])
    # Its zygote was forked from the template of its environment's interpreter.
    with open(f"/proc/{live['zygote_pid']}/stat") as f:
        template_pid = int(f.read().rsplit(")", 1)[1].split()[1])
    with open(f"/proc/{template_pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[0].decode() == str(open_home / "envs" / live["env"] / "bin" / "python")
    table = node.cli("releases", "svc")
    assert table.returncode == 0 and live["env"] in table.stdout, table.stdout + table.stderr
    assert node.cli("ps").returncode == 0
    shown = node.cli("env", "svc")
    assert shown.returncode == 0 and "greet==2.0" in shown.stdout and live["env"] in shown.stdout, shown.stdout

    # An unresolvable and a conflicting requirement abort in the env phase with uv's
    # explanation, under load, with zero errors on the old release.
    errors: list[str] = []
    served = [0]
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=node.url, timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.get("/")
                    if response.status_code != 200 or response.json()["stamp"] != "v3":
                        errors.append(f"{response.status_code} {response.text[:80]}")
                    served[0] += 1
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: served[0] >= 20, 20, what="load")
        for stamp, requirement, explanation in (("bad1", "greet>=3\n", "only greet<=2.0 is available"),
                                                ("bad2", "oldspec\n", "msgspec<0.18 and msgspec==")):
            bad = node.cli("deploy", str(service(tmp_path, stamp, requirement, open_home)), timeout=120)
            assert bad.returncode == 1, bad.stdout + bad.stderr
            assert "failed in phase env" in bad.stderr and explanation in bad.stderr, bad.stderr
            assert "keeps serving" in bad.stderr
        before = served[0]
        wait_for(lambda: served[0] >= before + 20, 20, what="load after the failed deploys")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert errors == [], errors[:5]
    assert get(node)["stamp"] == "v3"


def test_data_dir_survives_deploys_and_rollback_release_dir_is_read_only_and_secrets_are_closed(nodes, tmp_path, open_home):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "greet", "1.0")
    dirs = [service(tmp_path, f"d{i}", "greet==1.0\n", open_home) for i in range(3)]
    node = nodes.start(dirs[0], home=open_home, args=("--no-index", "--find-links", str(wheels)),
                       env={"ANYCORE_USER": ""}, timeout=120)
    counts = [get(node, "/data")["count"]]
    for directory in (dirs[1], dirs[2], dirs[0]):  # 3 deploys, then a rollback
        result = node.cli("deploy", str(directory), timeout=120)
        assert result.returncode == 0, result.stderr
        counts.append(get(node, "/data")["count"])
    result = node.cli("rollback", "svc", timeout=120)
    assert result.returncode == 0, result.stderr
    counts.append(get(node, "/data")["count"])
    assert counts == list(range(1, len(counts) + 1)), counts  # every write survived
    data = open_home / "data" / "svc"
    assert (data / "count").read_text() == str(counts[-1])

    # The release directory is read-only for the service: the write fails loudly.
    assert get(node, "/write")["write"] == "PermissionError"
    release_dir = Path(node.service("svc")["directory"])
    assert not (release_dir / "written.txt").exists()
    assert list(release_dir.glob("__pycache__/app.*.pyc")), "byte-compiled at unpack"

    # The service runs as nobody, with no ANYCORE_* secret, and cannot read the token.
    seen = get(node, "/secrets")
    assert seen["uid"] != 0 and seen["uid"] == data.stat().st_uid
    assert seen["anycore_env"] == ["ANYCORE_DATA_DIR", "ANYCORE_RELEASE", "ANYCORE_SERVICE"], seen
    assert seen["token"] == "PermissionError" and seen["listing"] == "PermissionError", seen
    assert seen["nats"] == "PermissionError", seen
    token = (open_home / "token").read_text().strip()
    assert token and token not in json.dumps(seen)
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700


FLASK_APP = '''
from flask import Flask, jsonify

app = Flask(__name__)

@app.get("/")
def index():
    import flask
    return jsonify(flask=flask.__file__)
'''

DJANGO_SETTINGS = '''
import os

SECRET_KEY = "test-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "mysite.urls"
INSTALLED_APPS = []
USE_TZ = True
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.path.join(os.environ["ANYCORE_DATA_DIR"], "db.sqlite3")}}
'''

DJANGO_URLS = '''
import django
from django.db import connection
from django.http import JsonResponse
from django.urls import path

def visits(request):
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS visit (id INTEGER PRIMARY KEY)")
        cursor.execute("INSERT INTO visit DEFAULT VALUES")
        cursor.execute("SELECT COUNT(*) FROM visit")
        count = cursor.fetchone()[0]
    return JsonResponse({"visits": count, "django": django.__file__})

urlpatterns = [path("", visits)]
'''

DJANGO_WSGI = '''
import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()
'''


def test_flask_and_django_with_declared_requirements(nodes, tmp_path, open_home):
    pytest.importorskip("django")
    # Offline wheels of Flask, Django and their dependencies, packed from the test venv's copies.
    wheels = tmp_path / "wheels"
    for name in ("flask", "werkzeug", "jinja2", "itsdangerous", "click", "blinker", "markupsafe",
                 "django", "asgiref", "sqlparse"):
        wheel_from_installed(wheels, name)
    flask_dir = make_service(tmp_path, "flasksvc", FLASK_APP, 'routes = ["/flask"]\n')
    (flask_dir / "requirements.txt").write_text("flask>=3\n")
    django_dir = tmp_path / "djangosvc"
    (django_dir / "mysite").mkdir(parents=True)
    (django_dir / "mysite" / "__init__.py").write_text("")
    (django_dir / "mysite" / "settings.py").write_text(DJANGO_SETTINGS)
    (django_dir / "mysite" / "urls.py").write_text(DJANGO_URLS)
    (django_dir / "mysite" / "wsgi.py").write_text(DJANGO_WSGI)
    (django_dir / "requirements.txt").write_text("django>=4\n")
    (django_dir / "anycore.toml").write_text('entry = "mysite.wsgi:application"\nworkers = 1\n')
    node = nodes.start(flask_dir, django_dir, home=open_home, args=("--no-index", "--find-links", str(wheels)),
                       env={"ANYCORE_USER": ""}, timeout=240)
    flask = httpx.get(node.url + "/flask/", timeout=30)
    assert flask.status_code == 200, flask.text
    assert flask.json()["flask"].startswith(str(open_home / "envs")), flask.text  # its own environment, not the node's
    first = httpx.get(node.url + "/", timeout=30).json()
    assert first["django"].startswith(str(open_home / "envs")), first
    # The SQLite file is in the data directory: it outlives a redeploy.
    (django_dir / "mysite" / "urls.py").write_text(DJANGO_URLS + "\n# v2\n")
    result = node.cli("deploy", str(django_dir), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "cache hit" in env_phase(result.stdout), result.stdout
    assert httpx.get(node.url + "/", timeout=30).json()["visits"] == first["visits"] + 1
    assert (open_home / "data" / "djangosvc" / "db.sqlite3").exists()


def test_index_credentials_never_reach_the_deploy_output_or_the_log(nodes, tmp_path):
    import socket

    with socket.socket() as s:  # a port nothing listens on: the index is unreachable at once
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = nodes.start(env={"ANYCORE_INDEX_URL": f"http://alice:s3cret-pw@127.0.0.1:{port}/simple",
                            "UV_HTTP_RETRIES": "0"}, services=0)
    directory = make_service(tmp_path, "creds", APP.format(stamp="c"), 'name = "creds"\n')
    (directory / "requirements.txt").write_text("greet==1.0\n")
    result = node.cli("deploy", str(directory), timeout=120)
    assert result.returncode == 1 and "failed in phase env" in result.stderr, result.stdout + result.stderr
    assert f"127.0.0.1:{port}" in result.stderr, result.stderr  # uv's message names the index, without its password
    logs = node.cli("logs").stdout
    for text in (result.stdout, result.stderr, node.output, logs):
        assert "s3cret-pw" not in text


def test_an_environment_is_removed_with_the_last_release_that_uses_it(nodes, tmp_path):
    wheels = tmp_path / "wheels"
    make_wheel(wheels, "greet", "1.0")
    make_wheel(wheels, "greet", "2.0")
    node = nodes.start(service(tmp_path, "g0", "greet==1.0\n", tmp_path), args=("--no-index", "--find-links", str(wheels)),
                       timeout=120)
    first = node.service("svc")["live"]["env"]
    envs = node.home / "envs"
    for i in range(1, 11):  # 10 more releases on another environment: the first falls out of the kept 10
        result = node.cli("deploy", str(service(tmp_path, f"g{i}", "greet==2.0\n", tmp_path)), timeout=120)
        assert result.returncode == 0, result.stderr
        if i < 10:
            assert (envs / first).is_dir(), f"removed while release 0 is still kept (after deploy {i})"
    second = node.service("svc")["live"]["env"]
    assert second != first and (envs / second).is_dir()
    wait_for(lambda: not (envs / first).exists(), 10, what="the first environment to be collected")
    assert "event=env.collected" in node.output
