"""The WSGI peers of the wsgi scenario, behind the same interface as systems.py.

    gunicorn-sync     `gunicorn -w 2` (the sync worker: one request at a time per process)
    gunicorn-gthread  `gunicorn -w 2 -k gthread --threads 8`
    granian           `granian --interface wsgi --workers 2` (Rust HTTP server, Python app)
    anycore-sN        anycore with `slots = N` (to choose the default slots of WSGI services)

gunicorn runs from the gunicorn venv, granian from its own (setup_env.py); anycore is the
same `anycore up` as in systems.py, with the app auto-detected as WSGI.
"""

from __future__ import annotations

from collections.abc import Callable

from procs import snapshot
from systems import VENVS, Anycore, System, Unavailable


class GunicornSync(System):
    name = "gunicorn-sync"
    extra: list[str] = []

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        return ([str(VENVS / "gunicorn" / "bin" / "gunicorn"), "-w", str(workers), *self.extra,
                 "-b", f"127.0.0.1:{self.port}", "--log-level", "warning", "app:app"], {})

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return [p.pid for p in snapshot().values() if p.ppid == self.proc.pid]

    def swap(self) -> Callable[[], None]:
        raise NotImplementedError("the wsgi scenario measures throughput only")


class GunicornGthread(GunicornSync):
    name = "gunicorn-gthread"
    extra = ["-k", "gthread", "--threads", "8"]


class Granian(System):
    name = "granian"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        if not (VENVS / "granian" / "bin" / "granian").exists():
            raise Unavailable("granian is not installed: run with --systems ...,granian (setup_env.py installs it)")
        return ([str(VENVS / "granian" / "bin" / "granian"), "--interface", "wsgi", "--workers", str(workers),
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "app:app"], {})

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return [p.pid for p in snapshot().values() if p.ppid == self.proc.pid]

    def swap(self) -> Callable[[], None]:
        raise NotImplementedError("the wsgi scenario measures throughput only")


class AnycoreSlots(Anycore):
    """anycore with a fixed ``slots``; ``slots = 0`` keeps the default."""

    def __init__(self, slots: int) -> None:
        super().__init__()
        self.slots = slots
        self.name = f"anycore-s{slots}" if slots else "anycore"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command(workers, scale_to_zero)
        if self.slots:
            toml = self.work / "anycore.toml"
            toml.write_text(toml.read_text() + f"slots = {self.slots}\n")
        return cmd, env
