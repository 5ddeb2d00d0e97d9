"""The peers of the native scenario (issue 15), behind the same interface as systems.py.

    anycore-native   `anycore up --gateway native`: the node as control plane, anycore-gateway
                     (Rust) holding the clients; the gateway process is the one named anycore-gateway
    granian-asgi     `granian --interface asgi --workers 2` (Rust HTTP server, Python app)
    nginx-uvicorn    nginx (system package) in front of `uvicorn --workers 2` on a Unix socket,
                     upstream keep-alive: what a native hop in front of Python costs

Each system also names its *gateway* processes, whose own CPU per request the scenario
reports: the node (anycore on its Python gateway), anycore-gateway, nginx; none for
uvicorn and granian (their HTTP is in the worker processes).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from procs import Proc, cmdline, snapshot
from systems import VENVS, Anycore, System, Unavailable, Uvicorn


def gateway_procs(system: System) -> dict[int, Proc]:
    """The processes of ``system`` that do its HTTP gateway's work (see the module doc)."""
    procs = system.procs()
    name = system.name
    if name == "anycore":
        return {pid: p for pid, p in procs.items() if pid == system.proc.pid}  # type: ignore[union-attr]
    if name.startswith("anycore-native"):  # anycore-native-sN too (slots = N)
        return {pid: p for pid, p in procs.items() if "anycore-gateway" in cmdline(pid)}
    if name == "nginx-uvicorn":
        return {pid: p for pid, p in procs.items() if cmdline(pid).startswith("nginx")}
    return {}


class AnycoreNative(Anycore):
    """``slots``: a service setting other than the default (named anycore-native-sN)."""

    gateway = "native"

    def __init__(self, slots: int = 0) -> None:
        super().__init__()
        self.slots = slots
        self.name = f"anycore-native-s{slots}" if slots else "anycore-native"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        cmd, env = super().command(workers, scale_to_zero)
        if self.slots:
            toml = self.work / "anycore.toml"
            toml.write_text(toml.read_text() + f"slots = {self.slots}\n")
        python = VENVS / "anycore" / "bin" / "python"
        probe = subprocess.run([str(python), "-c", "from anycore.node.native import find_binary; "
                                              "print(find_binary() or '')"], capture_output=True, text=True)
        if not probe.stdout.strip():
            raise Unavailable("anycore-gateway is not built (cargo and the Debian crates; see README, Native gateway)")
        return cmd, env


class GranianAsgi(System):
    name = "granian-asgi"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        if not (VENVS / "granian" / "bin" / "granian").exists():
            raise Unavailable("granian is not installed (setup_env.py installs it with --systems ...,granian-asgi)")
        return ([str(VENVS / "granian" / "bin" / "granian"), "--interface", "asgi", "--workers", str(workers),
                 "--host", "127.0.0.1", "--port", str(self.port), "--log-level", "warning", "app:app"], {})

    def worker_pids(self) -> list[int]:
        assert self.proc is not None
        return [p.pid for p in snapshot().values() if p.ppid == self.proc.pid]

    def swap(self) -> Callable[[], None]:
        raise NotImplementedError("the native scenario measures throughput only")


NGINX_CONF = """
daemon off;
master_process on;
user root;  # its workers reach the Unix socket in the 0700 scratch dir (the suite runs as root)
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream app {{ server unix:{dir}/uvicorn.sock; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=2048;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


class NginxUvicorn(Uvicorn):
    """nginx (its own process tree, started from a shell that also runs uvicorn: one root)."""

    name = "nginx-uvicorn"

    def command(self, workers: int, scale_to_zero: bool) -> tuple[list[str], dict[str, str]]:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if nginx is None:
            raise Unavailable("nginx is not installed (apt-get install -y nginx-light)")
        scratch = self.work.parent
        (scratch / "nginx.conf").write_text(NGINX_CONF.format(workers=workers, dir=scratch, port=self.port))
        uvicorn = [str(VENVS / "uvicorn" / "bin" / "uvicorn"), "app:app", "--uds", str(scratch / "uvicorn.sock"),
                   "--loop", "uvloop", "--http", "httptools", "--log-level", "warning", "--no-access-log",
                   "--workers", str(workers)]
        script = (f"{' '.join(uvicorn)} & U=$!; {nginx} -c {scratch / 'nginx.conf'} -e {scratch / 'nginx-error.log'} & "
                  "N=$!; trap 'kill -TERM $U $N; wait' TERM; wait")
        return ["/bin/sh", "-c", script], {}

    def worker_pids(self) -> list[int]:
        return [pid for pid in self.procs() if "uvicorn" in cmdline(pid) and "resource_tracker" not in cmdline(pid)]

    def swap(self) -> Callable[[], None]:
        raise NotImplementedError("the native scenario measures throughput only")
