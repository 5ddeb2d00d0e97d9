"""The `env` deploy phase against pip, in one run: how long a release's environment takes.

For a FastAPI service (``requirements.txt``: ``fastapi``), each round measures, on one
real node (``anycore up``, its own home, uv's cache in a fresh directory per round):

  cold   the first deploy: empty uv cache, packages downloaded from the index
  warm   a deploy whose requirement is spelt differently (``fastapi>=0.0.N``, the same
         resolved set): a new environment is built, packages from uv's (now filled) cache
  hit    a deploy changing only the code: the environment is reused
  none   the same code without requirements.txt: a deploy on the node's environment,
         so ``hit - none`` (whole deploys) is what an environment adds to a cache-hit deploy

and, alternating in the same round, ``python -m venv`` + ``pip install -r`` of the same
file into a fresh venv with pip's cache empty (pip cold) and filled (pip warm). The env
phase is read from ``anycore deploy``'s own output (its phase timings). Needs the index
(the internet) for the cold runs. Writes a Markdown table to stdout.

    python bench/env_phase.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPS = {"fastapi": '''
from fastapi import FastAPI

app = FastAPI()
STAMP = {stamp!r}

@app.get("/")
def index():
    return {{"stamp": STAMP}}
''', "flask": '''
from flask import Flask

app = Flask(__name__)
STAMP = {stamp!r}

@app.get("/")
def index():
    return {{"stamp": STAMP}}
'''}
APP = APPS["fastapi"]


def service(root: Path, name: str, stamp: str, requirements: str | None) -> Path:
    directory = root / name
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    (directory / "app.py").write_text(APP.format(stamp=stamp))
    (directory / "anycore.toml").write_text(f'name = "{name}"\nworkers = 1\nroutes = ["/{name}"]\n')
    if requirements is not None:
        (directory / "requirements.txt").write_text(requirements)
    return directory


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anycore.cli.main", *args], env=env, capture_output=True, text=True,
                          timeout=900)


IMPORTS: dict[str, list[float]] = {}  # import phase ms by kind of deploy


def deploy(env: dict[str, str], directory: Path, kind: str = "") -> tuple[float, float, str]:
    """(env phase ms or 0, whole command s, output); records the import phase under ``kind``."""
    t0 = time.perf_counter()
    result = cli(env, "deploy", str(directory))
    took = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"deploy of {directory} failed:\n{result.stdout}\n{result.stderr}")
    phase = re.search(r"^\s+env\s+([\d.]+) ms", result.stdout, re.MULTILINE)
    imported = re.search(r"^\s+import\s+([\d.]+) ms", result.stdout, re.MULTILINE)
    if kind and imported:
        IMPORTS.setdefault(kind, []).append(float(imported.group(1)))
    return (float(phase.group(1)) if phase else 0.0), took, result.stdout


def pip_install(root: Path, requirements: Path, cache: Path) -> float:
    venv = root / f"pipvenv-{time.monotonic_ns()}"
    env = {**os.environ, "PIP_CACHE_DIR": str(cache)}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "-r", str(requirements)], check=True, env=env,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.perf_counter() - t0
    shutil.rmtree(venv, ignore_errors=True)
    return took


def one_round(index: int, requirement: str) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="bench-env-"))
    home = root / "home"
    env = {**os.environ, "ANYCORE_HOME": str(home), "ANYCORE_USER": "root", "UV_CACHE_DIR": str(root / "uv-cache")}
    env.pop("ANYCORE_TOKEN", None)
    node = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", "--listen", "127.0.0.1:0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (home / "node.json").exists():
            if time.monotonic() > deadline or node.poll() is not None:
                raise SystemExit("the node did not start")
            time.sleep(0.05)
        out: dict[str, float] = {}
        out["cold"], _, _ = deploy(env, service(root, "svc", "c1", f"{requirement}\n"), "new environment (its template starts)")
        out["warm"], _, _ = deploy(env, service(root, "svc", "c2", f"{requirement}>=0.0.{index}\n"), "same set rebuilt")
        out["hit"], out["hit_deploy_s"], text = deploy(env, service(root, "svc", "c3", f"{requirement}>=0.0.{index}\n"),
                                                       "same environment (its template running)")
        assert "cache hit" in text, text
        deploy(env, service(root, "plain", "p1", None))  # first deploy of the plain service (creates it)
        _, out["none_deploy_s"], _ = deploy(env, service(root, "plain", "p2", None), "node's environment")
        # A second cache hit, spaced from the first, for the deploy-time comparison.
        _, second, _ = deploy(env, service(root, "svc", "c4", f"{requirement}>=0.0.{index}\n"))
        out["hit_deploy_s"] = min(out["hit_deploy_s"], second)
        req = root / "requirements.txt"
        req.write_text(f"{requirement}\n")
        pip_cache = root / "pip-cache"
        out["pip_cold"] = pip_install(root, req, pip_cache) * 1000
        out["pip_warm"] = pip_install(root, req, pip_cache) * 1000
        return out
    finally:
        cli(env, "down")
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requirement", default="fastapi")
    args = parser.parse_args()
    global APP
    APP = APPS.get(args.requirement, APP)
    rounds = [one_round(i, args.requirement) for i in range(args.rounds)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    print(json.dumps(rounds, indent=1), file=sys.stderr)
    print(f"## env phase: `{args.requirement}`, {args.rounds} rounds (medians)\n")
    print("| what | ms |\n|---|---|")
    print(f"| anycore env, cold (empty uv cache) | {med['cold']:.0f} |")
    print(f"| anycore env, warm (uv cache filled, new environment) | {med['warm']:.0f} |")
    print(f"| anycore env, cache hit | {med['hit']:.1f} |")
    print(f"| venv + pip install -r, pip cache empty | {med['pip_cold']:.0f} |")
    print(f"| venv + pip install -r, pip cache filled | {med['pip_warm']:.0f} |")
    print(f"\nwarm build vs pip warm: {med['pip_warm'] / med['warm']:.1f}x faster; cold vs pip cold: "
          f"{med['pip_cold'] / med['cold']:.1f}x")
    print("\nimport phase (zygote start + app import), median ms: " + ", ".join(
        f"{kind} {statistics.median(v):.0f}" for kind, v in IMPORTS.items()))
    print(f"whole deploy with a cache hit {med['hit_deploy_s'] * 1000:.0f} ms vs without requirements "
          f"{med['none_deploy_s'] * 1000:.0f} ms: {(med['hit_deploy_s'] - med['none_deploy_s']) * 1000:+.0f} ms")


if __name__ == "__main__":
    main()
