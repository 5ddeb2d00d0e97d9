"""Scenario 3: kill -9 of one worker under load; errors, and time until capacity is back.

Each system serves the 1 ms-CPU app with 2 workers (so the server, not the client, limits
throughput and losing a worker shows) under the timeline client (16 connections); 2 s in (quick mode: 1.5 s),
one worker gets SIGKILL. Measured: the errors the client saw; when a replacement process
appeared (a new sibling of the killed one; for Ray a process newly titled ServeReplica); and when
capacity was back: the end of the dip (see analyse(); 0 when no 1 s window fell below 80 %
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


def analyse(tl: Timeline) -> dict[str, Any]:
    """Capacity back: the end of the dip. Among the 1 s windows from the kill on, take the lowest;
    if even that one reaches BACK x the rate before the kill there was no dip (0 s), else the
    capacity is back at the first later window that reaches it (None: not within the run)."""
    kill = tl.marks["kill"]
    buckets = tl.buckets(WIDTH)
    baseline = median([b["ok"] for b in buckets if 0.5 <= b["t"] and b["t"] + WIDTH <= kill])
    per_window = int(1 / WIDTH)
    windows = []  # (start, mean rate) of every full 1 s window from the bucket holding the kill on
    for i, b in enumerate(buckets):
        window = buckets[i:i + per_window]
        if b["t"] + WIDTH > kill and len(window) == per_window:
            windows.append((b["t"], sum(w["ok"] for w in window) / per_window))
    back = None
    lowest = min(range(len(windows)), key=lambda k: windows[k][1], default=None)
    if lowest is not None and baseline:
        if windows[lowest][1] >= BACK * baseline:
            back = 0.0
        else:
            back = next((max(0.0, t - kill) for t, rate in windows[lowest + 1:] if rate >= BACK * baseline), None)
    return {
        "errors": sum(1 for _, o, _ in tl.events if o == ERR), "error_kinds": tl.error_kinds(), "requests": len(tl.events),
        "baseline_rps": baseline,
        "dip_ratio": windows[lowest][1] / baseline if lowest is not None and baseline else None,
        "capacity_back_s": back, "replaced_s": tl.marks["replaced"] - kill if "replaced" in tl.marks else None,
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
    result: dict[str, Any] = {"rows": [], "errors": {}, "connections": CONNECTIONS, "back_threshold": BACK}
    for r in range(ctx.mode.rounds):
        for name in ctx.order(SYSTEMS, r):
            with ctx.attempt(result, name) as ok:
                if ok:
                    m = one(ctx, name)
                    m.update(system=name, round=r)
                    result["rows"].append(m)
                    back = "not within the run" if m["capacity_back_s"] is None else f"{m['capacity_back_s']:.2f} s"
                    ctx.log(f"crash r{r} {name}: {m['errors']} errors of {m['requests']}, capacity back after {back}")
    return result
