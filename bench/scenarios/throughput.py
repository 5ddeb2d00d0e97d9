"""Scenario 1: req/s and latency percentiles, hello-world and 1 ms-CPU apps, wrk -t1 at each -c.

Per app and round, each system in turn (ABAB): start it fresh with 2 workers, check its answer,
then per connection count a warm-up (none in quick mode) and a measured `wrk -t1 -cN --latency` run, then stop it.
Server CPU per request counts every process of the system (anycore: node, nats-server, zygote,
workers; Ray: all its daemons too), in core-microseconds: the figure least moved by noise.
"""

from __future__ import annotations

from typing import Any

from common import APPS, Ctx, cpu_app, load1
from load import wrk
from procs import cpu_seconds
from systems import http_get

SYSTEMS = ["anycore", "uvicorn", "gunicorn", "ray"]
APP_NAMES = ["hello", "cpu1ms"]


def run(ctx: Ctx) -> dict[str, Any]:
    iters = int(ctx.env["BENCH_CPU_ITERS"])
    expected = {"hello": b"Hello, world!", "cpu1ms": f"{iters} {cpu_app().work(iters)}".encode()}
    result: dict[str, Any] = {"rows": [], "errors": {}, "cpu_iters": iters, "connections": list(ctx.mode.connections),
                              "apps": APP_NAMES}
    for app in APP_NAMES:
        for r in range(ctx.mode.rounds):
            for name in ctx.order(SYSTEMS, r):
                system = ctx.systems[name]
                with ctx.attempt(result, name) as ok:
                    if not ok:
                        continue
                    system.start(APPS / app, ctx.env)
                    status, body = http_get(system.url)
                    if body != expected[app]:
                        raise RuntimeError(f"{name} answered {status} {body[:100]!r}, expected {expected[app]!r}")
                    for c in ctx.mode.connections:
                        if ctx.mode.warmup:
                            wrk(system.url, c, ctx.mode.warmup)
                        before, load_before = cpu_seconds(system.procs()), load1()
                        m = wrk(system.url, c, ctx.mode.duration)
                        cpu = cpu_seconds(system.procs()) - before
                        m.update(app=app, c=c, round=r, system=name, load_before=load_before, load_after=load1(),
                                 cpu_us_per_req=cpu * 1e6 / m["requests"] if m["requests"] else float("nan"))
                        result["rows"].append(m)
                        ctx.log(f"throughput {app} c={c} r{r} {name}: {m['rps']:.0f} req/s p50 {m['p50']:.2f} "
                                f"p99 {m['p99']:.2f} ms, {m['sockerr']:.0f} socket errors, {m['non2xx']:.0f} non-2xx")
    return result
