"""anycore (2 workers) against `uvicorn --workers 2` with wrk, alternating, in one run.

    .venv/bin/python bench/http_vs_uvicorn.py [--rounds 3] [--duration 10] [--connections 32,256]

Needs wrk (`apt-get install -y wrk`). For each app (bench/apps/*) and connection count it
runs, round after round, one anycore node and one uvicorn in alternating order; each
server is started fresh, warmed up, measured with `wrk -t1 -cN -dS --latency`, then
stopped. Writes bench/results/<time>.md and bench/RESULTS.md: per app and connection
count, the median over rounds of the anycore/uvicorn ratios of req/s, p50 and p99, then
every raw run with the 1-minute load average around it and the CPU the server used.
Every process it starts is stopped, also on Ctrl-C, SIGTERM or an exception.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from common import free_port
from typing import Any

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
APPS = HERE / "apps"
CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_S = 3
KINDS = ("anycore", "uvicorn")


def cpu_app() -> Any:
    spec = importlib.util.spec_from_file_location("bench_cpu1ms", APPS / "cpu1ms" / "app.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def calibrate_cpu_iters(target_s: float = 0.001) -> int:
    """Iterations of the cpu1ms app's work() that take ~1 ms of CPU here, uncontended (best of many)."""
    probe = 10_000
    best = min(_cpu_time(cpu_app().work, probe) for _ in range(100))
    return max(1, round(probe * target_s / best))


def _cpu_time(fn: Any, arg: int) -> float:
    t = time.thread_time()
    fn(arg)
    return time.thread_time() - t


def _proc_stats() -> dict[int, tuple[int, int, float]]:
    """pid -> (ppid, start time, user+system CPU seconds) for every live process."""
    stats = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # fields[0] is stat field 3 (state)
        except OSError:
            continue
        stats[int(entry.name)] = (int(fields[1]), int(fields[19]), (int(fields[11]) + int(fields[12])) / CLK_TCK)
    return stats


def tree(root: int) -> dict[int, tuple[int, int, float]]:
    """`root` and all its descendants (anycore's nats-server and zygote run in sessions of their own)."""
    stats = _proc_stats()
    found, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if pid in stats and pid not in found:
            found[pid] = stats[pid]
            frontier += [p for p, (ppid, _, _) in stats.items() if ppid == pid]
    return found


