"""Real frameworks on real workers (issue 2, "Services" and "Workers"): a FastAPI app with
async and sync endpoints and JSON bodies, a Flask app detected as WSGI, and a Starlette
app whose lifespan startup runs in every worker and whose shutdown runs on node stop."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import make_service, wait_for

FASTAPI_APP = """
import asyncio, os, threading

from fastapi import FastAPI
from pydantic import BaseModel

app = FastAPI()


class Item(BaseModel):
    name: str
    price: float
    tags: list[str] = []


@app.post("/items")
async def create_item(item: Item):
    await asyncio.sleep(0)
    return {"name": item.name, "total": item.price * 2, "tags": item.tags, "pid": os.getpid()}


@app.get("/items/{item_id}")
async def read_item(item_id: int, q: str | None = None):
    return {"item_id": item_id, "q": q}


@app.get("/sync")
def sync_endpoint():
    # A plain `def` endpoint: FastAPI runs it in its thread pool, off the event loop.
    return {"thread": threading.current_thread().name, "main": threading.current_thread() is threading.main_thread()}


@app.post("/sync-echo")
def sync_echo(item: Item):
    return {"name": item.name.upper(), "main": threading.current_thread() is threading.main_thread()}
"""


def test_fastapi_app_with_async_and_sync_endpoints_and_json_bodies_is_served(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "fast", FASTAPI_APP, "workers = 1\n"))
    assert re.search(r"event=release\.imported service=fast .*kind=asgi", node.output), node.output
    with httpx.Client(base_url=node.url, timeout=10) as client:
        # async endpoint, JSON in and out
        response = client.post("/items", json={"name": "widget", "price": 2.5, "tags": ["a", "b"]})
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.headers["anycore-release"].startswith("fast@")
        body = response.json()
        assert {k: body[k] for k in ("name", "total", "tags")} == {"name": "widget", "total": 5.0, "tags": ["a", "b"]}
        assert body["pid"] == node.ready_workers("fast")[0]["pid"]  # served by the worker, not the node

        # path and query parameters, converted
        assert client.get("/items/42", params={"q": "x y"}).json() == {"item_id": 42, "q": "x y"}
        assert client.get("/items/7").json() == {"item_id": 7, "q": None}

        # sync `def` endpoints run in a thread, not on the worker's loop
        sync = client.get("/sync")
        assert sync.status_code == 200
        assert sync.json()["main"] is False
        echoed = client.post("/sync-echo", json={"name": "gadget", "price": 1})
        assert echoed.json() == {"name": "GADGET", "main": False}

        # several sync requests at once are all answered
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: httpx.get(node.url + "/sync", timeout=10).status_code, range(16)))
        assert answers == [200] * 16

        # validation errors: 422 with FastAPI's detail
        bad_json = client.post("/items", content=b'{"name": "widget", "price": ', headers={"content-type": "application/json"})
        assert bad_json.status_code == 422
        assert bad_json.json()["detail"][0]["type"] == "json_invalid"
        missing = client.post("/items", json={"name": "widget"})
        assert missing.status_code == 422
        assert missing.json()["detail"][0]["loc"] == ["body", "price"]
        assert client.get("/items/not-a-number").status_code == 422
        assert client.get("/nope").status_code == 404  # FastAPI's own 404, from the app
        assert client.get("/nope").headers["anycore-release"].startswith("fast@")


FLASK_APP = """
import os, time

from flask import Flask, Response, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return "hello from flask"


@app.post("/form")
def form():
    return jsonify(name=request.form["name"], fields=sorted(request.form))


@app.post("/json")
def json_body():
    data = request.get_json()
    return jsonify(doubled=data["x"] * 2, path=request.path)


@app.get("/headers")
def headers():
    response = jsonify(custom=request.headers.get("X-Custom"), query=request.args.get("q"))
    response.headers["X-Reply"] = "flask"
    response.set_cookie("session", "abc")
    return response, 201


