"""anycore's own WSGI runner (issue 17) on real nodes: streaming both ways, close() on
disconnect, deadlines, hangs, Sessions beside a WSGI app, and Django.

Every WSGI app here runs wrapped in ``wsgiref.validate.validator`` (the service's env sets
``ANYCORE_WSGI_VALIDATE=1``, which the worker honours); each test checks that the
validator was active and raised nothing."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import websockets

from tests.conftest import make_service, wait_for

RAW_APP = """
import hashlib, json, os, time

from anycore import Session

MARKS = os.environ["MARKS"]


def mark(name, text=""):
    with open(os.path.join(MARKS, name), "w") as f:
        f.write(text)


def peak_rss_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])


def text(start_response, body, status="200 OK"):
    body = body.encode() if isinstance(body, str) else body
    start_response(status, [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/env":
        return text(start_response, json.dumps({
            "script_name": environ["SCRIPT_NAME"], "path_info": path, "query": environ["QUERY_STRING"],
            "input": type(environ["wsgi.input"]).__name__, "multithread": environ["wsgi.multithread"],
            "pid": os.getpid()}))
    if path == "/upload":
        before = peak_rss_kib()
        stream, digest, size = environ["wsgi.input"], hashlib.sha256(), 0
        while True:
            chunk = stream.read(65536)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        return text(start_response, json.dumps({"size": size, "sha256": digest.hexdigest(),
                                                "peak_growth_kib": peak_rss_kib() - before}))
    if path == "/chunks":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (b"chunk %05d\\n" % i for i in range(int(environ["QUERY_STRING"])))
    if path == "/endless":
        start_response("200 OK", [("Content-Type", "text/plain")])

        def endless():
            try:
                for i in range(1000):  # bounded: 10 s
                    yield b"tick %d\\n" % i
                    time.sleep(0.01)
                mark("endless-finished")
            finally:
                mark("endless-closed", str(i))
        return endless()
    if path == "/sleep":
        for _ in range(1000):  # bounded: 10 s
            if os.path.exists(os.path.join(MARKS, "wake")):
                break
            time.sleep(0.01)
        mark("sleep-returned")
        return text(start_response, "finally awake")
    if path == "/stuck":
        def handler_stuck_in_a_wsgi_thread():
            time.sleep(60)
        handler_stuck_in_a_wsgi_thread()
    if path == "/boom":
        def handler_that_raises():
            raise ValueError("the app failed on purpose")
        handler_that_raises()
    if path == "/file":
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](open(__file__, "rb"), 100)
    return text(start_response, "no such page", "404 Not Found")


class Echo(Session):
    async def on_message(self, message):
        await self.send(f"echo {message}")
"""


def clean(output: str) -> None:
    assert "AssertionError" not in output and "WSGIWarning" not in output, output[-4000:]


def services(tmp_path: Path, marks: Path) -> tuple[Path, Path]:
    env = f'env = {{ MARKS = "{marks}", ANYCORE_WSGI_VALIDATE = "1" }}\n'
    # Readiness runs in the worker before it takes traffic: a streamed answer for raw, a whole one for late.
    raw = make_service(tmp_path, "raw", RAW_APP, f'workers = 1\nslots = 4\nhang_timeout = 2\nreadiness = "/file"\n'
                       f'{env}[sessions]\n"/ws" = "app:Echo"\n')
    late = make_service(tmp_path, "late", RAW_APP, f'workers = 1\nslots = 1\ntimeout = 1\nhang_timeout = 20\n'
                        f'routes = ["/late"]\nreadiness = "/env"\n{env}')
    return raw, late


def test_wsgi_runner_streams_both_ways_and_always_closes(nodes, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    raw, late = services(tmp_path, marks)
    node = nodes.start(raw, late)
    with httpx.Client(base_url=node.url, timeout=30) as client:
        # The environ: the route prefix is SCRIPT_NAME; the validator wraps wsgi.input.
        env = client.get("/late/env", params={"a": "1"}).json()
        env.pop("pid")
        assert env == {"script_name": "/late", "path_info": "/env", "query": "a=1", "input": "InputWrapper",
                       "multithread": False}
        assert client.get("/env").json()["multithread"] is True

        # 100 MiB upload, read in 64 KiB chunks: the worker's peak RSS barely moves.
        block = os.urandom(1 << 20)
        digest = hashlib.sha256()
        for _ in range(100):
            digest.update(block)

        def body():
            for _ in range(100):
                yield block
        uploaded = client.post("/upload", content=body(), headers={"content-length": str(100 << 20)}).json()
        assert uploaded["size"] == 100 << 20 and uploaded["sha256"] == digest.hexdigest()
        assert uploaded["peak_growth_kib"] < 24 * 1024, uploaded

        # A response of 10,000 chunks arrives whole and in order.
        streamed = client.get("/chunks?10000")
        assert streamed.status_code == 200
        lines = streamed.content.split(b"\n")[:-1]
        assert len(lines) == 10000 and lines[0] == b"chunk 00000" and lines[-1] == b"chunk 09999"

        # An exception before the response: 500, the traceback in the log.
        boom = client.get("/boom")
        assert boom.status_code == 500 and boom.json()["error"] == "internal server error"
        node.wait_output(r"in handler_that_raises\n.*raise ValueError\(\"the app failed on purpose\"\)")

        # wsgi.file_wrapper is streamed.
        assert client.get("/file").content == (raw / "app.py").read_bytes()

        # A generator whose client goes away: close() is called, the rest is never produced.
        with socket.create_connection(("127.0.0.1", int(node.url.rsplit(":", 1)[1]))) as sock:
            sock.sendall(b"GET /endless HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"tick 0" in sock.recv(4096)
        wait_for(lambda: (marks / "endless-closed").exists(), 10, what="close() after the disconnect")
        assert not (marks / "endless-finished").exists()
        assert int((marks / "endless-closed").read_text()) < 900

        # A Session on another route of the same WSGI service.
        async def echo() -> str:
            async with websockets.connect(node.url.replace("http", "ws") + "/ws") as ws:
                await ws.send("hi")
                return await ws.recv()
        assert asyncio.run(echo()) == "echo hi"
    clean(node.output)


def test_a_request_past_its_deadline_gets_504_and_its_slot_returns_when_the_thread_does(nodes, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    raw, late = services(tmp_path, marks)
    node = nodes.start(late)
    pid = node.ready_workers("late")[0]["pid"]
    with httpx.Client(base_url=node.url, timeout=30) as client:
        started = time.monotonic()
        assert client.get("/late/sleep").status_code == 504
        assert time.monotonic() - started < 9  # the app itself would answer after 10 s
        # The app still runs in its thread and keeps the only slot: nothing else is placed.
        assert not (marks / "sleep-returned").exists()
        assert node.service("late")["inflight"] == 1
        assert client.get("/late/env").status_code == 504  # queued behind the busy slot, then expired
        (marks / "wake").write_text("go")
        wait_for(lambda: (marks / "sleep-returned").exists(), 10, what="the app's thread to return")
        wait_for(lambda: node.service("late")["inflight"] == 0, 10, what="the slot to come back")
        assert client.get("/late/env").status_code == 200
    assert node.ready_workers("late")[0]["pid"] == pid  # nobody killed the worker
    clean(node.output)


def test_a_thread_stuck_in_the_app_is_a_hung_worker_with_every_stack_logged(nodes, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    raw, _ = services(tmp_path, marks)
    node = nodes.start(raw)
    pid = node.ready_workers("raw")[0]["pid"]
    with httpx.Client(base_url=node.url, timeout=30) as client:
        stuck = client.post("/stuck")  # not retried on another worker (not a safe method)
        assert stuck.status_code == 502, stuck.text  # the hung worker was killed under the request
    node.wait_output(r"event=worker\.hung service=raw")
    node.wait_output(r"File \"[^\"]*app\.py\", line \d+ in handler_stuck_in_a_wsgi_thread")
    node.wait_output(r"Thread 0x[0-9a-f]+ \(most recent call first\)")
    wait_for(lambda: [w for w in node.ready_workers("raw") if w["pid"] != pid], 15, what="a replacement worker")


DJANGO_VIEWS = """
from django.http import HttpResponse
from django.shortcuts import render
from django.template import engines

FORM = engines["django"].from_string(
    '<form method="post">{% csrf_token %}<input name="name"></form>'
)


def form(request):
    if request.method == "POST":
        return HttpResponse(f"hello {request.POST['name']}", content_type="text/plain")
    return HttpResponse(FORM.render({}, request))
"""


def test_django_admin_login_and_a_csrf_protected_form_are_served(nodes, tmp_path):
    project = tmp_path / "djsite"
    project.mkdir()
    subprocess.run([sys.executable, "-m", "django", "startproject", "mysite", str(project)], check=True, timeout=60)
    settings = project / "mysite" / "settings.py"
    settings.write_text(settings.read_text().replace("ALLOWED_HOSTS = []", "ALLOWED_HOSTS = ['*']")
                        .replace("BASE_DIR / 'db.sqlite3'", "os.environ['DJANGO_DB']")
                        .replace("BASE_DIR / \"db.sqlite3\"", "os.environ['DJANGO_DB']")
                        .replace("from pathlib import Path", "import os\nfrom pathlib import Path"))
    (project / "mysite" / "views.py").write_text(DJANGO_VIEWS)
    urls = project / "mysite" / "urls.py"
    urls.write_text(urls.read_text().replace("from django.urls import path", "from django.urls import path\nfrom mysite import views")
                    .replace("path('admin/', admin.site.urls),", "path('admin/', admin.site.urls), path('form/', views.form),")
                    .replace('path("admin/", admin.site.urls),', 'path("admin/", admin.site.urls), path("form/", views.form),'))
    db = tmp_path / "db.sqlite3"
    env = {**os.environ, "DJANGO_DB": str(db), "DJANGO_SETTINGS_MODULE": "mysite.settings"}
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=project, env=env, check=True, timeout=120)
    (project / "anycore.toml").write_text(f'name = "django"\nentry = "mysite.wsgi:application"\nworkers = 1\n'
                                          f'env = {{ DJANGO_DB = "{db}", ANYCORE_WSGI_VALIDATE = "1" }}\n')
    node = nodes.start(project)
    assert re.search(r"event=release\.imported service=django .*kind=wsgi", node.output), node.output
    with httpx.Client(base_url=node.url, timeout=30) as client:
        login = client.get("/admin/login/")
        assert login.status_code == 200 and "Django administration" in login.text
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', login.text).group(1)
        assert "csrftoken" in client.cookies
        # The admin's own form, POSTed with its CSRF token: Django checks the (unknown) user in the database.
        refused = client.post("/admin/login/", data={"csrfmiddlewaretoken": token, "username": "nobody",
                                                     "password": "wrong", "next": "/admin/"})
        assert refused.status_code == 200 and "Please enter the correct username and password" in refused.text

        page = client.get("/form/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text).group(1)
        ok = client.post("/form/", data={"csrfmiddlewaretoken": token, "name": "ada"})
        assert (ok.status_code, ok.text) == (200, "hello ada")
        client.cookies.clear()
        assert client.post("/form/", data={"name": "ada"}).status_code == 403  # no token: CSRF refuses it
    clean(node.output)


def test_a_wsgi_worker_is_recycled_after_max_requests_without_a_failed_request(nodes, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    service = make_service(tmp_path, "cycled", RAW_APP, f'workers = 1\nslots = 2\nmax_requests = 10\n'
                           f'env = {{ MARKS = "{marks}", ANYCORE_WSGI_VALIDATE = "1" }}\n')
    node = nodes.start(service)
    pids = set()
    with httpx.Client(base_url=node.url, timeout=30) as client:
        deadline = time.monotonic() + 30
        while len(pids) < 3 and time.monotonic() < deadline:  # two recycles: every answer still a 200
            answer = client.get("/env")
            assert answer.status_code == 200, answer.text
            pids.add(answer.json()["pid"])
    assert len(pids) >= 3, pids
    node.wait_output(r"event=worker\.recycling service=cycled")
    clean(node.output)