class Server:
    """One server under test; on stop, every process of its tree is gone."""

    def __init__(self, kind: str, app: str, env: dict[str, str]) -> None:
        self.kind, self.app = kind, app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.tmp = tempfile.mkdtemp(prefix=f"bench-{kind}-")
        self.log_path = Path(self.tmp) / "server.log"
        self.log = open(self.log_path, "wb")
        if kind == "anycore":
            cmd = [str(VENV_BIN / "anycore"), "up", str(APPS / app), "--listen", f"127.0.0.1:{self.port}"]
            env = {**env, "ANYCORE_HOME": str(Path(self.tmp) / "home")}
        else:
            cmd = [str(VENV_BIN / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", str(self.port),
                   "--workers", "2", "--loop", "uvloop", "--http", "httptools",
                   "--log-level", "warning", "--no-access-log"]
        self.proc = subprocess.Popen(cmd, cwd=APPS / app, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def wait_ready(self, timeout: float = 60) -> None:
        """Answers 200 and, for anycore, both workers are in service."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited with {self.proc.returncode}:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    ok = resp.status == 200
            except (urllib.error.URLError, OSError):
                ok = False
            if ok and (self.kind != "anycore" or "event=service.shifted" in self.log_path.read_text()):
                return
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not ready within {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def body(self) -> bytes:
        with urllib.request.urlopen(self.url, timeout=5) as resp:
            return resp.read()

    def stop(self) -> None:
        procs = tree(self.proc.pid)
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)  # both shut their children down on SIGTERM
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                pass
        alive = _proc_stats()
        for pid, (_, start, _) in procs.items():  # whatever is left: kill it, if it is still the same process
            if pid in alive and alive[pid][1] == start:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait()
        self.log.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


@contextmanager
def running(kind: str, app: str, env: dict[str, str]) -> Iterator[Server]:
    server = Server(kind, app, env)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    lat = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    if not rps or not total or set(lat) != {"50", "99"}:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(rps.group(1)), "requests": float(total.group(1)), "p50": lat["50"], "p99": lat["99"],
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "sockerr": float(sum(map(int, sock.groups()))) if sock else 0.0}


def measure(kind: str, app: str, connections: int, duration: int, env: dict[str, str], expect: bytes | None) -> dict[str, float]:
    with running(kind, app, env) as server:
        if expect is not None and server.body() != expect:
            raise RuntimeError(f"{kind} answered {server.body()!r}, expected {expect!r}")
        wrk(server.url, connections, WARMUP_S)
        load_before = os.getloadavg()[0]
        before = tree(server.proc.pid)
        result = wrk(server.url, connections, duration)
        after = tree(server.proc.pid)
        cpu = sum(c for _, _, c in after.values()) - sum(c for _, _, c in before.values())
        root = after[server.proc.pid][2] - before[server.proc.pid][2]
        result["load_before"] = load_before
        result["load_after"] = os.getloadavg()[0]
        # Server CPU (all its processes) per request, in core-microseconds.
        result["cpu_us_per_req"] = cpu * 1e6 / result["requests"] if result["requests"] else 0.0
        # Of which the main process (anycore: the node, i.e. the gateway; uvicorn: the idle supervisor).
        result["main_cpu_us_per_req"] = root * 1e6 / result["requests"] if result["requests"] else 0.0
        return result


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--connections", default="32,256", help="comma-separated wrk -c values")
    parser.add_argument("--apps", default="hello,cpu1ms", help="comma-separated apps from bench/apps")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed. On Debian/Ubuntu: sudo apt-get install -y wrk")
    if not (VENV_BIN / "uvicorn").exists() or not (VENV_BIN / "anycore").exists():
        sys.exit(f"run with the project's venv python (needs anycore and uvicorn next to {sys.executable})")
    signal.signal(signal.SIGTERM, _sigterm)

    apps = args.apps.split(",")
    conns = [int(c) for c in args.connections.split(",")]
    iters = calibrate_cpu_iters()
    env = {**os.environ, "BENCH_CPU_ITERS": str(iters)}
    print(f"cpu1ms: {iters} iterations ~ 1 ms of CPU; {len(apps) * len(conns) * args.rounds * 2} runs of "
          f"{WARMUP_S}+{args.duration} s", flush=True)
    expected = {"hello": b"Hello, world!"}
    if "cpu1ms" in apps:
        expected["cpu1ms"] = f"{iters} {cpu_app().work(iters)}".encode()

    started = time.strftime("%Y-%m-%d %H:%M:%S")
    rows: list[dict[str, Any]] = []
    try:
        for app in apps:
            for c in conns:
                for r in range(args.rounds):
                    order = KINDS if r % 2 == 0 else KINDS[::-1]
                    result = {kind: measure(kind, app, c, args.duration, env, expected.get(app)) for kind in order}
                    rows.append({"app": app, "c": c, "round": r, "first": order[0], **result})
                    a, u = result["anycore"], result["uvicorn"]
                    print(f"{app} c={c} round {r}: anycore {a['rps']:.0f} req/s p50 {a['p50']:.2f} p99 {a['p99']:.2f} ms "
                          f"{a['cpu_us_per_req']:.0f} cpu-us/req | uvicorn {u['rps']:.0f} req/s p50 {u['p50']:.2f} "
                          f"p99 {u['p99']:.2f} ms {u['cpu_us_per_req']:.0f} cpu-us/req | ratio {a['rps'] / u['rps']:.2f} "
                          f"| load {a['load_before']:.1f}/{u['load_before']:.1f}", flush=True)
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr)
    if not rows:
        sys.exit(1)
    report = render(rows, apps, conns, args, iters, started)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / f"{stamp}.md").write_text(report)
    (HERE / "RESULTS.md").write_text(report)
    print(report)
    print(f"written: bench/results/{stamp}.md and bench/RESULTS.md")


def render(rows: list[dict[str, Any]], apps: list[str], conns: list[int], args: Any, iters: int, started: str) -> str:
    goals = {"hello": 1.0, "cpu1ms": 0.95}
    out = [
        f"# anycore vs uvicorn --workers 2 ({started})",
        "",
        f"{os.cpu_count()} cores, wrk -t1, {args.duration} s per run after a {WARMUP_S} s warm-up, "
        f"{args.rounds} rounds alternating which server goes first; cpu1ms = {iters} iterations (~1 ms CPU). "
        "Ratios are anycore / uvicorn, median over rounds (req/s: higher is better; latency: lower is better). "
        "Goals: hello req/s >= 1.0x, cpu1ms req/s >= 0.95x, p99 <= 1.0x.",
        "",
        "| app | c | req/s ratio | p50 ratio | p99 ratio | anycore req/s | uvicorn req/s | anycore p99 ms | uvicorn p99 ms "
        "| CPU/req ratio | goal met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for app in apps:
        for c in conns:
            sel = [r for r in rows if r["app"] == app and r["c"] == c]
            if not sel:
                continue

            def ratio(key: str, sel: list[dict[str, Any]] = sel) -> float:
                return statistics.median(r["anycore"][key] / r["uvicorn"][key] for r in sel)

            def med(kind: str, key: str, sel: list[dict[str, Any]] = sel) -> float:
                return statistics.median(r[kind][key] for r in sel)

            met = ratio("rps") >= goals.get(app, 1.0) and ratio("p99") <= 1.0
            out.append(f"| {app} | {c} | {ratio('rps'):.2f}x | {ratio('p50'):.2f}x | {ratio('p99'):.2f}x "
                       f"| {med('anycore', 'rps'):.0f} | {med('uvicorn', 'rps'):.0f} "
                       f"| {med('anycore', 'p99'):.2f} | {med('uvicorn', 'p99'):.2f} "
                       f"| {ratio('cpu_us_per_req'):.2f}x | {'yes' if met else 'no'} |")
    out += [
        "",
        "CPU/req: user+system CPU of all the server's processes (anycore: node, nats-server, zygote, workers; "
        "uvicorn: supervisor and workers) per request served, anycore / uvicorn. In the raw table, \"of which main "
        "process\" is anycore's node (the gateway) or uvicorn's supervisor (idle).",
        "",
        "## Raw runs",
        "",
        "Load is the 1-minute load average just before the measured wrk run and just after it (this machine has "
        f"{os.cpu_count()} cores; the server and wrk alone make ~2-3, anything above that is other work on the machine). "
        "Socket errors are almost always wrk timeouts (no answer within 2 s): wrk leaves those requests out of its "
        "latency percentiles, so a server with socket errors has a better p50/p99 than its clients saw.",
        "",
        "| app | c | round | server | req/s | p50 ms | p99 ms | CPU us/req | of which main process | non-2xx | socket errors "
        "| load before/after |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        for kind in (r["first"], next(k for k in KINDS if k != r["first"])):
            m = r[kind]
            out.append(f"| {r['app']} | {r['c']} | {r['round']} | {kind} | {m['rps']:.0f} | {m['p50']:.2f} | {m['p99']:.2f} "
                       f"| {m['cpu_us_per_req']:.0f} | {m['main_cpu_us_per_req']:.0f} | {m['non2xx']:.0f} | {m['sockerr']:.0f} "
                       f"| {m['load_before']:.2f}/{m['load_after']:.2f} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main()