@app.get("/stream")
def stream():
    release = os.environ["MARKS"] + "/release"

    def generate():
        yield "first\\n"
        for _ in range(500):  # bounded: 10 s
            if os.path.exists(release):
                break
            time.sleep(0.02)
        for i in range(3):
            yield f"line {i}\\n"

    return Response(generate(), mimetype="text/plain")
"""


@pytest.mark.parametrize("validate", ["0", "1"], ids=["plain", "validated"])
def test_flask_app_is_detected_as_wsgi_and_served(nodes, tmp_path, validate):
    """Also run with the app wrapped in wsgiref.validate.validator (ANYCORE_WSGI_VALIDATE=1)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    node = nodes.start(make_service(tmp_path, "flasky", FLASK_APP,
                                    f'workers = 1\nenv = {{ MARKS = "{marks}", ANYCORE_WSGI_VALIDATE = "{validate}" }}\n'))
    assert re.search(r"event=release\.imported service=flasky .*kind=wsgi", node.output), node.output
    with httpx.Client(base_url=node.url, timeout=10) as client:
        response = client.get("/")
        assert response.status_code == 200
        assert response.text == "hello from flask"
        assert response.headers["anycore-release"].startswith("flasky@")

        form = client.post("/form", data={"name": "ada", "lang": "py"})
        assert form.json() == {"name": "ada", "fields": ["lang", "name"]}
        assert client.post("/json", json={"x": 21}).json() == {"doubled": 42, "path": "/json"}

        headers = client.get("/headers", params={"q": "1"}, headers={"X-Custom": "hi"})
        assert headers.status_code == 201
        assert headers.json() == {"custom": "hi", "query": "1"}
        assert headers.headers["x-reply"] == "flask"
        assert "session=abc" in headers.headers["set-cookie"]
        assert client.get("/missing").status_code == 404

        # Streaming: the first chunk reaches the client while the generator still waits.
        with client.stream("GET", "/stream") as streamed:
            assert streamed.status_code == 200
            chunks = streamed.iter_raw()
            first = next(chunks)
            assert first == b"first\n"
            (marks / "release").write_text("go")
            rest = b"".join(chunks)
        assert rest == b"line 0\nline 1\nline 2\n"
    output = node.output
    assert "AssertionError" not in output and "WSGIWarning" not in output, output[-4000:]


STARLETTE_APP = """
import asyncio, contextlib, os

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route


@contextlib.asynccontextmanager
async def lifespan(app):
    print(f"lifespan startup in {os.getpid()}", flush=True)
    yield {"started_in": os.getpid(), "db": "connected"}
    print(f"lifespan shutdown in {os.getpid()}", flush=True)


async def home(request):
    await asyncio.sleep(float(request.query_params.get("sleep", "0")))
    return JSONResponse({"pid": os.getpid(), "started_in": request.state.started_in, "db": request.state.db})


app = Starlette(routes=[Route("/", home)], lifespan=lifespan)
"""


def test_lifespan_startup_runs_in_each_worker_and_shutdown_on_stop(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "life", STARLETTE_APP, "workers = 2\nslots = 1\n"))
    workers = wait_for(lambda: len(node.ready_workers("life")) == 2 and node.ready_workers("life"), 20, what="2 workers")
    pids = {w["pid"] for w in workers}
    for pid in pids:
        node.wait_output(rf"lifespan startup in {pid}\b")

    # Two slow requests at once on 2 workers with 1 slot each: one per worker.
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda _: httpx.get(node.url + "/", params={"sleep": "0.5"}, timeout=10), range(2)))
    assert [a.status_code for a in answers] == [200, 200]
    seen = [a.json() for a in answers]
    assert {s["pid"] for s in seen} == pids
    for state in seen:
        assert state["started_in"] == state["pid"]  # the state that worker's own startup produced
        assert state["db"] == "connected"

    assert node.stop() == 0
    output = node.output
    for pid in pids:
        assert re.search(rf"lifespan shutdown in {pid}\b", output), output[-3000:]
