"""Request ids, trace context and the log formats, with real nodes and a real HTTP client.

Two nodes, each reused for several checks: one with ``--access-log json`` (node events in
logfmt), one with ``--access-log combined --log-format json``. The app echoes the headers
it was given, so what reached it is read from the response body.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from tests.conftest import RunningNode, make_service, wait_for
from tests.e2e.planes import gateway  # noqa: F401 (a fixture)
from tests.unit.test_log_formats import COMBINED

ECHO = """
import asyncio, json, os

async def app(scope, receive, send):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if scope["path"] == "/refuse":
            await send({"type": "websocket.close"})  # before accept: the client gets 403
            return
        await send({"type": "websocket.accept"})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": "echo:" + message["text"]})
        return
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body"):
        pass
    if scope["path"] == "/hold":  # hold the slot until the test kills this worker
        open(os.environ["MARK"], "w").write(str(os.getpid()))
        await asyncio.sleep(60)
    print("handled", scope["path"], flush=True)  # a worker output line
    body = json.dumps([[k.decode("latin-1"), v.decode("latin-1")] for k, v in scope["headers"]]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
MADE = re.compile(r"[0-9a-f]{12}-[0-9a-f]+")


def echo(tmp_path: Path, name: str) -> Path:
    return make_service(tmp_path, name, ECHO, f'workers = 1\nslots = 4\nmax_body = 65536\nenv = {{ MARK = "{tmp_path / name}.mark" }}\n')


def seen(response: httpx.Response) -> dict[str, list[str]]:
    """The headers the app got, by name."""
    out: dict[str, list[str]] = {}
    for name, value in response.json():
        out.setdefault(name, []).append(value)
    return out


def json_lines(node: RunningNode) -> list[dict[str, Any]]:
    return [json.loads(line) for line in node.output.splitlines() if line.startswith("{")]


def test_request_ids_traceparent_json_access_log_and_a_502_s_line(nodes, tmp_path):
    node = nodes.start(echo(tmp_path, "echo"), args=("--access-log", "json"))
    with httpx.Client(base_url=node.url, timeout=30) as client:
        # A client's id comes back, reached the app once, and is in the access log.
        sent = client.get("/given", headers={"x-request-id": "client-id-42", "traceparent": TRACEPARENT,
                                             "tracestate": "rojo=00f067aa0ba902b7"})
        assert sent.headers["x-request-id"] == "client-id-42"
        assert seen(sent)["x-request-id"] == ["client-id-42"]
        # traceparent and tracestate reach the app unchanged.
        assert seen(sent)["traceparent"] == [TRACEPARENT] and seen(sent)["tracestate"] == ["rojo=00f067aa0ba902b7"]
        # One is made when absent, different for every request, and is the one the app got.
        made = [client.get("/made") for _ in range(5)]
        ids = [r.headers["x-request-id"] for r in made]
        assert all(MADE.fullmatch(i) for i in ids) and len(set(ids)) == 5
        assert [seen(r)["x-request-id"] for r in made] == [[i] for i in ids]
        # An invalid one is replaced, not echoed.
        bad = client.get("/bad", headers={"x-request-id": "x" * 201})
        assert MADE.fullmatch(bad.headers["x-request-id"]) and seen(bad)["x-request-id"] == [bad.headers["x-request-id"]]
        # A node-made answer (413: over max_body) carries one too.
        too_big = client.post("/big", content=b"x" * (2 * 1024 * 1024), headers={"x-request-id": "big-1"})
        assert too_big.status_code == 413 and too_big.headers["x-request-id"] == "big-1"

    def access(path: str) -> dict[str, Any] | None:
        return next((r for r in json_lines(node) if r.get("event") == "request" and r.get("path") == path), None)

    record = wait_for(lambda: access("/given"), what="the JSON access line of /given")
    assert record["request_id"] == "client-id-42" and record["status"] == 200 and record["service"] == "echo"
    assert wait_for(lambda: access("/bad"))["request_id"] == bad.headers["x-request-id"]
    assert wait_for(lambda: access("/big"))["status"] == 413
    # Worker output lines carry the node's timestamp and their tag (logfmt here).
    node.wait_output(r"(?m)^ts=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z \[echo@\w+ worker \d+\] handled /given$")

    # kill -9 under an unsafe request: the 502's node line names its request id.
    mark = tmp_path / "echo.mark"
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(httpx.post, node.url + "/hold", headers={"x-request-id": "doomed-7"}, timeout=30)
        pid = int(wait_for(lambda: mark.exists() and mark.read_text(), what="the held POST on its worker"))
        os.kill(pid, signal.SIGKILL)
        response = held.result(timeout=30)
    assert response.status_code == 502 and response.headers["x-request-id"] == "doomed-7"
    line = node.wait_output(r"event=request\.failed service=echo [^\n]*")
    assert "status=502" in line.group(0) and "request_id=doomed-7" in line.group(0)
    assert wait_for(lambda: access("/hold"))["request_id"] == "doomed-7"
    # `anycore logs` still reads the rings.
    logs = node.cli("logs", "echo", "-n", "200")
    assert logs.returncode == 0 and "client-id-42" in logs.stdout and "request_id=doomed-7" in logs.stdout, logs.stderr


def test_a_websocket_gets_one_access_line_when_it_ends(nodes, tmp_path, gateway):
    """On both data planes (the native gateway hands WebSockets to the node, which writes
    the line): status 101 or the refusal's, ``ms`` the connection's life, ``queued_ms``
    the wait for the accept, ``bytes`` what the client got after the answer's head."""
    node = nodes.start(echo(tmp_path, "ws"), args=("--access-log", "json", *gateway.get("args", ())),
                       env=gateway.get("env"))
    url = node.url.replace("http://", "ws://")

    async def talk() -> None:
        async with websockets.connect(url + "/ws?room=1", additional_headers={"x-request-id": "ws-7"},
                                      compression=None) as ws:  # frames of known sizes
            for text in ("one", "two"):
                await ws.send(text)
                assert await asyncio.wait_for(ws.recv(), 30) == "echo:" + text
            assert access("/ws") is None  # not while it is open
            await asyncio.sleep(0.2)  # a life the line's ms must show
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(url + "/refuse", open_timeout=30)
        assert refused.value.response.status_code == 403

    def access(path: str) -> dict[str, Any] | None:
        return next((r for r in json_lines(node) if r.get("event") == "request" and r.get("path") == path), None)

    asyncio.run(talk())
    line = wait_for(lambda: access("/ws"), what="the WebSocket's access line")
    assert line["status"] == 101 and line["method"] == "GET" and line["service"] == "ws"
    assert line["request_id"] == "ws-7" and line["client"] == "127.0.0.1" and line["release"].startswith("ws@")
    assert line["ms"] >= 200 and 0 <= line["queued_ms"] < line["ms"]
    # Two text frames of "echo:one" and a close frame (2 + 8 each, 2 + 2): unmasked server frames.
    assert line["bytes"] == 2 * (2 + 8) + 4
    refused_line = wait_for(lambda: access("/refuse"), what="the refused WebSocket's access line")
    assert refused_line["status"] == 403 and refused_line["bytes"] > 0
    assert sum(1 for r in json_lines(node) if r.get("path") in ("/ws", "/refuse")) == 2  # one line each


def test_combined_access_log_and_json_node_events(nodes, tmp_path, gateway):
    # on both data planes: the native gateway sends its records to the node (AccessLog), which writes the lines
    node = nodes.start(echo(tmp_path, "web"), args=("--access-log", "combined", "--log-format", "json",
                                                     *gateway.get("args", ())), env=gateway.get("env"))
    with httpx.Client(base_url=node.url, timeout=30) as client:
        ok = client.get("/page?q=1", headers={"referer": "http://example.test/", "user-agent": 'agent "quoted"/1.0'})
        assert ok.status_code == 200
        client.head("/page?q=2")

    def combined(q: str) -> re.Match[str] | None:
        lines = [line for line in node.output.splitlines() if f"/page?q={q} " in line]
        return COMBINED.match(lines[0]) if lines else None

    first = wait_for(lambda: combined("1"), what="the combined line of /page?q=1")
    assert first.group("host") == "127.0.0.1" and first.group("request") == "GET /page?q=1 HTTP/1.1"
    assert first.group("status") == "200" and first.group("size") == str(len(ok.content))
    assert first.group("referer") == "http://example.test/" and first.group("agent") == 'agent \\"quoted\\"/1.0'
    head = wait_for(lambda: combined("2"), what="the combined line of HEAD /page?q=2")
    assert head.group("request") == "HEAD /page?q=2 HTTP/1.1" and head.group("size") == "-"
    # Node events are one JSON object per line, with ts, event, service and their fields.
    ready = wait_for(lambda: [r for r in json_lines(node) if r.get("event") == "worker.ready"], what="worker.ready")
    assert ready[0]["service"] == "web" and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:.]+Z", ready[0]["ts"]) and "pid" in ready[0]
    assert not [line for line in node.output.splitlines() if line.startswith("ts=")]  # no logfmt events left
    # Worker output: JSON too, with the node's timestamp and the worker's tag.
    output = wait_for(lambda: [r for r in json_lines(node) if r.get("event") == "output" and r.get("line") == "handled /page"])
    assert re.fullmatch(r"web@\w+ worker \d+", output[0]["tag"]) and output[0]["ts"].endswith("Z")
