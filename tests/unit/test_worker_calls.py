"""worker/calls.py against an in-memory node: the frames a call sends, its deadline (504
at the budget and a CallCancel), whole and streamed answers under credit, the request's
headers propagated, and httpx needed only by the transport."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from anycore import wire
from anycore.errors import CallFailed
from anycore.worker import calls


class Node:
    """What the worker's frame socket would carry to the node."""

    def __init__(self) -> None:
        self.sent: list[wire.Frame] = []

    def send(self, frame: wire.Frame) -> None:
        self.sent.append(frame)

    def of(self, kind: type) -> list:
        return [f for f in self.sent if type(f) is kind]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


def request(remaining: float, headers: list[tuple[bytes, bytes]] | None = None) -> wire.Req:
    return wire.Req(1, "GET", "/", b"/", b"", headers or [], "1.1", "http", None, None, "", b"", False, remaining)


def test_a_call_carries_the_requests_ids_and_what_is_left_of_its_deadline():
    async def go() -> None:
        node = Node()
        client = calls.install(node.send, asyncio.get_running_loop())
        calls.enter_request(request(5.0, [(b"x-request-id", b"r1"), (b"traceparent", b"00-t"), (b"cookie", b"no"),
                                          (b"anycore-call-chain", b"front")]))
        task = asyncio.ensure_future(calls.call("shop", "get", "/items/7?full=1", json={"a": 1},
                                                headers={"X-Request-Id": "mine"}))
        await asyncio.sleep(0)
        (req,) = node.of(wire.CallReq)
        assert (req.service, req.method, req.path, req.query, req.body, req.more) == \
            ("shop", "GET", "/items/7", b"full=1", b'{"a":1}', False)
        headers = dict(req.headers)
        assert headers[b"x-request-id"] == b"mine" and headers[b"traceparent"] == b"00-t"  # given ones win
        assert headers[b"anycore-call-chain"] == b"front" and b"cookie" not in headers
        assert headers[b"content-type"] == b"application/json" and 4.9 < req.timeout <= 5.0
        client.on_frame(wire.CallResp(req.id, 200, [(b"content-type", b"application/json")], b'{"ok"', True))
        client.on_frame(wire.CallBody(req.id, b": true}", False))
        response = await task
        assert response.status_code == 200 and response.json() == {"ok": True}
        assert node.of(wire.CallCredit) == []  # all of it was here when read: nothing more to credit
        assert not client.calls and not node.of(wire.CallCancel)

    run(go())


def test_the_budget_ends_in_a_504_at_once_and_the_node_is_told_to_cancel():
    async def go() -> None:
        node = Node()
        client = calls.install(node.send, asyncio.get_running_loop())
        calls.enter_request(request(0.1))
        started = time.monotonic()
        response = await calls.call("slow", "GET", "/")
        assert response.status_code == 504 and response.json()["error"] == "deadline passed"
        assert 0.08 <= time.monotonic() - started < 0.5
        (req,) = node.of(wire.CallReq)
        assert node.of(wire.CallCancel) == [wire.CallCancel(req.id)] and not client.calls
        client.on_frame(wire.CallResp(req.id, 200, [], b"late", False))  # a late answer is dropped

    run(go())


def test_a_streamed_body_goes_out_under_credit_and_a_cut_answer_raises():
    async def go() -> None:
        node = Node()
        client = calls.install(node.send, asyncio.get_running_loop())
        calls.enter_request(request(0.0))  # no deadline said: the node keeps the target's
        body = b"x" * (wire.WINDOW + 3 * wire.CHUNK)
        task = asyncio.ensure_future(calls.call("up", "POST", "/", content=body))
        for _ in range(50):
            await asyncio.sleep(0)
        (req,) = node.of(wire.CallReq)
        assert req.timeout == 0.0 and req.more and len(req.body) == wire.CHUNK
        sent = sum(len(f.data) for f in node.of(wire.CallBody))
        assert sent == wire.WINDOW  # a window past the first chunk, then it waits
        client.on_frame(wire.CallCredit(req.id, wire.WINDOW))
        for _ in range(50):
            await asyncio.sleep(0)
        assert wire.CHUNK + sum(len(f.data) for f in node.of(wire.CallBody)) == len(body)
        assert not node.of(wire.CallBody)[-1].more
        client.on_frame(wire.CallResp(req.id, 200, [], b"part", True))
        client.on_frame(wire.CallEnd(req.id, "worker died: cut"))
        with pytest.raises(CallFailed, match="cut"):
            await task

    run(go())


def test_call_sync_refuses_to_block_the_loop_and_call_needs_a_worker():
    async def go() -> None:
        calls.install(Node().send, asyncio.get_running_loop())
        with pytest.raises(CallFailed, match="await anycore.call"):
            calls.call_sync("x", "GET", "/")

    run(go())
    calls._client = None
    with pytest.raises(CallFailed, match="anycore worker"):
        asyncio.run(calls.call("x", "GET", "/"))


def test_call_needs_no_httpx_and_the_transport_says_what_to_add():
    code = ("import sys; sys.modules['httpx'] = None\n"
            "import anycore\n"
            "anycore.call\n"
            "try:\n    anycore.transport()\nexcept Exception as exc:\n    print(type(exc).__name__, exc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("CallFailed anycore.transport() needs httpx") and "requirements.txt" in out.stdout
