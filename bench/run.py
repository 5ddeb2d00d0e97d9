"""The benchmark suite: anycore against uvicorn, gunicorn and Ray Serve, in one run, one report.

    python3 bench/run.py [--quick] [--render NAME] [--only throughput,swap,crash,cold,memory,websocket,wsswap,wsgi,native]
                         [--systems anycore,uvicorn,gunicorn,ray,granian,anycore-native,granian-asgi,nginx-uvicorn]

Run as root on a fresh machine with Python >= 3.11 (see bench/README.md): it installs wrk
(apt-get) and one virtualenv per system under bench/.venvs (setup_env.py), re-executes
itself in the anycore venv, runs every scenario with every system taking turns (ABAB),
stops every process it started (Ray included) also on Ctrl-C or SIGTERM, and writes
bench/results/<date>.md (+ <date>.json, <date>/*.png). --quick (< 3 minutes) writes
<date>-quick.md instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCENARIOS = ["throughput", "swap", "crash", "cold", "memory", "websocket", "wsswap", "wsgi", "native"]
# granian: the wsgi scenario only; anycore-native, granian-asgi, nginx-uvicorn: the native scenario only
SYSTEM_NAMES = ["anycore", "uvicorn", "gunicorn", "ray", "granian", "anycore-native", "granian-asgi", "nginx-uvicorn"]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 round, short runs: < 3 minutes")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated scenarios")
    parser.add_argument("--systems", default=",".join(SYSTEM_NAMES), help="comma-separated systems")
    parser.add_argument("--name", default="", help="report name (default: the date, with -quick in quick mode)")
    parser.add_argument("--render", metavar="NAME", help="measure nothing: redo the analysis, report and plots of "
                        "bench/results/NAME.json (after a change to report.py, plot.py or an analysis)")
    return parser.parse_args()


def bootstrap(args: argparse.Namespace) -> None:
    """Outside the anycore venv: install what is missing, then run again inside it."""
    from setup_env import VENVS, setup

    failed = setup(args.systems.split(","))
    python = VENVS / "anycore" / "bin" / "python"
    os.environ["BENCH_SETUP_FAILED"] = json.dumps(failed)
    os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    args = parse()
    if Path(sys.prefix).resolve() != (HERE / ".venvs" / "anycore").resolve():
        bootstrap(args)
    signal.signal(signal.SIGTERM, _sigterm)
    if args.render:
        from rerender import reanalyse

        path = HERE / "results" / f"{args.render}.json"
        write(args.render, reanalyse(json.loads(path.read_text())), None)
        return

    import importlib

    from common import FULL, QUICK, Ctx, calibrate_cpu_iters
    from setup_env import versions
    from ray_serve import RayHost, RayServe
    from native_systems import AnycoreNative, GranianAsgi, NginxUvicorn
    from systems import Anycore, Gunicorn, Uvicorn

    mode = QUICK if args.quick else FULL
    stem = args.name or time.strftime("%Y-%m-%d", time.gmtime()) + ("-quick" if args.quick else "")
    ray_host = RayHost()
    every = {"anycore": Anycore(), "uvicorn": Uvicorn(), "gunicorn": Gunicorn(), "ray": RayServe(ray_host),
             "anycore-native": AnycoreNative(), "granian-asgi": GranianAsgi(), "nginx-uvicorn": NginxUvicorn()}
    chosen = args.systems.split(",")
    ctx = Ctx(mode=mode, systems={n: s for n, s in every.items() if n in chosen}, env=dict(os.environ))
    for name, why in json.loads(os.environ.get("BENCH_SETUP_FAILED", "{}")).items():
        ctx.unavailable[name] = why
        if name == "ray":
            ray_host.error = why
    iters = calibrate_cpu_iters()
    ctx.env["BENCH_CPU_ITERS"] = str(iters)
    meta = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "mode": mode.__dict__,
        "load_start": os.getloadavg(), "cpus": os.cpu_count(), "machine": platform.platform(),
        "python": platform.python_version(), "cpu_iters": iters,
        "mem_total_mib": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20,
        "versions": {n: versions(n) for n in ["anycore", "uvicorn", "gunicorn", "ray", "granian", "plot"]},
        "systems": chosen, "interrupted": False,
    }
    ctx.log(f"{mode.name} run of {args.only} with {', '.join(ctx.systems)}; cpu1ms = {iters} iterations; "
            f"load {meta['load_start']}")
    results: dict[str, object] = {}
    t0 = time.monotonic()
    try:
        for name in args.only.split(","):
            ctx.log(f"--- {name}")
            module = importlib.import_module(f"scenarios.{name}")
            try:
                results[name] = module.run(ctx)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not cost the others
                traceback.print_exc()
                results[name] = {"failed": f"{type(exc).__name__}: {exc}", "rows": [], "errors": {}}
    except KeyboardInterrupt:
        meta["interrupted"] = True
        ctx.log("interrupted: stopping everything, writing what was measured")
    finally:
        for system in ctx.systems.values():
            system.stop()
        meta["ray"] = {**ray_host.info, "error": ray_host.error or ctx.unavailable.get("ray", "")}
        ray_host.shutdown()
    meta["load_end"] = os.getloadavg()
    meta["duration_s"] = time.monotonic() - t0
    meta["ended"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    write(stem, {"meta": meta, "scenarios": results}, ctx)
    if meta["interrupted"]:
        sys.exit(130)  # what was measured is written, but the run is not complete


def write(stem: str, data: dict, ctx: object) -> None:
    from report import render

    out = HERE / "results"
    (out / stem).mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(data, indent=1))
    plot = subprocess.run([str(HERE / ".venvs" / "plot" / "bin" / "python"), str(HERE / "plot.py"), str(out / f"{stem}.json"),
                           str(out / stem)], capture_output=True, text=True)
    if plot.returncode != 0:
        print(f"plots failed:\n{plot.stderr[-3000:]}", file=sys.stderr)
    pngs = sorted(p.name for p in (out / stem).glob("*.png"))
    (out / f"{stem}.md").write_text(render(data, stem, pngs))
    print(f"written: bench/results/{stem}.md, {stem}.json and {len(pngs)} plots in bench/results/{stem}/")


if __name__ == "__main__":
    main()
