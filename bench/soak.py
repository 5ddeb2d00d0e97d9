"""Soak: a node under mixed load for minutes, with its memory, fds and processes sampled.

Not a test (CI never runs it): `python3 bench/soak.py [--duration 600]` from a checkout with
`.venv` installed (the README's install). It starts `anycore up` on a fresh home and a free
port with the `wsession` app (HTTP, a plain ASGI WebSocket echo on `/`, an echo `Session` on
`/session`), then, all on 127.0.0.1 and bounded in time:

- HTTP: keep-alive clients alternating GETs and 4 KiB POSTs;
- WebSockets: Session clients each keeping one connection for the whole run (a Session
  survives deploys) and checking every echo, plus plain ASGI WebSocket clients that open,
  echo 20 messages and close, over and over (the open/close churn; a deploy closes them
  with 1012, and they reconnect);
- deploys: a new release (VERSION changed) every `--deploy-every` seconds.

Every `--sample` seconds it records the RSS of the node and of its whole process tree, the
node's open fds and the number of processes in the tree. The verdict compares the last
minute with the first minute after warm-up (the first minute is the allocators settling):
flat means RSS within 10 % (and 16 MiB), fds within 8, the same number of processes.
Writes `bench/results/soak-<date>.md`; stops everything it started (also on Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import websockets

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from procs import snapshot  # noqa: E402

PAGE = 4096


@dataclass
class Counts:
    http_ok: int = 0
    http_errors: int = 0
    session_messages: int = 0
    session_errors: int = 0
    ws_cycles: int = 0
    ws_closed_by_deploy: int = 0
    ws_errors: int = 0
    deploys_ok: int = 0
    deploys_failed: int = 0
    samples: list[dict[str, float]] = field(default_factory=list)
    errors_seen: list[str] = field(default_factory=list)

    def error(self, kind: str, exc: BaseException | str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        if len(self.errors_seen) < 20:
            self.errors_seen.append(f"{kind}: {exc!r}"[:200])


def tree(root: int) -> list[int]:
    procs = snapshot()
    found, frontier = {root}, {root}
    while frontier:
        frontier = {p.pid for p in procs.values() if p.ppid in frontier} - found
        found |= frontier
    return sorted(pid for pid in found if pid in procs)


def rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE / 2**20
    except OSError:
        return 0.0


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


async def http_client(base: str, until: float, counts: Counts) -> None:
    body = b"x" * 4096
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        n = 0
        while time.monotonic() < until:
            n += 1
            try:
                response = await (client.get("/") if n % 2 else client.post("/", content=body))
                if response.status_code == 200:
                    counts.http_ok += 1
                else:
                    counts.error("http_errors", f"status {response.status_code}: {response.text[:80]}")
            except httpx.HTTPError as exc:
                counts.error("http_errors", exc)


async def session_client(ws_base: str, until: float, counts: Counts) -> None:
    """One Session connection for the whole run: every echo must come back, deploys or not."""
    try:
        async with websockets.connect(ws_base + "/session", open_timeout=10) as ws:
            n = 0
            while time.monotonic() < until:
                n += 1
                await ws.send(f"m{n}")
                reply = await asyncio.wait_for(ws.recv(), 10)
                if reply != f"m{n}":
                    counts.error("session_errors", f"expected m{n}, got {reply!r}")
                    return
                counts.session_messages += 1
                await asyncio.sleep(0.05)
    except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
        counts.error("session_errors", exc)


async def churn_client(ws_base: str, until: float, counts: Counts) -> None:
    """Plain ASGI WebSockets opened, used and closed over and over (deflate on, the default)."""
    while time.monotonic() < until:
        try:
            async with websockets.connect(ws_base + "/", open_timeout=10) as ws:
                for i in range(20):
                    await ws.send(f"c{i}")
                    await asyncio.wait_for(ws.recv(), 10)
            counts.ws_cycles += 1
        except websockets.ConnectionClosed as exc:
            if exc.rcvd is not None and exc.rcvd.code == 1012:  # a deploy drained it: reconnect
                counts.ws_closed_by_deploy += 1
            else:
                counts.error("ws_errors", exc)
        except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as exc:
            counts.error("ws_errors", exc)


async def deployer(anycore: str, env: dict[str, str], app: Path, every: float, until: float, counts: Counts) -> None:
    version = 0
    while time.monotonic() + every < until:
        await asyncio.sleep(every)
        version += 1
        source = app / "app.py"
        text = source.read_text()
        source.write_text(text.replace(text.split('VERSION = "', 1)[1].split('"', 1)[0], f"v{version}", 1))
        proc = await asyncio.create_subprocess_exec(anycore, "deploy", str(app), env=env, stdout=subprocess.PIPE,
                                                    stderr=subprocess.STDOUT)
        out, _ = await proc.communicate()
        if proc.returncode == 0:
            counts.deploys_ok += 1
        else:
            counts.error("deploys_failed", out.decode(errors="replace")[-200:])


async def sampler(node_pid: int, every: float, until: float, counts: Counts, started: float) -> None:
    while time.monotonic() < until:
        pids = tree(node_pid)
        counts.samples.append({"t": round(time.monotonic() - started, 1), "node_rss": round(rss_mib(node_pid), 1),
                               "tree_rss": round(sum(rss_mib(p) for p in pids), 1), "node_fds": fds(node_pid),
                               "procs": len(pids)})
        await asyncio.sleep(every)


def verdict(samples: list[dict[str, float]], warmup: float, duration: float) -> tuple[bool, list[str]]:
    first = [s for s in samples if warmup <= s["t"] < warmup + 60]
    last = [s for s in samples if s["t"] >= duration - 60]
    if not first or not last:
        return False, ["not enough samples (run at least 3 minutes)"]
    lines, flat = [], True
    for key, rel, slack in (("node_rss", 0.10, 16.0), ("tree_rss", 0.10, 16.0), ("node_fds", 0.0, 8), ("procs", 0.0, 0)):
        a, b = statistics.median(s[key] for s in first), statistics.median(s[key] for s in last)
        ok = b - a <= max(a * rel, slack)
        flat &= ok
        lines.append(f"| {key} | {a:g} | {b:g} | {b - a:+g} | {'flat' if ok else 'GROWS'} |")
    return flat, lines


async def run(args: argparse.Namespace) -> int:
    anycore = str(Path(sys.executable).parent / "anycore")
    work = Path(tempfile.mkdtemp(prefix="anycore-soak-"))
    app = work / "svc"
    shutil.copytree(HERE / "apps" / "wsession", app)
    (app / "anycore.toml").write_text('name = "soak"\nworkers = 2\n' + (app / "anycore.extra.toml").read_text())
    (app / "anycore.extra.toml").unlink()
    env = {**os.environ, "ANYCORE_HOME": str(work / "home")}
    env.pop("ANYCORE_TOKEN", None)
    node = subprocess.Popen([anycore, "up", str(app), "--listen", "127.0.0.1:0"], env=env, stdin=subprocess.DEVNULL,
                            stdout=open(work / "node.out", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    counts = Counts()
    try:
        deadline = time.monotonic() + 60
        while not (work / "home" / "node.json").exists() or "service soak" not in (work / "node.out").read_text():
            if node.poll() is not None or time.monotonic() > deadline:
                print((work / "node.out").read_text()[-2000:], file=sys.stderr)
                return 1
            await asyncio.sleep(0.1)
        base = json.loads((work / "home" / "node.json").read_text())["gateway"]
        ws_base = base.replace("http://", "ws://")
        started = time.monotonic()
        until = started + args.duration
        print(f"soak: node pid {node.pid} at {base}, {args.duration:.0f} s", flush=True)
        await asyncio.gather(
            sampler(node.pid, args.sample, until, counts, started),
            deployer(anycore, env, app, args.deploy_every, until, counts),
            *(http_client(base, until, counts) for _ in range(args.http)),
            *(session_client(ws_base, until, counts) for _ in range(args.sessions)),
            *(churn_client(ws_base, until, counts) for _ in range(args.churn)),
        )
    finally:
        subprocess.run([anycore, "down"], env=env, capture_output=True, timeout=60)
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(node.pid, signal.SIGKILL)
    flat, table = verdict(counts.samples, args.warmup, args.duration)
    report = [
        f"# Soak, {time.strftime('%Y-%m-%d %H:%M')} — {'FLAT' if flat else 'NOT FLAT'}", "",
        f"`python3 bench/soak.py --duration {args.duration:.0f}`: {args.http} HTTP clients (GET / 4 KiB POST), "
        f"{args.sessions} Session connections held for the whole run, {args.churn} ASGI WebSocket clients opening "
        f"and closing, a deploy every {args.deploy_every:.0f} s; load average at the end {os.getloadavg()[0]:.1f}.", "",
        "| measure | first minute after warm-up (median) | last minute (median) | change | |", "|---|---|---|---|---|",
        *table, "",
        f"Traffic: {counts.http_ok} HTTP answers, {counts.http_errors} errors; {counts.session_messages} Session echoes, "
        f"{counts.session_errors} errors; {counts.ws_cycles} WebSocket open/20 echoes/close cycles, "
        f"{counts.ws_closed_by_deploy} closed with 1012 by a deploy, {counts.ws_errors} errors; "
        f"{counts.deploys_ok} deploys, {counts.deploys_failed} failed.", "",
        *(["Errors seen:", "", *(f"- `{e}`" for e in counts.errors_seen), ""] if counts.errors_seen else []),
        "Samples (t s: node RSS MiB, tree RSS MiB, node fds, processes):", "",
        ", ".join(f"{s['t']:.0f}: {s['node_rss']}/{s['tree_rss']}/{s['node_fds']}/{s['procs']}" for s in counts.samples), "",
    ]
    out = HERE / "results" / f"soak-{time.strftime('%Y-%m-%d')}.md"
    out.write_text("\n".join(report))
    print("\n".join(report[:12]))
    print(f"written to {out}")
    shutil.rmtree(work, ignore_errors=True)
    errors = counts.http_errors + counts.session_errors + counts.ws_errors + counts.deploys_failed
    return 0 if flat and not errors else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=600.0)
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--sample", type=float, default=5.0)
    parser.add_argument("--deploy-every", type=float, default=15.0)
    parser.add_argument("--http", type=int, default=8)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--churn", type=int, default=8)
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
