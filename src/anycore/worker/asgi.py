"""Running one request of an ASGI 3 app inside a worker.

A ``Cycle`` is the worker's half of one request: ``receive`` hands out the body chunks the
node forwards (returning credit as the app consumes them), ``send`` turns ASGI messages
into frames (``http.response.start`` is held back and leaves together with the first body
chunk). A streamed response waits for credit when ``WINDOW`` bytes are unacknowledged, so
a slow client slows the app instead of filling memory. After ``Cancel`` (the client went
away) ``receive`` returns ``http.disconnect`` and ``send`` is a no-op.

Layer L1 (worker); runs in the worker process, on its event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any, Awaitable, Callable

from anycore import wire

ASGIApp = Callable[[dict[str, Any], Callable[[], Awaitable[dict[str, Any]]], Callable[[dict[str, Any]], Awaitable[None]]], Awaitable[None]]
ASGI_VERSION = {"version": "3.0", "spec_version": "2.3"}


class Cycle:
    __slots__ = (
        "id", "send_frame", "chunks", "body_done", "disconnected", "waiter", "status",
        "headers", "started", "complete", "credit", "credit_waiter", "task",
    )

    def __init__(self, req: wire.Req, send_frame: Callable[[wire.Frame], None]) -> None:
        self.id = req.id
        self.send_frame = send_frame
        self.chunks: deque[bytes] = deque()
        if req.body or not req.more:
            self.chunks.append(req.body)
        self.body_done = not req.more
        self.disconnected = False
        self.waiter: asyncio.Future[None] | None = None
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.started = False
        self.complete = False
        self.credit = wire.WINDOW
        self.credit_waiter: asyncio.Future[None] | None = None
        self.task: asyncio.Task[None] | None = None

    # -- frames from the node ------------------------------------------------------
    def feed(self, data: bytes, more: bool) -> None:
        self.chunks.append(data)
        self.body_done = not more
        self._wake()

    def add_credit(self, n: int) -> None:
        self.credit += n
        if self.credit > 0 and self.credit_waiter is not None and not self.credit_waiter.done():
            self.credit_waiter.set_result(None)

    def disconnect(self) -> None:
        self.disconnected = True
        self._wake()
        if self.credit_waiter is not None and not self.credit_waiter.done():
            self.credit_waiter.set_result(None)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    # -- the ASGI side ---------------------------------------------------------------
    async def receive(self) -> dict[str, Any]:
        while not self.chunks and not self.disconnected:
            if self.body_done and self.complete:
                break
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        if self.chunks and not self.disconnected:
            data = self.chunks.popleft()
            more = bool(self.chunks) or not self.body_done
            if data and not self.body_done:  # credit matters only while the body goes on
                self.send_frame(wire.Credit(self.id, len(data)))
            return {"type": "http.request", "body": data, "more_body": more}
        return {"type": "http.disconnect"}

    async def send(self, message: dict[str, Any]) -> None:
        if self.disconnected or self.complete:
            return
        kind = message["type"]
        if kind == "http.response.start":
            if self.status:
                raise RuntimeError("ASGI app sent http.response.start twice")
            self.status = int(message["status"])
            self.headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            return
        if kind != "http.response.body":
            raise RuntimeError(f"ASGI app sent unexpected message {kind!r} for an HTTP request")
        if not self.status:
            raise RuntimeError("ASGI app sent http.response.body before http.response.start")
        body = bytes(message.get("body", b""))
        more = bool(message.get("more_body", False))
        if not self.started:
            self.started = True
            self.send_frame(wire.Resp(self.id, self.status, self.headers, body, more))
        else:
            self.send_frame(wire.Body(self.id, body, more))
        if not more:
            self.complete = True
            self._wake()
            return
        self.credit -= len(body)
        while self.credit <= 0 and not self.disconnected:
            self.credit_waiter = asyncio.get_running_loop().create_future()
            await self.credit_waiter
            self.credit_waiter = None


def build_scope(req: wire.Req, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "http",
        "asgi": ASGI_VERSION,
        "http_version": req.http_version,
        "method": req.method,
        "scheme": req.scheme,
        "path": req.path,
        "raw_path": req.raw_path,
        "query_string": req.query,
        "root_path": req.root_path,
        "headers": req.headers,
        "client": req.client,
        "server": req.server,
        "state": state.copy() if state else {},
    }


class Lifespan:
    """ASGI lifespan for one worker, in uvicorn's "auto" mode: an app that raises before
    sending any lifespan message does not support the protocol, and that is fine."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.state: dict[str, Any] = {}
        self.supported = True
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task: asyncio.Task[None] | None = None

    async def startup(self) -> str | None:
        """Run startup; returns None on success, else the failure message."""
        scope = {"type": "lifespan", "asgi": ASGI_VERSION, "state": self.state}
        self.task = asyncio.ensure_future(self._run(scope))
        return await self._ask("lifespan.startup")

    async def shutdown(self) -> str | None:
        if not self.supported or self.task is None or self.task.done():
            return None
        return await self._ask("lifespan.shutdown")

    async def _ask(self, event: str) -> str | None:
        assert self.task is not None
        await self.events.put({"type": event})
        getter = asyncio.ensure_future(self.replies.get())
        await asyncio.wait([getter, self.task], return_when=asyncio.FIRST_COMPLETED)
        if not getter.done():
            getter.cancel()
            return None  # unsupported, or the app returned: nothing more to wait for
        reply = getter.result()
        if reply["type"].endswith(".failed"):
            return str(reply.get("message", "")) or f"{event} failed"
        return None

    async def _run(self, scope: dict[str, Any]) -> None:
        sent_any = False

        async def receive() -> dict[str, Any]:
            return await self.events.get()

        async def send(message: dict[str, Any]) -> None:
            nonlocal sent_any
            sent_any = True
            await self.replies.put(message)

        try:
            await self.app(scope, receive, send)
        except BaseException as exc:  # noqa: BLE001 - the app's failure is reported, not raised
            if not sent_any:
                self.supported = False
                return
            await self.replies.put({"type": "lifespan.startup.failed", "message": f"{type(exc).__name__}: {exc}"})


