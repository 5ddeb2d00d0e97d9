"""Installs what the suite needs, once: wrk from Debian, and one virtualenv per system.

    bench/.venvs/anycore   this checkout (pip install -e .): the node, and the suite's own clients
    bench/.venvs/uvicorn   uvicorn[standard] + fastapi
    bench/.venvs/gunicorn  gunicorn + uvicorn[standard] + fastapi (+ flask, django for the wsgi scenario)
    bench/.venvs/granian   granian + flask + django (the wsgi scenario)
    bench/.venvs/ray       ray[serve] 2.x
    bench/.venvs/plot      matplotlib (the plots are drawn in their own process)

A venv whose requirements did not change since it was made is reused (bench-requirements.txt
in it records them). Standard library only: this runs before any venv exists. A venv that
cannot be installed (Ray on a machine without its wheels) is not fatal: the suite reports
that system as unavailable with the pip error.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENVS = HERE / ".venvs"

REQUIREMENTS = {
    # fastapi: for the memory scenario's app, as in the peers' venvs; flask, django: the wsgi scenario's apps
    "anycore": ["-e", str(ROOT), "fastapi", "flask", "django"],
    "uvicorn": ["uvicorn[standard]", "fastapi"],
    "gunicorn": ["gunicorn", "uvicorn[standard]", "fastapi", "flask", "django"],  # also sync and gthread (wsgi)
    # `granian --interface wsgi` (the wsgi scenario), `--interface asgi` (the native scenario)
    "granian": ["granian", "flask", "django", "fastapi"],
    "ray": ["ray[serve]>=2,<3"],
    "plot": ["matplotlib"],
}


def ensure_wrk() -> None:
    if shutil.which("wrk"):
        return
    print("setup: wrk missing, apt-get install -y wrk", flush=True)
    apt = ["apt-get", "install", "-y", "-q", "wrk"]
    if subprocess.run(apt).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], check=True)
        subprocess.run(apt, check=True)
    if not shutil.which("wrk"):
        sys.exit("setup: wrk is still missing after apt-get install; install it and run again")


def ensure_venv(name: str) -> str:
    """'' when the venv is ready, else the reason it is not."""
    path = VENVS / name
    stamp = path / "bench-requirements.txt"
    wanted = "\n".join(REQUIREMENTS[name]) + "\n"
    if stamp.exists() and stamp.read_text() == wanted:
        return ""
    print(f"setup: installing {name} into {path.relative_to(ROOT)} ({' '.join(REQUIREMENTS[name])})", flush=True)
    if not (path / "bin" / "python").exists():
        venv.create(path, with_pip=True)
    out = subprocess.run([str(path / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", *REQUIREMENTS[name]],
                         capture_output=True, text=True)
    if out.returncode != 0:
        errors = [line for line in out.stderr.splitlines() if "ERROR" in line] or out.stderr.splitlines()[-5:]
        return f"pip install {' '.join(REQUIREMENTS[name])} failed: " + " / ".join(errors)[-1500:]
    stamp.write_text(wanted)
    return ""


def versions(name: str) -> dict[str, str]:
    pkgs = {"anycore": ["anycore", "uvloop", "websockets"], "uvicorn": ["uvicorn", "uvloop", "httptools", "websockets"],
            "gunicorn": ["gunicorn", "uvicorn", "flask", "django"], "granian": ["granian", "flask", "django"],
            "ray": ["ray"], "plot": ["matplotlib"]}[name]
    python = VENVS / name / "bin" / "python"
    if not python.exists():
        return {}
    code = ("import importlib.metadata as m, json, sys\n"
            "out = {}\n"
            "for p in sys.argv[1:]:\n"
            "    try: out[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))")
    import json

    out = subprocess.run([str(python), "-c", code, *pkgs], capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else {}


VENV_OF = {"anycore-native": "anycore", "granian-asgi": "granian", "nginx-uvicorn": "uvicorn"}  # systems sharing a venv


def setup(names: list[str]) -> dict[str, str]:
    """Make sure wrk and the venvs are there; returns {venv: why it is unusable} for the failed ones."""
    ensure_wrk()
    VENVS.mkdir(exist_ok=True)
    failed = {}
    names = list(dict.fromkeys(VENV_OF.get(n, n) for n in names))
    for name in ["anycore", "plot", *[n for n in names if n not in ("anycore", "plot")]]:
        why = ensure_venv(name)
        if why:
            if name in ("anycore", "plot"):
                sys.exit(f"setup: {why}")
            failed[name] = why
    return failed
