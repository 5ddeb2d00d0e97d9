"""The dashboard's handlers, called directly (as the admin listener calls them) on a fake
node view: real NodeLog and RequestStats, a snapshot dict."""

from __future__ import annotations

import asyncio
import io
import json
from typing import Any

from anycore.admin import dashboard
from anycore.admin.routes import AdminRequest
from anycore.log import NodeLog
from anycore.stats import RequestStats


class FakeView:
    def __init__(self) -> None:
        self.node_id = "n-test"
        self.log = NodeLog(io.StringIO())
        self.stats = RequestStats()
        self.services: list[dict[str, Any]] = [{"name": "shop", "state": "running", "release": "shop@a", "live": None}]

    def snapshot(self) -> dict[str, Any]:
        return {"node": self.node_id, "gateway": "http://127.0.0.1:1", "services": self.services, "cluster": None}


def get(path: str, **query: str) -> AdminRequest:
    return AdminRequest("GET", path, dict(query), {})


def parse(chunk: bytes) -> dict[str, Any]:
    fields = dict(line.split(": ", 1) for line in chunk.decode().strip().splitlines())
    assert fields["event"] == "state"
    state: dict[str, Any] = json.loads(fields["data"])
    assert int(fields["id"]) == state["seq"]
    return state


def test_page_and_static_files_are_served_from_the_package() -> None:
    async def go() -> None:
        table = dashboard.routes(FakeView())
        page = await table["/"](get("/"))
        assert page.status == 200 and page.content_type.startswith("text/html")
        assert b"/static/app.js" in page.body and b"/static/style.css" in page.body  # type: ignore[operator]
        assert "default-src 'none'" in dict(page.headers)["content-security-policy"]
        script = await table["/static/app.js"](get("/static/app.js"))
        assert script.status == 200 and script.content_type.startswith("text/javascript") and b"EventSource" in script.body  # type: ignore[operator]
        assert "http" not in " ".join(k for k in table if k.startswith("/static/"))
        for path in [k for k in table if k.startswith("/static/")]:  # nothing loaded from elsewhere
            body = (await table[path](get(path))).body
            assert isinstance(body, bytes), path
            body = body.replace(b"http://www.w3.org/2000/svg", b"")  # an SVG's namespace name, not a URL it loads
            assert b"https://" not in body and b"http://" not in body and b"//cdn" not in body, path
        missing = await dashboard.Dashboard(FakeView()).static(get("/static/nope.js"))
        assert missing.status == 404
    asyncio.run(go())


def test_state_has_snapshot_rates_and_events_and_refuses_a_bad_since() -> None:
    async def go() -> None:
        view = FakeView()
        table = dashboard.routes(view)
        view.log.event("deploy.phase", "shop", deploy="d1", release="shop@b", phase="warm")
        answer = await table["/api/state"](get("/api/state"))
        state = json.loads(answer.body)  # type: ignore[arg-type]
        assert state["node"] == "n-test" and state["full"] and state["snapshot"]["services"][0]["name"] == "shop"
        assert [e["event"] for e in state["events"]] == ["deploy.phase"] and state["events"][0]["kind"] == "deploy"
        bad = await table["/api/state"](get("/api/state", since="-1"))
        assert bad.status == 400 and b"since" in bad.body  # type: ignore[operator]
    asyncio.run(go())


def test_event_stream_sends_a_frame_per_tick_with_only_what_is_new() -> None:
    async def go() -> None:
        view = FakeView()
        board = dashboard.Dashboard(view)
        board.sampler.interval = 0.05  # ticks on the real loop clock, quickly
        answer = await board.api_events(get("/api/events"))
        assert answer.status == 200 and answer.content_type == "text/event-stream"
        stream = answer.body
        assert not isinstance(stream, bytes)
        assert (await stream.__anext__()).startswith(b"retry:")
        first = parse(await stream.__anext__())
        assert first["full"] and first["events"] == []
        view.stats.record("shop", "shop@a", 200, 0.004, 0.0)
        view.log.event("worker.exited", "shop", release="shop@a", worker=3, cause="killed by signal 9 (SIGKILL)")
        seen: list[dict[str, Any]] = []
        while not any(s["points"] for f in seen for s in f["series"]):
            seen.append(parse(await asyncio.wait_for(stream.__anext__(), 5)))
        events = [e for f in seen for e in f["events"]]
        assert [(e["event"], e["kind"]) for e in events] == [("worker.exited", "crash")]  # once, not in every frame
        assert not any(f["full"] for f in seen)
        assert board.streams == 1
        await stream.aclose()  # type: ignore[attr-defined]  # the client left
        assert board.streams == 0
        board.close()
        assert board.history.record not in view.log.watchers
    asyncio.run(go())


def test_streams_are_bounded() -> None:
    async def go() -> None:
        board = dashboard.Dashboard(FakeView())
        opened = [await board.api_events(get("/api/events")) for _ in range(dashboard.MAX_STREAMS)]
        refused = await board.api_events(get("/api/events"))
        assert refused.status == 503 and ("retry-after", "5") in refused.headers
        for answer in opened:
            await answer.body.aclose()  # type: ignore[union-attr]  # closed before its first chunk (a HEAD)
        assert board.streams == 0  # every place given back, also of streams never started
        again = await board.api_events(get("/api/events"))
        assert again.status == 200
        await again.body.aclose()  # type: ignore[union-attr]
        board.close()
    asyncio.run(go())


def test_a_reader_ahead_of_the_history_gets_everything_again() -> None:
    async def go() -> None:
        board = dashboard.Dashboard(FakeView())
        state = json.loads((await board.api_state(get("/api/state", since="999"))).body)  # type: ignore[arg-type]
        assert state["full"]
        board.close()
    asyncio.run(go())
