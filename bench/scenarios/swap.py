"""Scenario 2: replacing the code under load (anycore deploy, gunicorn HUP, uvicorn SIGHUP, Ray Serve redeploy).

Each system serves apps/version (answers "A") with 2 workers under the timeline client (16
keep-alive connections); 2 s in (quick mode: 1.5 s), app.py is rewritten to answer "B2" and the system's own way
of taking new code is started. Measured: the errors the client saw (failed connections,
timeouts, non-2xx), and the time from the start of the swap until 100 % of responses come
from the new code (the later of the last "A" and the first "B2" after it: counts a gap with
no answers at all as not new yet). For anycore the swap command is `anycore deploy` (CLI
start-up, upload and every phase included); for Ray, a serve.run with the new version.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common import APPS, Ctx
from load import ERR, OK, Timeline, run_timeline

SYSTEMS = ["anycore", "uvicorn", "gunicorn", "ray"]
CONNECTIONS = 16
OLD, NEW = b"A", b"B2"  # different lengths: a stale .pyc (same size and mtime second) cannot hide the change


def analyse(tl: Timeline) -> dict[str, Any]:
    swap = tl.marks["swap"]
    old = [t for t, o, b in tl.events if o == OK and b == OLD and t >= swap]
    last_old = max(old, default=swap)
    first_new = min((t for t, o, b in tl.events if o == OK and b == NEW and t >= last_old), default=None)
    width = 0.25
    buckets = []
    for bucket in tl.buckets(width):
        buckets.append({"t": bucket["t"], "err": bucket["err"], "old": 0.0, "new": 0.0})
    for t, o, b in tl.counted():
        if o == OK and int(t / width) < len(buckets):
            buckets[int(t / width)]["old" if b == OLD else "new"] += 1 / width
    return {
        "errors": sum(1 for _, o, _ in tl.events if o == ERR), "error_kinds": tl.error_kinds(),
        "requests": len(tl.events),
        "new_code_s": None if first_new is None else max(first_new, last_old) - swap,
        "command_s": tl.marks["command_done"] - swap if "command_done" in tl.marks else None,
        "swap_at": swap, "timeline": buckets,
    }


def one(ctx: Ctx, name: str) -> dict[str, Any]:
    system = ctx.systems[name]
    system.start(APPS / "version", ctx.env)
    source = (system.work / "app.py").read_text()

    def swap(tl: Timeline) -> None:
        (system.work / "app.py").write_text(source.replace(f'VERSION = "{OLD.decode()}"', f'VERSION = "{NEW.decode()}"'))
        tl.mark("swap")
        wait = system.swap()
        wait()
        tl.mark("command_done")

    seconds = ctx.mode.ray_timeline_s if name == "ray" else ctx.mode.timeline_s
    tl = asyncio.run(run_timeline(system.url, CONNECTIONS, seconds, [(ctx.mode.event_at, swap)]))
    return analyse(tl)


def run(ctx: Ctx) -> dict[str, Any]:
    def describe(m: dict[str, Any]) -> str:
        new = "never" if m["new_code_s"] is None else f"{m['new_code_s']:.2f} s"
        return f"{m['errors']} errors of {m['requests']}, 100% new code after {new}"

    result: dict[str, Any] = {"rows": [], "errors": {}, "connections": CONNECTIONS}
    return ctx.rounds(result, SYSTEMS, one, describe, "swap")
