"""Scenario 8: WSGI apps (Flask JSON route, Django view of 20 template rows), 2 workers each.

anycore's own WSGI runner against gunicorn sync, gunicorn gthread (8 threads) and granian's
WSGI interface, each system in turn (ABAB), `wrk -t1` at each -c, server CPU per request
over all of the system's processes. `BENCH_WSGI_SLOTS=1,2,4` adds anycore with those slots
(how the default slots for WSGI services were chosen); `BENCH_WSGI_ROUNDS=N` overrides the
mode's number of rounds (e.g. 2 alternating rounds of a --quick run).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from common import APPS, Ctx, load1
from load import wrk
from procs import cpu_seconds
from systems import http_get
from wsgi_systems import AnycoreSlots, Granian, GunicornGthread, GunicornSync

APP_NAMES = ["flaskjson", "djangorows"]
EXPECTED = {"flaskjson": b'"message":"Hello, world!"', "djangorows": b"<td>Item 19</td>"}


def run(ctx: Ctx) -> dict[str, Any]:
    slots = [int(s) for s in os.environ.get("BENCH_WSGI_SLOTS", "").split(",") if s.strip()]
    peers = {"gunicorn-sync": ("gunicorn", GunicornSync()), "gunicorn-gthread": ("gunicorn", GunicornGthread()),
             "granian": ("granian", Granian())}
    systems: dict[str, Any] = {}
    if "anycore" in ctx.systems:
        systems["anycore"] = ctx.systems["anycore"]
        for n in slots:
            systems[f"anycore-s{n}"] = AnycoreSlots(n)
    for name, (venv, system) in peers.items():
        if venv in ctx.systems or venv == "granian":  # granian is a peer of this scenario only
            systems[name] = system
    local = dataclasses.replace(ctx, systems=systems)
    names = list(systems)
    result: dict[str, Any] = {"rows": [], "errors": {}, "connections": list(ctx.mode.connections), "apps": APP_NAMES,
                              "systems": names}
    for app in APP_NAMES:
        for r in range(int(os.environ.get("BENCH_WSGI_ROUNDS") or ctx.mode.rounds)):
            for name in local.order(names, r):
                system = systems[name]
                with local.attempt(result, name) as ok:
                    if not ok:
                        continue
                    system.start(APPS / app, ctx.env)
                    status, body = http_get(system.url)
                    if status != 200 or EXPECTED[app] not in body:
                        raise RuntimeError(f"{name} answered {status} {body[:200]!r}")
                    for c in ctx.mode.connections:
                        if ctx.mode.warmup:
                            wrk(system.url, c, ctx.mode.warmup)
                        procs, load_before = system.procs(), load1()
                        before, main_before = cpu_seconds(procs), procs[system.proc.pid].cpu_s
                        m = wrk(system.url, c, ctx.mode.duration)
                        procs = system.procs()
                        cpu, main = cpu_seconds(procs) - before, procs[system.proc.pid].cpu_s - main_before
                        m.update(app=app, c=c, round=r, system=name, load_before=load_before, load_after=load1(),
                                 cpu_us_per_req=cpu * 1e6 / m["requests"] if m["requests"] else float("nan"),
                                 main_us_per_req=main * 1e6 / m["requests"] if m["requests"] else float("nan"))
                        result["rows"].append(m)
                        ctx.log(f"wsgi {app} c={c} r{r} {name}: {m['rps']:.0f} req/s p50 {m['p50']:.2f} "
                                f"p99 {m['p99']:.2f} ms, CPU {m['cpu_us_per_req']:.0f} µs/req, "
                                f"{m['sockerr']:.0f} socket errors, {m['non2xx']:.0f} non-2xx")
    return result
