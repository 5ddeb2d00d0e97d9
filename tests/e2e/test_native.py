"""``anycore up --gateway native``: real nodes whose data plane is another process.

Two gateways run these tests. The Rust ``anycore-gateway`` (built by ``pip install -e .``
when cargo and the crates are there; .ci/run installs them): every test. And a stand-in
in Python (tests/native_stand_in.py, the same control protocol, the simplest HTTP): the
tests of the node's side — zygote-passed data sockets, AddWorker, the shift, drains that
wait for WorkerIdle, the gateway's death — so they run even where Rust is not built.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from anycore.node.native import find_binary
from tests.conftest import HELLO, make_service, wait_for

pytestmark = pytest.mark.e2e

STAND_IN = Path(__file__).resolve().parent.parent / "native_stand_in.py"

VERSIONED = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"%s " + str(len(body)).encode()})
"""

FASTAPI = """
from fastapi import FastAPI

app = FastAPI()

@app.get("/items/{item}")
async def item(item: int, q: str = ""):
    return {"item": item, "q": q}
"""


WSGI = """
def app(environ, start_response):
    body = environ["wsgi.input"].read()
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"wsgi " + str(len(body)).encode()]
"""


def native_binary() -> str:
    binary = find_binary()
    if binary is None:
        pytest.skip("anycore-gateway is not built (needs cargo and the Debian crates: see README, Native gateway)")
    return binary


def stand_in(tmp_path: Path) -> str:
    script = tmp_path / "anycore-gateway"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} \"$@\"\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture(params=["rust", "stand-in"])
def gateway(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return native_binary() if request.param == "rust" else stand_in(tmp_path)


def gateway_pid(node_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == node_pid and b"--control-fd" in cmdline:
                return int(entry.name)
    raise AssertionError("no gateway process under the node")


def test_native_serves_hello_and_fastapi_and_swaps_without_errors(nodes, tmp_path, gateway):
    hello = make_service(tmp_path / "a", "hello", VERSIONED % "a", 'name = "hello"\nworkers = 2\nslots = 8\n')
    api = make_service(tmp_path, "api", FASTAPI, 'name = "api"\nroutes = ["/api"]\nworkers = 1\n')
    wsgi = make_service(tmp_path, "wsgi", WSGI, 'name = "wsgi"\nroutes = ["/w"]\nworkers = 1\n')
    node = nodes.start(hello, api, wsgi, args=("--gateway", "native"), env={"ANYCORE_GATEWAY_BIN": gateway})
    assert f"(gateway: native ({gateway}" in node.output
    with httpx.Client(base_url=node.url, timeout=10) as client:
        assert client.get("/").text == "a 0"
        assert client.post("/", content=b"x" * 1000).text == "a 1000"
        answer = client.get("/api/items/7", params={"q": "z"})
        assert answer.status_code == 200 and answer.json() == {"item": 7, "q": "z"}
        assert client.post("/w/x", content=b"y" * 300).text == "wsgi 300"  # WSGI threads answer on the data socket
    old_workers = {w["pid"] for w in node.ready_workers("hello")}
    assert len(old_workers) == 2

    # A deploy under light load: the shift is one step, the old workers stop once idle.
    stop, errors, seen = threading.Event(), [], []

    def load(path: str) -> None:
        with httpx.Client(base_url=node.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.get(path)
                except httpx.HTTPError as exc:
                    errors.append(repr(exc))
                    continue
                if response.status_code != 200:
                    errors.append(f"{response.status_code} {response.text}")
                seen.append(response.text)

    threads = [threading.Thread(target=load, args=(p,)) for p in ("/", "/slow")]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(seen) > 5, what="load before the deploy")
        b = make_service(tmp_path / "b", "hello", VERSIONED % "b", 'name = "hello"\nworkers = 2\nslots = 8\n')
        result = node.cli("deploy", str(b))
        assert result.returncode == 0, result.stdout + result.stderr
        wait_for(lambda: seen and seen[-1].startswith("b"), what="the new release's answers")
        count = len(seen)
        wait_for(lambda: len(seen) > count + 5, what="load after the deploy")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not errors, errors[:5]
    wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in old_workers), timeout=20,
             what="the old release's workers to drain and exit")
    assert not node.service("hello")["draining"]


