"""What every scenario shares: the run's settings, the systems, the order they take turns in.

Scenarios are functions `run(ctx) -> dict` (a JSON-able result that report.py renders and
plot.py draws). A system that fails is recorded in result["errors"][name] with the error
text, never silently dropped; a system that cannot run here at all (Unavailable: Ray that
does not start) is skipped for the rest of the run with that reason.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from systems import System, Unavailable

HERE = Path(__file__).resolve().parent
APPS = HERE / "apps"


@dataclass(frozen=True)
class Mode:
    name: str
    rounds: int  # ABAB rounds of throughput, swap, crash and WebSocket runs
    duration: float  # seconds of each measured wrk / echo run
    warmup: float  # 0: none (quick mode: the first second of a run is its warm-up)
    connections: tuple[int, ...]
    cold_rounds: int
    timeline_s: float  # load around a swap or a kill (Ray gets ray_timeline_s: its redeploy takes seconds)
    ray_timeline_s: float

    @property
    def event_at(self) -> float:
        """When the swap or the kill happens in a timeline: after a baseline of steady load."""
        return 1.5 if self.name == "quick" else 2.0


QUICK = Mode("quick", rounds=1, duration=2, warmup=0, connections=(32,), cold_rounds=1, timeline_s=3.5, ray_timeline_s=8)
FULL = Mode("full", rounds=3, duration=8, warmup=2, connections=(32, 256), cold_rounds=8, timeline_s=10, ray_timeline_s=20)


@dataclass
class Ctx:
    mode: Mode
    systems: dict[str, System]
    env: dict[str, str]
    unavailable: dict[str, str] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}", flush=True)

    def order(self, names: list[str], r: int) -> list[str]:
        """ABAB...: round r runs the systems in order, round r+1 in reverse, so drift hits all alike."""
        names = [n for n in names if n in self.systems]
        return names if r % 2 == 0 else names[::-1]

    def rounds(self, result: dict[str, Any], systems: list[str], one: Callable[["Ctx", str], dict[str, Any]],
               describe: Callable[[dict[str, Any]], str], scenario: str) -> dict[str, Any]:
        """Every round, every system in ABAB order: ``one`` measures, its row joins result["rows"]."""
        for r in range(self.mode.rounds):
            for name in self.order(systems, r):
                with self.attempt(result, name) as ok:
                    if ok:
                        m = one(self, name)
                        m.update(system=name, round=r)
                        result["rows"].append(m)
                        self.log(f"{scenario} r{r} {name}: {describe(m)}")
        return result

    @contextmanager
    def attempt(self, result: dict[str, Any], name: str) -> Iterator[bool]:
        """Run one system's part; on failure note why in result["errors"] and go on with the others."""
        if name in self.unavailable:
            result.setdefault("errors", {})[name] = self.unavailable[name]
            yield False
            return
        system = self.systems[name]
        try:
            yield True
        except Unavailable as exc:
            self.unavailable[name] = str(exc)
            result.setdefault("errors", {})[name] = str(exc)
            self.log(f"{name} unavailable: {str(exc)[:300]}")
        except Exception as exc:  # noqa: BLE001 - the report says what failed
            result.setdefault("errors", {})[name] = f"{type(exc).__name__}: {exc}"[-2500:]
            self.log(f"{name} failed: {exc}")
            traceback.print_exc(file=sys.stderr)
        finally:
            system.stop()


def load1() -> float:
    return os.getloadavg()[0]


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    if not xs:
        return float("nan")
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


Runner = Callable[[Ctx], dict[str, Any]]


def cpu_app() -> Any:
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_cpu1ms", APPS / "cpu1ms" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calibrate_cpu_iters(target_s: float = 0.001) -> int:
    """Iterations of the cpu1ms app's work() that take ~1 ms of CPU here, uncontended (best of 100).

    A fixed amount of work (not "spin until 1 ms passed") makes a server that loses CPU to its
    own overhead pay for it in throughput, as a real handler would."""
    work, probe = cpu_app().work, 10_000
    best = float("inf")
    for _ in range(100):
        t = time.thread_time()
        work(probe)
        best = min(best, time.thread_time() - t)
    return max(1, round(probe * target_s / best))
