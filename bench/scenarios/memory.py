"""Scenario 5: memory of a FastAPI app with 2 workers, per worker and for the whole system.

Each system serves apps/fastapi; after 200 requests (100 in quick mode) (so lazy imports and caches are paid),
each worker's /proc/<pid>/smaps_rollup gives RSS, PSS and USS (Private_Clean + Private_Dirty:
what the worker alone costs, the memory freed if it exits). The total is the PSS of every
process of the system (anycore: node, nats-server, zygote, workers; Ray: its daemons too),
which counts shared pages once. Memory barely moves with CPU noise: one round is enough.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from common import APPS, Ctx
from procs import memory

SYSTEMS = ["anycore", "uvicorn", "gunicorn", "ray"]


def run(ctx: Ctx) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": [], "errors": {}}
    for name in ctx.order(SYSTEMS, 0):
        system = ctx.systems[name]
        with ctx.attempt(result, name) as ok:
            if not ok:
                continue
            system.start(APPS / "fastapi", ctx.env)
            result["requests"] = 2 * (n := 50 if ctx.mode.name == "quick" else 100)
            for i in range(n):
                for path in ("", f"items/{i}"):
                    with urllib.request.urlopen(system.url + path, timeout=10) as resp:
                        resp.read()
            workers = [memory(pid) for pid in system.worker_pids()]
            procs = system.procs()
            total: dict[str, float] = {"rss": 0.0, "pss": 0.0, "uss": 0.0}
            for pid in procs:
                try:
                    m = memory(pid)
                except OSError:
                    continue
                for k in total:
                    total[k] += m[k]
            row = {"system": name, "workers": workers, "total": total, "processes": len(procs)}
            result["rows"].append(row)
            ctx.log(f"memory {name}: workers USS " + ", ".join(f"{w['uss']:.1f}" for w in workers)
                    + " MiB, RSS " + ", ".join(f"{w['rss']:.1f}" for w in workers)
                    + f" MiB; all {len(procs)} processes PSS {total['pss']:.0f} MiB")
    return result