RESTARTABLE = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/wait":  # held until its client is gone: then it leaves a mark
        while (await receive())["type"] != "http.disconnect":
            pass
        open(os.path.join(os.environ["MARKS"], "disconnected"), "w").close()
        return
    if scope["path"] == "/download":  # 4 MiB frames, on and on: one is half-read when the gateway dies
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"d" * (4 << 20)
        for _ in range(2000):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    if scope["path"] == "/slow":
        await asyncio.sleep(0.3)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_native_gateway_killed_under_light_load_is_restarted_in_place_no_worker_restarts(nodes, tmp_path, gateway, request):
    marks = tmp_path / "marks"
    marks.mkdir()
    hello = make_service(tmp_path, "hello", RESTARTABLE, f'name = "hello"\nworkers = 2\nslots = 8\nenv = {{ MARKS = "{marks}" }}\n')
    wsgi = make_service(tmp_path, "wsgi", WSGI, 'name = "wsgi"\nroutes = ["/w"]\nworkers = 1\n')  # its reset takes the writer's lock
    node = nodes.start(hello, wsgi, args=("--gateway", "native"), env={"ANYCORE_GATEWAY_BIN": gateway})
    workers = {w["pid"] for w in node.ready_workers("hello")}
    wsgi_workers = {w["pid"] for w in node.ready_workers("wsgi")}
    held = threading.Thread(target=lambda: pytest.raises(httpx.HTTPError, httpx.get, node.url + "/wait", timeout=30))
    held.start()
    wait_for(lambda: node.service("hello")["inflight"] == 1, what="the held request on a worker")
    # A large download under way: the gateway dies in the middle of a frame (both ways).
    downloaded: list[int] = []

    def download() -> None:
        with socket.create_connection(("127.0.0.1", int(node.url.rsplit(":", 1)[1]))) as conn:
            conn.sendall(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
            while data := conn.recv(1 << 20):
                downloaded.append(len(data))

    downloading = threading.Thread(target=download)
    if request.node.callspec.params["gateway"] == "rust":  # the stand-in does not stream answers
        downloading.start()
        wait_for(lambda: sum(downloaded) > 64 << 20, what="the download under way")
    stop, ok, failed = threading.Event(), [], []

    def load() -> None:  # one client, a request at a time: "light load"
        while not stop.is_set():
            try:
                response = httpx.get(node.url + "/", timeout=5)
            except httpx.HTTPError as exc:
                failed.append(repr(exc))  # the requests on the dead gateway are lost: expected
                continue
            (ok if response.status_code == 200 else failed).append(response.status_code)

    thread = threading.Thread(target=load)
    thread.start()
    try:
        wait_for(lambda: len(ok) > 5, what="load before the kill")
        old = gateway_pid(node.proc.pid)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: "event=gateway.restarted " in node.output, what="the gateway restarted")
        count = len(ok)
        wait_for(lambda: len(ok) > count + 20, what="requests succeeding on the new gateway")
    finally:
        stop.set()
        thread.join(10)
        held.join(10)
        if downloading.is_alive():
            downloading.join(10)
    # The held request was the dead gateway's: the worker was told (GatewayReset), its app
    # got http.disconnect, and its slot is free.
    wait_for(lambda: (marks / "disconnected").exists(), what="the dead gateway's request cancelled in the worker")
    assert gateway_pid(node.proc.pid) != old and node.proc.poll() is None
    assert {w["pid"] for w in node.ready_workers("hello")} == workers  # the same workers serve
    assert httpx.post(node.url + "/w/x", content=b"y" * 300, timeout=10).text == "wsgi 300"
    assert {w["pid"] for w in node.ready_workers("wsgi")} == wsgi_workers
    assert node.service("hello")["live"]["restarts"] == 0
    assert "event=gateway.worker_lost " not in node.output  # each worker's stream stayed readable
    assert len(failed) <= 2, failed  # at most the one request in flight, and one refused in the gap
    served = {w["pid"]: w["served"] for w in node.ready_workers("hello")}
    with ThreadPoolExecutor(8) as pool:  # 8 at once, 0.3 s each: on both workers
        assert [r.status_code for r in pool.map(lambda _: httpx.get(node.url + "/slow", timeout=10), range(8))] == [200] * 8
    wait_for(lambda: all(w["served"] > served[w["pid"]] for w in node.ready_workers("hello")),
             what="both workers serving through the new gateway")


def test_native_gateway_that_keeps_dying_stops_the_node_with_exit_3(nodes, tmp_path):
    binary = native_binary()
    hello = make_service(tmp_path, "hello", HELLO, 'name = "hello"\nworkers = 1\n')
    node = nodes.start(hello, args=("--gateway", "native"), env={"ANYCORE_GATEWAY_BIN": binary})
    for n in range(6):  # the sixth death within 60 s is one too many
        wait_for(lambda: node.output.count("event=gateway.restarted ") == n, timeout=20, what=f"restart {n}")
        os.kill(gateway_pid(node.proc.pid), signal.SIGKILL)
    assert node.proc.wait(30) == 3
    assert "the native gateway died" in node.output and "not restarted again" in node.output
    assert node.output.count("event=gateway.restarted ") == 5


def test_native_without_a_binary_says_what_to_install(nodes, tmp_path):
    hello = make_service(tmp_path, "hello", HELLO)
    node = nodes.start(hello, args=("--gateway", "native"), env={"ANYCORE_GATEWAY_BIN": str(tmp_path / "missing")},
                       wait=False)
    assert node.proc.wait(60) == 2
    assert "no anycore-gateway binary found" in node.output and "apt-get install" in node.output


STREAMING = """
import asyncio

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or b"1"))
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/download":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        chunk = b"d" * 65536
        for _ in range(24):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})
"""


