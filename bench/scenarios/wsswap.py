"""Scenario 7: open WebSockets through a code swap.

50 clients each send a numbered message every 20 ms and time its echo. anycore: echo
`Session`s (apps/wsession) through several `anycore deploy`s, 1 s apart (each deploy moves
every session to the new release while the gateway holds the socket); reported: connections
lost, the round trip before (p50/p99) and during the deploys (p99 and the worst: the pause a
client sees). uvicorn `SIGHUP` and gunicorn `HUP` (apps/wsecho): a reload replaces the
workers, which own the sockets: reported is how many of the 50 connections were lost.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from common import APPS, Ctx
from load import ws_pinger

SYSTEMS = ["anycore", "uvicorn", "gunicorn"]
CLIENTS = 50


def pct(values: list[float], q: float) -> float | None:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else None


def baseline_s(ctx: Ctx) -> float:
    return 1.5 if ctx.mode.name == "quick" else 3.0


async def anycore_deploys(ctx: Ctx, deploys: int) -> dict[str, Any]:
    system = ctx.systems["anycore"]
    until = asyncio.Event()
    clients = asyncio.ensure_future(ws_pinger(system.url.replace("http://", "ws://") + "session", CLIENTS, until))
    t0 = time.monotonic()
    await asyncio.sleep(baseline_s(ctx))
    windows = []
    source = (system.work / "app.py").read_text()
    for i in range(deploys):
        (system.work / "app.py").write_text(source.replace('VERSION = "A"', f'VERSION = "B{i}"'))
        start = time.monotonic()
        await asyncio.to_thread(system.swap())
        windows.append((start, time.monotonic()))
        await asyncio.sleep(0.5 if ctx.mode.name == "quick" else 1.0)
    until.set()
    got = await clients
    samples: list[tuple[float, float]] = got["samples"]  # type: ignore[assignment]
    base = [rtt for t, rtt in samples if t < t0 + baseline_s(ctx)]
    during = [rtt for t, rtt in samples if any(s <= t <= e + 0.5 for s, e in windows)]
    width = 0.25
    buckets: dict[int, float] = {}
    for t, rtt in samples:
        k = int((t - t0) / width)
        buckets[k] = max(buckets.get(k, 0.0), rtt)
    return {"dropped": got["dropped"], "messages": len(samples), "deploys": deploys,
            "base_p50_ms": (pct(base, 0.5) or 0) * 1000, "base_p99_ms": (pct(base, 0.99) or 0) * 1000,
            "deploy_p99_ms": (pct(during, 0.99) or 0) * 1000, "deploy_max_ms": max(during, default=0) * 1000,
            "deploy_s": [e - s for s, e in windows],
            "windows": [(s - t0, e - t0) for s, e in windows],
            "max_rtt_timeline": [{"t": k * width, "max_ms": v * 1000} for k, v in sorted(buckets.items())]}


async def reload(ctx: Ctx, name: str, after: float) -> dict[str, Any]:
    system = ctx.systems[name]
    until = asyncio.Event()
    clients = asyncio.ensure_future(ws_pinger(system.url.replace("http://", "ws://"), CLIENTS, until))
    await asyncio.sleep(baseline_s(ctx))
    assert system.proc is not None
    os.kill(system.proc.pid, signal.SIGHUP)
    await asyncio.sleep(after)
    until.set()
    got = await clients
    return {"dropped": got["dropped"], "messages": len(got["samples"])}  # type: ignore[arg-type]


def run(ctx: Ctx) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": [], "errors": {}, "clients": CLIENTS}
    deploys = 2 if ctx.mode.name == "quick" else 5
    for name in ctx.order(SYSTEMS, 0):
        system = ctx.systems[name]
        with ctx.attempt(result, name) as ok:
            if not ok:
                continue
            system.start(APPS / ("wsession" if name == "anycore" else "wsecho"), ctx.env)
            if name == "anycore":
                m = asyncio.run(anycore_deploys(ctx, deploys))
                ctx.log(f"wsswap anycore: {m['dropped']} of {CLIENTS} connections lost over {deploys} deploys; round trip "
                        f"p50 {m['base_p50_ms']:.1f} ms before, worst {m['deploy_max_ms']:.1f} ms during the deploys")
            else:
                m = asyncio.run(reload(ctx, name, baseline_s(ctx)))
                ctx.log(f"wsswap {name}: {m['dropped']} of {CLIENTS} connections lost on reload")
            m["system"] = name
            result["rows"].append(m)
    return result
