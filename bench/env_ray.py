"""Ray Serve's ``runtime_env={"pip": [...]}`` for the same requirement as bench/env_phase.py.

Runs in bench/.venvs/ray (``python bench/setup_env.py`` installs it; or
``python -m venv bench/.venvs/ray && bench/.venvs/ray/bin/pip install 'ray[serve]'``):

    bench/.venvs/ray/bin/python bench/env_ray.py --rounds 3

Ray Serve's own environment holds fastapi (a dependency of ``ray[serve]``) and Ray's pip
environments inherit it, so for a fair comparison use a requirement Ray does not bring:
``--requirement flask`` here and in bench/env_phase.py.

Each round, on one local Ray (loopback, no dashboard, a fresh temp dir so its environment
cache starts empty; pip's own cache is kept between rounds like uv's is), times
``serve.run`` of a one-replica deployment until it answers:

  none    no runtime_env (the baseline: replica start alone)
  cold    runtime_env pip ["fastapi"]: Ray builds the environment
  warm    pip ["fastapi>=0.0.N"]: another spelling, a new environment (pip's cache filled)
  hit     pip ["fastapi"] again after a redeploy: Ray's cached environment

and reports each minus ``none``: what the environment adds to a deploy.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import ray  # noqa: E402
from ray import serve  # noqa: E402


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Hello:
    def __init__(self, stamp: str, module: str) -> None:
        __import__(module)  # proves the environment is there

        self.stamp = stamp

    async def __call__(self, request) -> str:  # type: ignore[no-untyped-def]
        return self.stamp


def timed_run(stamp: str, pip: list[str] | None, module: str) -> float:
    options = {"ray_actor_options": {"num_cpus": 0, "runtime_env": {"pip": pip}}} if pip else {}
    t0 = time.perf_counter()
    handle = serve.run(Hello.options(**options).bind(stamp, module if pip else "json"), name="envbench",
                       route_prefix="/envbench")
    assert handle.remote(None).result(timeout_s=600) == stamp
    return time.perf_counter() - t0


def one_round(index: int, requirement: str) -> dict[str, float]:
    temp = tempfile.mkdtemp(prefix="ray-env-")
    ray.init(include_dashboard=False, _temp_dir=temp, num_cpus=2, runtime_env={"env_vars": {"RAY_USAGE_STATS_ENABLED": "0"}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        module = requirement.split("[")[0].replace("-", "_")
        out = {"none": timed_run(f"n{index}", None, module)}
        out["cold"] = timed_run(f"c{index}", [requirement], module)
        out["warm"] = timed_run(f"w{index}", [f"{requirement}>=0.0.{index}"], module)
        out["hit"] = timed_run(f"h{index}", [requirement], module)
        return {k: v * 1000 for k, v in out.items()}
    finally:
        serve.shutdown()
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requirement", default="fastapi")
    args = parser.parse_args()
    rounds = [one_round(i, args.requirement) for i in range(args.rounds)]
    print(json.dumps(rounds, indent=1), file=sys.stderr)
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(f"## Ray Serve runtime_env pip: `{args.requirement}`, {args.rounds} rounds (medians, ms)\n")
    print("| what | serve.run until it answers | minus no runtime_env |\n|---|---|---|")
    for key in ("none", "cold", "warm", "hit"):
        print(f"| {key} | {med[key]:.0f} | {med[key] - med['none']:.0f} |")


if __name__ == "__main__":
    main()
