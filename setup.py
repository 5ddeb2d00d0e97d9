"""The one build step setuptools cannot infer from pyproject.toml: the native gateway.

``pip install .`` / ``pip install -e .`` run ``build_py``; before it, ``cargo build
--release`` in ``native/`` builds ``anycore-gateway`` (the Rust data plane, see
README "Native gateway") and copies it to ``src/anycore/bin/``, where the package ships it
and ``anycore.node.native.find_binary`` finds it. Offline by default: ``native/.cargo/
config.toml`` points cargo at the crates Debian packages (``apt-get install
librust-hyper-dev ...``, see README). Without cargo, or if the build fails, the package
still installs and runs on the Python gateway (``anycore up`` says the native one is not
built); ``ANYCORE_SKIP_NATIVE=1`` skips the build on purpose.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CRATE = ROOT / "native"
BINARY = "anycore-gateway"


def _say(message: str) -> None:
    print(f"anycore build: {message}", file=sys.stderr, flush=True)


def build_gateway() -> Path | None:
    if os.environ.get("ANYCORE_SKIP_NATIVE") == "1" or not (CRATE / "Cargo.toml").is_file():
        return None
    cargo = shutil.which("cargo") or next((str(p) for p in [Path.home() / ".cargo" / "bin" / "cargo"] if p.exists()), None)
    if cargo is None:
        _say("cargo not found: installing without the native gateway (anycore runs on its Python gateway)")
        return None
    offline = ["--offline"] if (CRATE / ".cargo" / "config.toml").is_file() else []
    result = subprocess.run([cargo, "build", "--release", *offline], cwd=CRATE)
    built = CRATE / "target" / "release" / BINARY
    if result.returncode != 0 or not built.is_file():
        _say(f"cargo build failed (exit {result.returncode}): installing without the native gateway — "
             "are the crates installed? see README, Native gateway")
        return None
    target = ROOT / "src" / "anycore" / "bin" / BINARY
    target.parent.mkdir(exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copy2(built, tmp)
    tmp.replace(target)  # atomic: a node running the old binary keeps it
    _say(f"built {target}")
    return target


class BuildPy(build_py):
    def run(self) -> None:
        build_gateway()
        super().run()


setup(cmdclass={"build_py": BuildPy})
