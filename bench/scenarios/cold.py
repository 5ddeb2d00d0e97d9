"""Scenario 4: the first response after scale-to-zero.

anycore: a service with min_workers = 0 (keep_warm = 1 s); once `anycore ps` shows no worker,
one request is timed (it is queued, wakes the scaler, waits for a fork from the warm zygote),
then 5 warm ones. uvicorn has no scale-to-zero: what replaces it is starting a process, so
its figure is from exec to the first answer (one process, no supervisor). Ray Serve: a
deployment with autoscaling min_replicas = 0; once Serve reports 0 running replicas, one
request is timed (Serve starts a replica actor), then 5 warm ones. Rounds alternate the
systems; the anycore node and the Ray app stay up between rounds (scale-to-zero is the
point), uvicorn is started anew each time.
"""

from __future__ import annotations

import subprocess
import time
import urllib.request
from typing import Any

from common import APPS, Ctx, median
from procs import free_port, kill_tree, tree, wait_gone
from ray_serve import RayServe
from systems import VENVS, Anycore

SYSTEMS = ["anycore", "uvicorn", "ray"]


def timed_get(url: str, timeout: float = 60) -> float:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        resp.read()
    return time.perf_counter() - t0


def wait_until(cond: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.2)
    raise RuntimeError(f"not {what} within {timeout:.0f} s")


def anycore_round(system: Anycore) -> dict[str, float]:
    wait_until(lambda: not system.worker_pids(), 60, "scaled to zero")
    time.sleep(0.3)  # spaced from the scale-down: the fork must not race the last worker's drain
    cold = timed_get(system.url)
    return {"cold_s": cold, "warm_s": median([timed_get(system.url) for _ in range(5)])}


def ray_round(system: RayServe) -> dict[str, float]:
    wait_until(lambda: system.replicas() == 0, 90, "scaled to zero")
    time.sleep(0.3)
    cold = timed_get(system.url, 120)
    return {"cold_s": cold, "warm_s": median([timed_get(system.url) for _ in range(5)])}


def uvicorn_round(ctx: Ctx) -> dict[str, float]:
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    t0 = time.perf_counter()
    proc = subprocess.Popen([str(VENVS / "uvicorn" / "bin" / "uvicorn"), "app:app", "--port", str(port), "--host", "127.0.0.1",
                             "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"],
                            cwd=APPS / "hello", env=ctx.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    resp.read()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("uvicorn did not answer within 60 s") from None
                time.sleep(0.002)
        cold = time.perf_counter() - t0
        return {"cold_s": cold, "warm_s": median([timed_get(url) for _ in range(5)])}
    finally:
        procs = tree(proc.pid)
        kill_tree(procs, 15)
        if not wait_gone(procs, 10):
            kill_tree(procs)
        proc.wait()


def run(ctx: Ctx) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": [], "errors": {}}
    up: list[str] = []
    try:
        for name in ("anycore", "ray"):
            if name not in ctx.systems:
                continue
            if name in ctx.unavailable:
                result["errors"][name] = ctx.unavailable[name]
                continue
            try:
                ctx.systems[name].start(APPS / "hello", ctx.env, scale_to_zero=True)
                up.append(name)
            except Exception as exc:  # noqa: BLE001
                result["errors"][name] = f"{type(exc).__name__}: {exc}"[-2500:]
                ctx.systems[name].stop()
        for r in range(ctx.mode.cold_rounds):
            for name in ctx.order(SYSTEMS, r):
                if name in result["errors"] or (name != "uvicorn" and name not in up):
                    continue
                try:
                    if name == "anycore":
                        m = anycore_round(ctx.systems[name])  # type: ignore[arg-type]
                    elif name == "ray":
                        m = ray_round(ctx.systems[name])  # type: ignore[arg-type]
                    else:
                        m = uvicorn_round(ctx)
                except Exception as exc:  # noqa: BLE001
                    result["errors"][name] = f"{type(exc).__name__}: {exc}"[-2500:]
                    ctx.log(f"cold {name} failed: {exc}")
                    continue
                m.update(system=name, round=r)
                result["rows"].append(m)
                ctx.log(f"cold r{r} {name}: first answer {m['cold_s'] * 1000:.1f} ms, warm {m['warm_s'] * 1000:.1f} ms")
    finally:
        for name in up:
            ctx.systems[name].stop()
    return result