class SendWindow:
    """Flow control of one WebSocket (``wire.WS_WINDOW``). Towards the client: ``spend``
    counts a message, ``wait`` returns when the window has room again (the node sends
    ``Credit`` as the client's socket takes the bytes) or the socket closed, so an app that
    sends in a loop is slowed by its ``await``s and never buffers more than a window. From
    the client: ``took`` counts what the app received and says when to credit the node,
    which stops reading a client that is a window ahead of the app."""

    __slots__ = ("credit", "waiter", "closed", "received")

    def __init__(self) -> None:
        self.credit = wire.WS_WINDOW
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.received = 0  # client message bytes the app took, not yet credited to the node

    def took(self, n: int) -> int:
        """The app received ``n`` bytes of client messages: the credit to return now, if any
        (in batches of half a window; the node stops reading the client past a whole one)."""
        self.received += n
        if self.received < wire.WS_WINDOW // 2:
            return 0
        n, self.received = self.received, 0
        return n

    def spend(self, message: wire.WsMsg) -> None:
        self.credit -= wire.ws_size(message)

    def add(self, n: int) -> None:
        self.credit += n
        if self.credit > 0:
            self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self) -> None:
        while self.credit <= 0 and not self.closed:
            if self.waiter is None or self.waiter.done():
                self.waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self.waiter)  # several senders (a broadcast) may wait on it


class WsCycle:
    """The worker's half of one WebSocket: ASGI ``websocket.*`` messages <-> Ws* frames."""

    def __init__(self, frame: wire.WsOpen, send_frame: Callable[[wire.Frame], None]) -> None:
        self.id = frame.id
        self.send_frame = send_frame
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.inbox.put_nowait({"type": "websocket.connect"})
        self.closed = False
        self.window = SendWindow()
        self.task: asyncio.Task[None] | None = None

    def feed(self, frame: wire.Frame) -> None:
        if type(frame) is wire.WsMsg:
            message: dict[str, Any] = {"type": "websocket.receive"}
            if frame.text is not None:
                message["text"] = frame.text
            else:
                message["bytes"] = frame.data
            self.inbox.put_nowait(message)
        elif type(frame) is wire.Credit:
            self.window.add(frame.n)
        elif type(frame) is wire.WsClose:
            self.closed = True
            self.window.close()
            self.inbox.put_nowait({"type": "websocket.disconnect", "code": frame.code, "reason": frame.reason})

    async def receive(self) -> dict[str, Any]:
        message = await self.inbox.get()
        if message["type"] == "websocket.receive":
            text = message.get("text")
            credit = self.window.took(len(text) if text is not None else len(message.get("bytes") or b""))
            if credit and not self.closed:
                self.send_frame(wire.Credit(self.id, credit))
        return message

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if self.closed:
            if kind == "websocket.close":
                return
            raise OSError("the WebSocket is closed")  # what servers raise on send after disconnect
        if kind == "websocket.accept":
            headers = [(bytes(k), bytes(v)) for k, v in message.get("headers", ())]
            self.send_frame(wire.WsAccept(self.id, message.get("subprotocol"), headers))
        elif kind == "websocket.send":
            text = message.get("text")
            frame = wire.WsMsg(self.id, text, None if text is not None else bytes(message.get("bytes") or b""))
            self.send_frame(frame)
            self.window.spend(frame)
            await self.window.wait()
        elif kind == "websocket.close":
            self.closed = True
            self.window.close()
            self.send_frame(wire.WsClose(self.id, int(message.get("code", 1000)), str(message.get("reason") or "")))
        else:
            raise RuntimeError(f"ASGI app sent unexpected message {kind!r} on a WebSocket")


def build_ws_scope(frame: wire.WsOpen, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "websocket", "asgi": ASGI_VERSION, "http_version": frame.http_version, "scheme": frame.scheme, "path": frame.path,
        "raw_path": frame.raw_path, "query_string": frame.query, "root_path": frame.root_path,
        "headers": frame.headers, "client": frame.client, "server": frame.server,
        "subprotocols": frame.subprotocols, "state": state.copy(),
    }
