"""The systems under test, behind one small interface.

    system.start(app_dir, workers=2)   copy the app into a scratch dir, start, return when ready
    system.url, system.work            where it answers; the scratch copy (a swap rewrites work/app.py)
    system.worker_pids()               the processes that run the app (what a crash kills)
    system.swap() -> wait()            start replacing the code with what is now in work/; wait() returns
                                       when the system's own command is done (anycore deploy, Ray's serve.run)
    system.stop()                      every process it started is gone

anycore: `anycore up` with a private ANYCORE_HOME (the node, its nats-server, the zygote and
the workers). uvicorn: `uvicorn --workers N` (uvloop, httptools). gunicorn: `-k
uvicorn.workers.UvicornWorker -w N`. Ray Serve is in ray_serve.py (one Ray instance per run).
Each peer runs from its own virtualenv under bench/.venvs (see setup_env.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from procs import Proc, cmdline, free_port, kill_tree, memory, snapshot, tree, wait_gone

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"


class Unavailable(RuntimeError):
    """This system cannot run here; the message says why and goes into the report."""


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def _pss(pid: int) -> float:
    try:
        return memory(pid)["pss"]
    except OSError:
        return 0.0


class System:
    name = "?"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.work = Path()
        self.log_path = Path()
        self.seen: dict[int, Proc] = {}

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    # -- to be provided by each system -------------------------------------------------------------
    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        raise NotImplementedError

    def worker_pids(self) -> list[int]:
        raise NotImplementedError

    def swap(self) -> Callable[[], None]:
        raise NotImplementedError

    def ready(self) -> bool:
        return http_get(self.url, 2)[0] == 200

    # -- shared --------------------------------------------------------------------------------------
    def start(self, app_dir: Path, env: dict[str, str], workers: int = 2, scale_to_zero: bool = False,
              timeout: float = 90) -> None:
        self.work = Path(tempfile.mkdtemp(prefix=f"bench-{self.name}-"))
        shutil.copytree(app_dir, self.work / "app", ignore=shutil.ignore_patterns("__pycache__", "anycore.toml"))
        self.work = self.work / "app"
        self.port = free_port()
        self.log_path = self.work.parent / "server.log"
        cmd, extra = self.command(workers, scale_to_zero)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=self.work, env={**env, **extra}, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.wait(self.ready, timeout, "ready")

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            self.remember()
            if cond():
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} not {what} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def remember(self) -> None:
        """Note every process of the tree so far, so stop() also finds those that left it."""
        if self.proc is not None:
            self.seen.update(tree(self.proc.pid))

    def procs(self) -> dict[int, Proc]:
        assert self.proc is not None
        return tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.remember()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # each shuts its children down on SIGTERM
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        if not wait_gone(self.seen, 10):
            kill_tree(self.seen)
            wait_gone(self.seen, 10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.seen = {}
        shutil.rmtree(self.work.parent, ignore_errors=True)


class Anycore(System):
    name = "anycore"
    gateway = "python"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        toml = 'name = "bench"\n'
        toml += ("min_workers = 0\nmax_workers = 2\nkeep_warm = 1\nscale_down_delay = 1\n" if scale_to_zero
                 else f"workers = {workers}\n")
        extra = self.work / "anycore.extra.toml"  # an app's own anycore settings (apps/wsession: its [sessions])
        (self.work / "anycore.toml").write_text(toml + (extra.read_text() if extra.exists() else ""))
        self.scale_to_zero = scale_to_zero
        home = str(self.work.parent / "home")
        # "anycore" is the node on its Python gateway, as it was before the native one became
        # the default; anycore-native (native_systems.py) is `--gateway native`.
        return ([str(VENVS / "anycore" / "bin" / "anycore"), "up", str(self.work), "--listen", f"127.0.0.1:{self.port}",
                 "--gateway", self.gateway],
                {"ANYCORE_HOME": home, "ANYCORE_USER": "root"})  # its tmp dirs are 0700, like uvicorn it runs as root

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "ANYCORE_HOME": str(self.work.parent / "home")}

    def ready(self) -> bool:
        if "event=service.shifted" not in self.log_path.read_text(errors="replace"):
            return False
        return self.scale_to_zero or http_get(self.url, 2)[0] == 200

    def ps(self) -> dict:
        out = subprocess.run([str(VENVS / "anycore" / "bin" / "anycore"), "ps", "--json"], env=self.env,
                             capture_output=True, text=True, timeout=30)
        if out.returncode != 0:
            raise RuntimeError(f"anycore ps failed: {out.stderr}")
        return json.loads(out.stdout)

    def worker_pids(self) -> list[int]:
        live = self.ps()["services"][0].get("live") or {}
        return [w["pid"] for w in live.get("workers", []) if w.get("pid")]

    def swap(self) -> Callable[[], None]:
        deploy = subprocess.Popen([str(VENVS / "anycore" / "bin" / "anycore"), "deploy", str(self.work)], env=self.env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def wait() -> None:
            out, _ = deploy.communicate(timeout=120)
            if deploy.returncode != 0:
                raise RuntimeError(f"anycore deploy failed:\n{out.decode(errors='replace')[-2000:]}")
        return wait


class Uvicorn(System):
    name = "uvicorn"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        cmd = [str(VENVS / "uvicorn" / "bin" / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(self.port),
               "--loop", "uvloop", "--http", "httptools", "--ws", "websockets", "--log-level", "warning",
               "--no-access-log"]
        return cmd + (["--workers", str(workers)] if workers > 1 else []), {}

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        procs = snapshot()
        return [p.pid for p in procs.values() if p.ppid == self.proc.pid and "resource_tracker" not in cmdline(p.pid)] \
            or [self.proc.pid]

    def swap(self) -> Callable[[], None]:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)
        return lambda: None


class Gunicorn(System):
    name = "gunicorn"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        return ([str(VENVS / "gunicorn" / "bin" / "gunicorn"), "-k", "uvicorn.workers.UvicornWorker", "-w", str(workers),
                 "-b", f"127.0.0.1:{self.port}", "--log-level", "warning", "app:app"], {})

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return [p.pid for p in snapshot().values() if p.ppid == self.proc.pid]

    def swap(self) -> Callable[[], None]:
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGHUP)
        return lambda: None
