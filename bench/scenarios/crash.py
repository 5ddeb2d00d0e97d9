"""Scenario 3: kill -9 of one worker under load; errors, and time until capacity is back.

Each system serves the 1 ms-CPU app with 2 workers (so the server, not the client, limits
throughput and losing a worker shows) under the timeline client (16 connections); 2 s in (quick mode: 1.5 s),
one worker gets SIGKILL. Measured: the errors the client saw; when a replacement process
appeared (a new sibling of the killed one; for Ray a process newly titled ServeReplica); and when
capacity was back: the end of the dip (see capacity(); 0 when no 1 s window fell below 80 %
of the rate before the kill: the 2 cores are shared with the client, so one surviving worker
can carry most of it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from common import APPS, Ctx, median
from load import ERR, Timeline, run_timeline
from procs import snapshot

SYSTEMS = ["anycore", "uvicorn", "gunicorn", "ray"]
CONNECTIONS = 16
WIDTH = 0.25
BACK = 0.8
DIP_SEARCH = 2.0


def capacity(buckets: list[dict[str, float]], kill: float) -> dict[str, float | None]:
    """Capacity back: the end of the dip the kill caused. The dip starts at the kill: its bottom is
    the lowest 1 s window starting within DIP_SEARCH s after it (a later one is other noise).
    If even that window reaches BACK x the rate before the kill there was no dip (0 s); else
    capacity is back at the first later window that reaches it (None: not within the run)."""
    baseline = median([b["ok"] for b in buckets if 0.5 <= b["t"] and b["t"] + WIDTH <= kill])
    per_window = int(1 / WIDTH)
    windows = []  # (start, mean rate) of every full 1 s window from the bucket holding the kill on
    for i, b in enumerate(buckets):
        window = buckets[i:i + per_window]
        if b["t"] + WIDTH > kill and len(window) == per_window:
            windows.append((b["t"], sum(w["ok"] for w in window) / per_window))
    early = [k for k, (t, _) in enumerate(windows) if t <= kill + DIP_SEARCH]
    lowest = min(early, key=lambda k: windows[k][1], default=None)
    if lowest is None or not baseline:
        return {"baseline_rps": baseline, "dip_ratio": None, "capacity_back_s": None}
    back: float | None = 0.0
    if windows[lowest][1] < BACK * baseline:
        back = next((max(0.0, t - kill) for t, rate in windows[lowest + 1:] if rate >= BACK * baseline), None)
    return {"baseline_rps": baseline, "dip_ratio": windows[lowest][1] / baseline, "capacity_back_s": back}


def analyse(tl: Timeline) -> dict[str, Any]:
    kill = tl.marks["kill"]
    buckets = tl.buckets(WIDTH)
    return {
        "errors": sum(1 for _, o, _ in tl.events if o == ERR), "error_kinds": tl.error_kinds(), "requests": len(tl.events),
        **capacity(buckets, kill),
        "replaced_s": tl.marks["replaced"] - kill if "replaced" in tl.marks else None,
        "kill_at": kill, "timeline": buckets,
    }


def one(ctx: Ctx, name: str) -> dict[str, Any]:
    system = ctx.systems[name]
    system.start(APPS / "cpu1ms", ctx.env)
    victim = sorted(system.worker_pids())[0]
    ray = name == "ray"

    def kill(tl: Timeline) -> None:
        procs = snapshot()
        known, parent = set(procs), procs[victim].ppid
        # Ray may run the new replica in a worker process it had started before (a known pid):
        # what is new there is a process with a ServeReplica title that had none.
        replicas = set(system.worker_pids()) if ray else set()
        tl.mark("kill")
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if ray:
                fresh = [p for p in system.worker_pids() if p not in replicas]
            else:
                fresh = [p.pid for p in snapshot().values() if p.ppid == parent and p.pid not in known]
            if fresh:
                tl.mark("replaced")
                return
            time.sleep(0.01)

    seconds = ctx.mode.ray_timeline_s if ray else ctx.mode.timeline_s
    tl = asyncio.run(run_timeline(system.url, CONNECTIONS, seconds, [(ctx.mode.event_at, kill)]))
    return analyse(tl)


def run(ctx: Ctx) -> dict[str, Any]:
    def describe(m: dict[str, Any]) -> str:
        back = "not within the run" if m["capacity_back_s"] is None else f"{m['capacity_back_s']:.2f} s"
        return f"{m['errors']} errors of {m['requests']}, capacity back after {back}"

    result: dict[str, Any] = {"rows": [], "errors": {}, "connections": CONNECTIONS, "back_threshold": BACK}
    return ctx.rounds(result, SYSTEMS, one, describe, "crash")
