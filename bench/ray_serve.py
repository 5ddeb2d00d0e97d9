"""Ray Serve as a system under test: one Ray instance per run (RayHost), one Serve app per turn (RayServe).

RayHost starts bench/ray_host.py in the Ray venv and talks to it in JSON lines (its replies
carry a prefix, everything else Ray prints is ignored); its start is bounded and a failure is
kept, so every later Ray turn reports the same reason instead of trying again. RayServe
deploys the same ASGI app the other systems serve, through Serve's proxy on 127.0.0.1; stop()
deletes the app, so between Ray's turns only its idle daemons remain. The whole Ray process
tree is stopped by RayHost.shutdown() at the end of the run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from procs import Proc, cmdline, cpu_seconds, free_port, kill_tree, tree, wait_gone
from systems import HERE, VENVS, System, Unavailable, _pss


class RayHost:
    """The one Ray instance of a run (see ray_host.py); start() is bounded, its failure is kept."""

    START_TIMEOUT = float(os.environ.get("BENCH_RAY_START_TIMEOUT", "180"))  # lower it to try the failure path

    def __init__(self) -> None:
        self.proc: subprocess.Popen[str] | None = None
        self.port = 0
        self.error = ""
        self.info: dict = {}
        self.seen: dict[int, Proc] = {}
        self.lock = threading.Lock()
        self.tmp = ""

    def ensure(self) -> None:
        if self.error:
            raise Unavailable(self.error)
        if self.proc is not None:
            return
        python = VENVS / "ray" / "bin" / "python"
        if not python.exists():
            self.error = f"{python} missing: the Ray venv could not be installed (see the setup output)"
            raise Unavailable(self.error)
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="bray-", dir="/tmp")  # Ray's socket paths must stay short
        self.log = open(Path(self.tmp) / "host.log", "wb")
        self.proc = subprocess.Popen([str(python), str(HERE / "ray_host.py"), "--port", str(self.port), "--temp-dir", self.tmp],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                     start_new_session=True, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        t0 = time.monotonic()
        try:
            reply = self.read(self.START_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            reply = {"error": str(exc)}
        if "ready" not in reply:
            err = Path(self.tmp, "host.log").read_text(errors="replace")[-1500:]
            self.error = f"Ray did not start within {self.START_TIMEOUT:g} s: {reply.get('error', reply)}\n{err}"
            self.shutdown()
            raise Unavailable(self.error)
        self.info = {**reply, "wall_s": time.monotonic() - t0, "start_timeout": self.START_TIMEOUT}
        # What Ray's daemons cost while nothing is deployed: they idle beside the other systems' turns.
        before, t1 = cpu_seconds(self.procs()), time.monotonic()
        time.sleep(1.5)
        self.info["idle_cpu_share"] = (cpu_seconds(self.procs()) - before) / (time.monotonic() - t1)
        self.info["idle_pss_mib"] = sum(_pss(pid) for pid in self.procs())

    def read(self, timeout: float) -> dict:
        assert self.proc is not None and self.proc.stdout is not None
        result: list[str] = []

        def readline() -> None:
            while True:
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line or line.startswith("@bench "):  # ray_host's replies; anything else is noise
                    result.append(line.removeprefix("@bench "))
                    return
        reader = threading.Thread(target=readline, daemon=True)
        reader.start()
        deadline = time.monotonic() + timeout
        while reader.is_alive() and time.monotonic() < deadline:
            self.seen.update(tree(self.proc.pid))
            reader.join(0.2)
        if not result:
            self.error = f"no answer from ray_host within {timeout:.0f} s"  # its next line would be out of step
            raise Unavailable(self.error)
        if not result[0]:
            raise RuntimeError(f"ray_host exited ({self.proc.poll()})")
        return json.loads(result[0])

    def call(self, timeout: float = 180, **cmd: object) -> dict:
        with self.lock:
            assert self.proc is not None and self.proc.stdin is not None
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
            reply = self.read(timeout)
        if not reply.get("ok"):
            raise RuntimeError(f"Ray Serve {cmd.get('cmd')} failed: {reply.get('error')}\n{reply.get('traceback', '')}")
        return reply

    def procs(self) -> dict[int, Proc]:
        return tree(self.proc.pid) if self.proc is not None else {}

    def shutdown(self) -> None:
        if self.proc is None:
            return
        self.seen.update(tree(self.proc.pid))
        try:
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(60)
        except (OSError, subprocess.TimeoutExpired):
            pass
        if not wait_gone(self.seen, 15):
            kill_tree(self.seen)
            wait_gone(self.seen, 10)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


class RayServe(System):
    name = "ray"

    def __init__(self, host: RayHost) -> None:
        super().__init__()
        self.host = host
        self.version = 0
        self.deploy_env: dict[str, str] = {}
        self.autoscale: dict | None = None

    def start(self, app_dir: Path, env: dict[str, str], workers: int = 2, scale_to_zero: bool = False,
              timeout: float = 120) -> None:
        self.host.ensure()
        self.work = Path(tempfile.mkdtemp(prefix="bench-ray-")) / "app"
        shutil.copytree(app_dir, self.work, ignore=shutil.ignore_patterns("__pycache__", "anycore.toml"))
        self.port = self.host.port
        self.deploy_env = {k: v for k, v in env.items() if k.startswith("BENCH_")}
        self.workers = workers
        self.autoscale = ({"min_replicas": 0, "initial_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 2,
                           "upscale_delay_s": 0, "downscale_delay_s": 1, "downscale_to_zero_delay_s": 1,
                           "metrics_interval_s": 0.5, "look_back_period_s": 1} if scale_to_zero else None)
        self.deploy(timeout)
        if not scale_to_zero:
            self.wait(self.ready, timeout, "ready")

    def deploy(self, timeout: float = 180) -> dict:
        self.version += 1
        return self.host.call(timeout, cmd="deploy", app_dir=str(self.work), version=str(self.version),
                              replicas=self.workers, autoscale=self.autoscale, env=self.deploy_env)

    def wait(self, cond: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            time.sleep(0.05)
        raise RuntimeError(f"ray not {what} within {timeout:.0f} s")

    def replicas(self) -> int:
        return int(self.host.call(cmd="replicas")["replicas"])

    def worker_pids(self) -> list[int]:
        return [pid for pid in self.host.procs() if cmdline(pid).startswith("ray::ServeReplica")]

    def procs(self) -> dict[int, Proc]:
        return self.host.procs()

    def swap(self) -> Callable[[], None]:
        result: list[BaseException | None] = []

        def run() -> None:
            try:
                self.deploy()
                result.append(None)
            except BaseException as exc:  # noqa: BLE001
                result.append(exc)
        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def wait() -> None:
            thread.join(180)
            if not result:
                raise RuntimeError("Ray Serve redeploy did not return within 180 s")
            if result[0] is not None:
                raise result[0]
        return wait

    def stop(self) -> None:
        if self.host.proc is not None and not self.host.error:
            try:
                self.host.call(cmd="delete")
                self.wait(lambda: not self.worker_pids(), 60, "stopped")
            except Exception:  # noqa: BLE001 - a failed delete leaves replicas that the final shutdown stops
                pass
        if self.work != Path():
            shutil.rmtree(self.work.parent, ignore_errors=True)
