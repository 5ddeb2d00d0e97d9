"""Scenario 9 (issue 15): the native gateway against the Python one and the peers.

hello, 1 ms of CPU and FastAPI apps, 2 workers per system, `wrk -t1` at c=32 and c=256 (both in quick
mode too: the stage-1 gate is set at both): req/s, p99, server CPU per request summed over
every process of the system, and the gateway's own CPU per request (the processes
native_systems.gateway_procs names: anycore's node, anycore-gateway, nginx). Stage-1 gate:
anycore-gateway ≤ 10 core-µs per hello request, and anycore-native ≥ 1.0× uvicorn on hello
at c=32 and c=256. Systems take turns (ABAB), each started fresh per app and round.
``BENCH_NATIVE_APPS=hello`` runs one app only; ``BENCH_NATIVE_SLOTS=32,64`` adds anycore-native
with those slots per worker (anycore-native-s32, ...: what the default of 8 costs here).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from common import APPS, Ctx, load1
from load import wrk
from native_systems import AnycoreNative, gateway_procs
from procs import cpu_seconds
from systems import http_get

SYSTEMS = ["anycore", "anycore-native", "uvicorn", "granian-asgi", "nginx-uvicorn"]
APP_NAMES = os.environ.get("BENCH_NATIVE_APPS", "hello,cpu1ms,fastapi").split(",")  # e.g. BENCH_NATIVE_APPS=hello
CONNECTIONS = (32, 256)
EXPECTED = {"hello": b"Hello, world!", "fastapi": b'{"hello":"world"}', "cpu1ms": b""}  # cpu1ms: "ITERS RESULT"


def run(ctx: Ctx) -> dict[str, Any]:
    names = list(SYSTEMS)
    if "anycore-native" in ctx.systems:
        extra = [AnycoreNative(int(n)) for n in os.environ.get("BENCH_NATIVE_SLOTS", "").split(",") if n.strip()]
        at = names.index("anycore-native") + 1
        names[at:at] = [system.name for system in extra]
        ctx = dataclasses.replace(ctx, systems={**ctx.systems, **{system.name: system for system in extra}})
    result: dict[str, Any] = {"rows": [], "errors": {}, "connections": list(CONNECTIONS), "apps": APP_NAMES,
                              "systems": [n for n in names if n in ctx.systems]}
    for app in APP_NAMES:
        for r in range(ctx.mode.rounds):
            for name in ctx.order(names, r):
                system = ctx.systems[name]
                with ctx.attempt(result, name) as ok:
                    if not ok:
                        continue
                    system.start(APPS / app, ctx.env)
                    status, body = http_get(system.url)
                    if body != EXPECTED[app] and not (app == "cpu1ms" and body.startswith(ctx.env["BENCH_CPU_ITERS"].encode() + b" ")):
                        raise RuntimeError(f"{name} answered {status} {body[:100]!r}, expected {EXPECTED[app]!r}")
                    for c in CONNECTIONS:
                        wrk(system.url, c, ctx.mode.warmup or 1)
                        procs, gateway = system.procs(), gateway_procs(system)
                        before, gw_before, load_before = cpu_seconds(procs), cpu_seconds(gateway), load1()
                        m = wrk(system.url, c, ctx.mode.duration)
                        after = system.procs()
                        cpu = cpu_seconds(after) - before
                        gw = cpu_seconds({pid: p for pid, p in after.items() if pid in gateway}) - gw_before
                        n = m["requests"] or float("nan")
                        m.update(app=app, c=c, round=r, system=name, load_before=load_before, load_after=load1(),
                                 cpu_us_per_req=cpu * 1e6 / n, gateway_us_per_req=gw * 1e6 / n if gateway else float("nan"))
                        result["rows"].append(m)
                        ctx.log(f"native {app} c={c} r{r} {name}: {m['rps']:.0f} req/s p99 {m['p99']:.2f} ms, "
                                f"{m['cpu_us_per_req']:.1f} µs/req (gateway {m['gateway_us_per_req']:.1f}), "
                                f"{m['sockerr']:.0f} socket errors, {m['non2xx']:.0f} non-2xx")
    return result
