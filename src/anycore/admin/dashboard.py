"""The live dashboard's pages, mounted by the admin listener (``admin.server``).

    /                 the page (static/index.html): no build step, nothing from the internet
    /static/<file>    its own script and style sheet (package data in anycore/admin/static)
    /api/state        JSON: the node's snapshot (what ``ps --json`` shows), the current
                      rates per release, the 15-minute history and the recent events
    /api/events       server-sent events: one ``state`` frame per sample (every second)
                      with the snapshot and only what is new since the client's last frame

``routes(view)`` builds the table and the one ``History`` of this node: it subscribes to
the node's structured events (``NodeLog.watchers``) and samples ``view.stats`` once a
second on the node's loop (``history.Sampler``). A stream keeps no queue per client:
it remembers the last sequence it sent and asks the history for what is newer once per
tick, so a slow client costs one frame in the listener's write buffer, never a backlog.
At most ``MAX_STREAMS`` streams are open at once (503 beyond: a dashboard left open in
many tabs must not make the node compute snapshots for each of them forever).
"""

from __future__ import annotations

import asyncio
import json
import time
from importlib import resources
from typing import Any, AsyncIterator, Callable

from anycore.admin.history import EVENTS, INTERVAL, History, Sampler
from anycore.admin.routes import AdminRequest, AdminResponse, Routes
from anycore.ports import AdminView

MAX_STREAMS = 16
FRAME_EVENTS = 200  # events in one frame at most (a storm of events is cut to its newest)
RECENT_EVENTS = 100  # events in /api/state

# Every answer of the admin listener is ``cache-control: no-store`` (admin.server): a page
# reloaded after an upgrade of anycore gets the new script.
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}
# The page loads only itself: a browser refuses anything from another origin.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _static() -> dict[str, bytes]:
    """The page's files, read once from the package (they are package data)."""
    root = resources.files("anycore.admin") / "static"
    return {entry.name: entry.read_bytes() for entry in root.iterdir() if entry.is_file()}


def _json(value: Any, status: int = 200) -> AdminResponse:
    return AdminResponse(status, "application/json", json.dumps(value, separators=(",", ":")).encode() + b"\n")


def _type(name: str) -> str:
    return next((t for ext, t in TYPES.items() if name.endswith(ext)), "application/octet-stream")


class Dashboard:
    def __init__(self, view: AdminView) -> None:
        self.view = view
        self.history = History()
        self.sampler = Sampler(self.history, view.stats.snapshot, view.snapshot, time.time)
        self.files = _static()
        self.streams = 0
        view.log.watchers.append(self.history.record)

    def _started(self) -> None:
        self.sampler.start(asyncio.get_running_loop())

    def state(self, since: int, max_events: int, fresh: bool = True) -> dict[str, Any]:
        """``full``: everything kept is in this answer (a first read, or a reader whose
        sequence this history never reached — the node restarted under an open page).
        ``fresh``: a snapshot of now; else the last tick's (one per second for all streams)."""
        full = since == 0 or since > self.history.seq
        new = self.history.since(0 if full else since, max_events)
        snapshot = self.sampler.last if not fresh and self.sampler.last is not None else self.view.snapshot()
        return {"node": self.view.node_id, "t": time.time(), "interval": INTERVAL, "full": full,
                "snapshot": snapshot, "rates": self.history.latest(), **new}

    # -- handlers -----------------------------------------------------------------------
    async def page(self, request: AdminRequest) -> AdminResponse:
        self._started()
        return AdminResponse(200, TYPES[".html"], self.files["index.html"],
                             [("content-security-policy", CSP)])

    async def static(self, request: AdminRequest) -> AdminResponse:
        name = request.path.removeprefix("/static/")
        body = self.files.get(name)
        if body is None:
            return AdminResponse(404, body=f"no file {name!r} in the dashboard's static files\n".encode())
        return AdminResponse(200, _type(name), body)

    async def api_state(self, request: AdminRequest) -> AdminResponse:
        self._started()
        since = _since(request)
        if since is None:
            return _json({"error": "since must be a non-negative integer (a seq from an earlier answer)"}, 400)
        return _json(self.state(since, RECENT_EVENTS if since == 0 else EVENTS))

    async def api_events(self, request: AdminRequest) -> AdminResponse:
        self._started()
        since = _since(request)
        if since is None:
            return _json({"error": "since must be a non-negative integer (a seq from an earlier frame)"}, 400)
        if self.streams >= MAX_STREAMS:
            return AdminResponse(503, body=f"{MAX_STREAMS} dashboard streams are open already; close one\n".encode(),
                                 headers=[("retry-after", "5")])
        self.streams += 1
        return AdminResponse(200, "text/event-stream", Stream(self, self._frames(since)), [("x-accel-buffering", "no")])

    async def _frames(self, since: int) -> AsyncIterator[bytes]:
        yield b"retry: 2000\n\n"
        fresh = True
        while True:
            state = self.state(since, FRAME_EVENTS, fresh)
            fresh = False
            since = state["seq"]
            yield frame(state)
            await self.sampler.next_tick(2 * INTERVAL)

    def table(self) -> Routes:
        table: Routes = {"/": self.page, "/index.html": self.page, "/api/state": self.api_state,
                         "/api/events": self.api_events}
        for name in self.files:
            table[f"/static/{name}"] = self.static
        return table

    def close(self) -> None:
        self.sampler.close()
        if self.history.record in self.view.log.watchers:
            self.view.log.watchers.remove(self.history.record)


class Stream:
    """One open ``/api/events``: the frames, and its place among ``MAX_STREAMS``, given back
    exactly once — when the listener closes it, or when it ends or fails — also if it was
    never started (a HEAD, a client gone before the first chunk), which a generator's own
    ``finally`` would miss."""

    def __init__(self, board: Dashboard, frames: AsyncIterator[bytes]) -> None:
        self.board = board
        self.frames = frames
        self.open = True

    def __aiter__(self) -> "Stream":
        return self

    async def __anext__(self) -> bytes:
        try:
            return await self.frames.__anext__()
        except BaseException:
            self._release()
            raise

    async def aclose(self) -> None:
        try:
            await self.frames.aclose()  # type: ignore[attr-defined]
        finally:
            self._release()

    def _release(self) -> None:
        if self.open:
            self.open = False
            self.board.streams -= 1


def frame(state: dict[str, Any]) -> bytes:
    """One server-sent event: ``id`` is the sequence a reconnecting browser sends back
    (Last-Event-ID), so it gets only what it missed."""
    data = json.dumps(state, separators=(",", ":"))
    return f"id: {state['seq']}\nevent: state\ndata: {data}\n\n".encode()


def _since(request: AdminRequest) -> int | None:
    raw = request.query.get("since") or request.headers.get("last-event-id") or "0"
    return int(raw) if raw.isdigit() else None


def routes(view: AdminView, closers: list[Callable[[], None]] | None = None) -> Routes:
    """The dashboard's routes for ``view`` (one history per call: call it once per node).
    ``closers`` gets the board's ``close`` (its sampler and log watcher): the node calls it
    once the admin listener has stopped."""
    board = Dashboard(view)
    if closers is not None:
        closers.append(board.close)
    try:
        board._started()  # the listener mounts us on the node's loop: history starts now
    except RuntimeError:
        pass  # no running loop (a test building the table): it starts with the first request
    return board.table()


__all__ = ["routes", "Dashboard", "Stream", "frame", "EVENTS"]