def test_native_streams_both_ways_and_answers_a_full_queue_503_and_a_deadline_504(nodes, tmp_path):
    binary = native_binary()
    svc = make_service(tmp_path, "stream", STREAMING,
                       'name = "stream"\nmin_workers = 1\nmax_workers = 1\nslots = 1\nmax_queue = 1\ntimeout = 2\n')
    node = nodes.start(svc, args=("--gateway", "native"), env={"ANYCORE_GATEWAY_BIN": binary})
    size = 3 * 512 * 1024  # 1.5 MiB each way: past the credit window (1 MiB)
    with httpx.Client(base_url=node.url, timeout=20) as client:
        def chunks():
            for _ in range(24):
                yield b"u" * 65536
        assert client.post("/upload", content=chunks()).text == str(size)
        with client.stream("GET", "/download") as response:
            received = sum(len(part) for part in response.iter_bytes())
        assert response.status_code == 200 and received == size

    # One slot, a queue of one: a third request is refused at once; the queued one expires.
    answers: dict[str, httpx.Response] = {}

    def call(name: str, path: str) -> None:
        with httpx.Client(base_url=node.url, timeout=20) as client:
            answers[name] = client.get(path)

    running = threading.Thread(target=call, args=("running", "/sleep?3"))
    running.start()
    wait_for(lambda: node.service("stream")["inflight"] == 1, what="the running request")
    queued = threading.Thread(target=call, args=("queued", "/"))
    queued.start()
    wait_for(lambda: node.service("stream")["queued"] == 1, what="the queued request")
    started = time.monotonic()
    call("refused", "/")
    assert answers["refused"].status_code == 503 and time.monotonic() - started < 1.5
    assert answers["refused"].headers.get("retry-after")
    queued.join(10)
    running.join(10)
    assert answers["queued"].status_code == 504
    assert answers["running"].status_code == 504  # 3 s of sleep past a 2 s deadline


SLOW_PID = """
import asyncio, os

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    await asyncio.sleep(0.2)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-pid", str(os.getpid()).encode())]})
    await send({"type": "http.response.body", "body": b"ok"})
"""


def test_native_kill_9_of_a_worker_under_load_retries_its_gets_and_answers_its_posts_502(nodes, tmp_path):
    binary = native_binary()
    svc = make_service(tmp_path, "crashy", SLOW_PID, 'name = "crashy"\nworkers = 2\nslots = 4\n')
    node = nodes.start(svc, args=("--gateway", "native"), env={"ANYCORE_GATEWAY_BIN": binary})
    stop = threading.Event()
    gets: list[int] = []
    posts: list[httpx.Response] = []

    def load(method: str) -> None:
        with httpx.Client(base_url=node.url, timeout=20) as client:
            while not stop.is_set():
                response = client.request(method, "/", content=b"x" * 10 if method == "POST" else None)
                (gets.append(response.status_code) if method == "GET" else posts.append(response))

    threads = [threading.Thread(target=load, args=(m,)) for m in ("GET", "GET", "GET", "GET", "POST", "POST")]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: len(ws := node.ready_workers("crashy")) == 2 and any(w["inflight"] >= 3 for w in ws),
                 what="load on both workers")
        victim = max(node.ready_workers("crashy"), key=lambda w: w["inflight"])
        os.kill(victim["pid"], signal.SIGKILL)
        wait_for(lambda: len([w for w in node.ready_workers("crashy") if w["pid"] != victim["pid"]]) == 2,
                 what="the replacement worker")
        count = len(gets)
        wait_for(lambda: len(gets) > count + 8, what="load after the kill")
    finally:
        stop.set()
        for thread in threads:
            thread.join(20)
    assert set(gets) == {200}, f"{len(gets) - gets.count(200)} of {len(gets)} GETs failed"
    failed = [r for r in posts if r.status_code != 200]
    assert all(r.status_code == 502 and r.json()["error"] == "worker died" and "POST" in r.json()["detail"]
               and "may or may not have taken effect" in r.json()["detail"] for r in failed), [r.text for r in failed]
    retried = [line for line in node.output.splitlines() if "event=request.retried " in line]
    assert retried and all("method=GET" in line for line in retried)  # the victim had GETs in flight
    assert node.service("crashy")["live"]["restarts"] == 1


def test_native_gateway_threads_sets_the_runtime_threads_and_ps_shows_them(nodes, tmp_path):
    binary = native_binary()
    hello = make_service(tmp_path, "hello", HELLO, 'name = "hello"\nworkers = 1\n')
    node = nodes.start(hello, args=("--gateway", "native", "--gateway-threads", "3"), env={"ANYCORE_GATEWAY_BIN": binary})
    assert node.ps()["data_plane"] == f"native ({binary}, 3 threads)"
    assert httpx.get(node.url + "/", timeout=10).text == "hello"
    pid = gateway_pid(node.proc.pid)
    runtime = [t for t in Path(f"/proc/{pid}/task").iterdir()
               if t.name != str(pid) and (t / "comm").read_text().strip() == "anycore-gateway"]
    assert len(runtime) == 3  # tokio's worker threads, besides the main thread (the control loop)
    refused = node.cli("up", str(hello), "--gateway", "native", "--gateway-threads", "0")
    assert refused.returncode == 2 and "--gateway-threads" in refused.stderr
