"""A real browser for the tests: Debian's chromium, headless, driven over the DevTools
protocol (CDP) with the ``websockets`` client — no npm, no driver binary.

``Chromium`` starts chromium with its own temporary profile and ``--remote-debugging-port=0``;
chromium writes the port it took (and the browser target's path) into the profile's
``DevToolsActivePort`` file, which we wait for with a deadline. One process serves the
test session; each test's ``Browser`` has its own DevTools connection and its own browser
contexts (disposed at its end), so no state leaks from one test to the next. One WebSocket to the
browser target carries everything: pages are targets attached with ``flatten`` sessions,
so each command names its ``sessionId`` and each event comes back with it. A page records
what would make a test fail — ``Runtime.exceptionThrown``, ``console.error``, a ``Log``
entry of level error — and ``Page.errors`` lists them.

Waiting is always for a condition in the page (``wait_for(js)``) with a deadline, never a
fixed sleep. Shutdown is bounded: at exit SIGTERM, then SIGKILL, 5 s each.
Screenshots go to ``artefacts()``: ``$ANYCORE_TEST_ARTEFACTS`` or ``tests/artefacts/``.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import websockets

CHROMIUM = os.environ.get("ANYCORE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--disable-extensions", "--mute-audio", "--hide-scrollbars",
         "--remote-debugging-port=0"]
START_BOUND = 30.0
CALL_BOUND = 20.0


def artefacts() -> Path:
    path = Path(os.environ.get("ANYCORE_TEST_ARTEFACTS") or Path(__file__).parent / "artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def need_chromium() -> str:
    """The chromium binary; CI (``.ci/run`` installs it) fails without one, elsewhere the
    browser tests are skipped with what to install."""
    if os.path.exists(CHROMIUM):
        return CHROMIUM
    message = f"no chromium at {CHROMIUM}: apt-get install -y chromium (or set ANYCORE_CHROMIUM)"
    if os.environ.get("ANYCORE_REQUIRE_BROWSER"):
        pytest.fail(message)
    pytest.skip(message)


class BrowserError(AssertionError):
    pass


class Chromium:
    """The chromium process: one for the whole test session (``chromium()``), each test
    talking to it through its own ``Browser`` (its own DevTools connection and browser
    contexts), so a test pays for a context, not for a browser start."""

    def __init__(self) -> None:
        self.profile = tempfile.mkdtemp(prefix="anycore-chromium-")
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> "Chromium":
        binary = need_chromium()
        log = Path(self.profile) / "chromium.log"
        self.proc = subprocess.Popen([binary, *FLAGS, f"--user-data-dir={self.profile}", "--window-size=1440,1000",
                                      "about:blank"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(log, "wb"))
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + START_BOUND
        while not (port_file.exists() and len(port_file.read_text().split()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise BrowserError(f"chromium did not open its DevTools port within {START_BOUND}s:\n"
                                   f"{log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.05)
        port, path = port_file.read_text().split()[:2]
        self.url = f"ws://127.0.0.1:{port}{path}"
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM, then SIGKILL, each bounded; then the profile goes."""
        if self.proc is not None and self.proc.poll() is None:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                self.proc.send_signal(sig)
                try:
                    self.proc.wait(5.0)
                    break
                except subprocess.TimeoutExpired:
                    continue
        shutil.rmtree(self.profile, ignore_errors=True)


_shared: Chromium | None = None


def chromium() -> Chromium:
    """The session's chromium, started on first use (again if it died), stopped at exit."""
    global _shared
    if _shared is None or not _shared.alive:
        if _shared is None:
            atexit.register(lambda: _shared.stop() if _shared is not None else None)
        else:
            _shared.stop()
        _shared = None
        _shared = Chromium().start()
    return _shared


class Browser:
    """One test's view of chromium: a DevTools connection, and browser contexts of its own
    (disposed with their pages on close), so tests share no cookies, storage or tabs."""

    def __init__(self, width: int = 1440, height: int = 1000) -> None:
        self.width, self.height = width, height
        self.ws: Any = None
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.pages: dict[str, Page] = {}  # session id -> page
        self.contexts: list[str] = []
        self.reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> "Browser":
        process = await asyncio.to_thread(chromium)
        self.ws = await websockets.connect(process.url, max_size=None, ping_interval=None)
        self.reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                message = json.loads(raw)
                if "id" in message:
                    future = self.pending.pop(message["id"], None)
                    if future is not None and not future.done():
                        if "error" in message:
                            future.set_exception(BrowserError(f"CDP error: {message['error']}"))
                        else:
                            future.set_result(message.get("result", {}))
                elif (page := self.pages.get(message.get("sessionId", ""))) is not None:
                    page.on_event(message["method"], message.get("params", {}))
        except websockets.ConnectionClosed:
            pass
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(BrowserError("chromium closed the DevTools connection"))

    async def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        call_id = next(self.ids)
        message: dict[str, Any] = {"id": call_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        await self.ws.send(json.dumps(message))
        try:
            return await asyncio.wait_for(future, CALL_BOUND)
        except asyncio.TimeoutError:
            raise BrowserError(f"chromium did not answer {method} within {CALL_BOUND}s") from None

    async def new_context(self) -> str:
        """A fresh browser context: its own cookies and storage, as another person's browser."""
        context = str((await self.send("Target.createBrowserContext", {"disposeOnDetach": True}))["browserContextId"])
        self.contexts.append(context)
        return context

    async def open(self, url: str, context: str | None = None) -> "Page":
        """A new page in ``context`` (default: this browser's first context, made on demand)."""
        params: dict[str, Any] = {"url": "about:blank",
                                  "browserContextId": context or (self.contexts[0] if self.contexts else await self.new_context())}
        target = (await self.send("Target.createTarget", params))["targetId"]
        session = (await self.send("Target.attachToTarget", {"targetId": target, "flatten": True}))["sessionId"]
        page = self.pages[session] = Page(self, session)
        for domain in ("Page", "Runtime", "Log"):
            await page.send(f"{domain}.enable")
        await page.send("Emulation.setDeviceMetricsOverride",
                        {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False})
        await page.goto(url)
        return page

    async def close(self) -> None:
        """Dispose of this browser's contexts (their pages close with them) and disconnect;
        the chromium process stays for the next test."""
        if self.ws is not None:
            for context in self.contexts:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(self.send("Target.disposeBrowserContext", {"browserContextId": context}), 5.0)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2.0)
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader


class Page:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session
        self.errors: list[str] = []  # JS exceptions and console errors: a test fails on any
        self.console: list[str] = []
        self.loaded = asyncio.Event()

    def on_event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            self.errors.append(f"exception: {text} at {details.get('url', '')}:{details.get('lineNumber', '?')}")
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            self.console.append(f"{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                self.errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") == "error":
                self.errors.append(f"log: {entry.get('text')} ({entry.get('url', '')})")
        elif method == "Page.loadEventFired":
            self.loaded.set()

    async def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.browser.send(method, params, self.session)

    async def goto(self, url: str, timeout: float = 15.0) -> None:
        self.loaded.clear()
        result = await self.send("Page.navigate", {"url": url})
        if result.get("errorText"):
            raise BrowserError(f"could not open {url}: {result['errorText']}")
        try:
            await asyncio.wait_for(self.loaded.wait(), timeout)
        except asyncio.TimeoutError:
            raise BrowserError(f"{url} did not finish loading within {timeout}s") from None

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression!r} threw: {result['exceptionDetails'].get('exception', {}).get('description')}")
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0, what: str = "") -> Any:
        """Evaluate ``expression`` until it is truthy; fail after ``timeout`` seconds with the
        page's text (what a person would have seen) and any errors."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                text = await self.evaluate("document.body ? document.body.innerText.slice(0, 3000) : ''")
                raise BrowserError(f"timed out after {timeout}s waiting for {what or expression}; errors: {self.errors}\n"
                                   f"--- page text ---\n{text}")
            await asyncio.sleep(0.1)

    async def type(self, selector: str, text: str) -> None:
        """Replace an input's text as a person typing would (the browser's own input events)."""
        await self.send("Page.bringToFront")
        await self.evaluate(f"(() => {{ const el = document.querySelector({json.dumps(selector)}); el.focus(); el.select(); }})()")
        await self.send("Input.insertText", {"text": text})

    async def press_enter(self, selector: str) -> None:
        """Enter in ``selector``, as a key press (input goes to the page in front)."""
        await self.send("Page.bringToFront")
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        for kind in ("keyDown", "keyUp"):
            await self.send("Input.dispatchKeyEvent", {"type": kind, "key": "Enter", "code": "Enter",
                                                      "windowsVirtualKeyCode": 13, "text": "\r" if kind == "keyDown" else ""})

    async def click(self, selector: str) -> None:
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def screenshot(self, name: str, full_page: bool = True) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            size = await self.send("Page.getLayoutMetrics")
            content = size.get("cssContentSize") or size["contentSize"]
            params.update(captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": content["width"],
                                                             "height": min(content["height"], 4000), "scale": 1})
        data = (await self.send("Page.captureScreenshot", params))["data"]
        path = artefacts() / name
        path.write_bytes(base64.b64decode(data))
        return path

    def assert_no_errors(self) -> None:
        if self.errors:
            raise BrowserError("the page's JavaScript failed:\n" + "\n".join(self.errors))


class RoutesServer:
    """A stand-in for the admin listener, for tests of the page alone: serves an
    ``admin.routes`` table on 127.0.0.1 (one request per connection, a streamed body
    written chunk by chunk). ``url`` is its base; ``close`` ends open streams, bounded."""

    def __init__(self, routes: dict[str, Any]) -> None:
        self.routes = routes
        self.server: asyncio.AbstractServer | None = None
        self.url = ""
        self.handlers: set[asyncio.Task[Any]] = set()

    async def __aenter__(self) -> "RoutesServer":
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.handlers):
            task.cancel()
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5.0)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            pass  # the test is over: closing
        finally:
            self.handlers.discard(task)
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        from anycore.admin.routes import AdminRequest
        from urllib.parse import parse_qsl, urlsplit

        routes = self.routes
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            lines = head.decode("latin-1").split("\r\n")
            method, target, _ = lines[0].split(" ", 2)
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
            url = urlsplit(target)
            handler = routes.get(url.path)
            if handler is None:
                writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                return
            answer = await handler(AdminRequest(method, url.path, dict(parse_qsl(url.query)), headers))
            extra = "".join(f"{k}: {v}\r\n" for k, v in answer.headers)
            streamed = not isinstance(answer.body, bytes)
            length = "" if streamed else f"content-length: {len(answer.body)}\r\n"  # type: ignore[arg-type]
            writer.write(f"HTTP/1.1 {answer.status} X\r\ncontent-type: {answer.content_type}\r\n{length}{extra}"
                         f"connection: close\r\n\r\n".encode())
            if not streamed:
                writer.write(answer.body)  # type: ignore[arg-type]
                return
            body = answer.body
            try:
                async for chunk in body:  # type: ignore[union-attr]
                    writer.write(chunk)
                    await writer.drain()
            finally:
                await body.aclose()  # type: ignore[union-attr]
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
