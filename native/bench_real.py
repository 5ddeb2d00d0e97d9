"""The gateway's cost on the real path: `anycore up bench/apps/hello --gateway native` (2
workers, 8 slots each), wrk -t1 at c=32 and c=256, the gateway process's utime+stime per
request. With two binaries, alternating ABBA... (a machine shared with other work drifts):

    /work/main/.venv/bin/python native/bench_real.py [--rounds 2] BINARY [BINARY_B]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from procs import free_port, stop_tree, tree  # noqa: E402
from systems import http_get  # noqa: E402


def cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one(binary: str, concurrencies: list[int], seconds: int) -> list[str]:
    work = Path(tempfile.mkdtemp(prefix="bench-real-"))
    shutil.copytree(ROOT / "bench" / "apps" / "hello", work / "app")
    (work / "app" / "anycore.toml").write_text('name = "bench"\nworkers = 2\n')
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "ANYCORE_HOME": str(work / "home"), "ANYCORE_USER": "root",
           "ANYCORE_GATEWAY_BIN": binary}
    proc = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", str(work / "app"), "--listen",
                             f"127.0.0.1:{port}", "--gateway", "native"], env=env, stdout=open(work / "log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    lines = []
    try:
        deadline = time.monotonic() + 60
        while http_get(url, 2)[0] != 200:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((work / "log").read_text()[-2000:])
            time.sleep(0.1)
        gateway = next(p for p in tree(proc.pid) if b"--control-fd" in Path(f"/proc/{p}/cmdline").read_bytes())
        subprocess.run(["wrk", "-t1", "-c8", "-d1s", url], capture_output=True)  # warm up
        for c in concurrencies:
            before = cpu(gateway)
            out = subprocess.run(["wrk", "-t1", f"-c{c}", f"-d{seconds}s", url], capture_output=True, text=True).stdout
            used = cpu(gateway) - before
            total = int(re.search(r"(\d+) requests in", out).group(1))
            rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
            errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
            lines.append(f"c={c}: {rps:.0f} req/s, gateway {used / total * 1e6:.1f} core-us/req, "
                         f"non-2xx {errors.group(1) if errors else 0}")
    finally:
        stop_tree(proc)
        shutil.rmtree(work, ignore_errors=True)
    return lines


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("binaries", nargs="+")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("-c", type=int, action="append")
    args = p.parse_args()
    for r in range(args.rounds):
        for binary in args.binaries if r % 2 == 0 else args.binaries[::-1]:
            print(f"{binary} (load {os.getloadavg()[0]:.1f}): " + "; ".join(one(binary, args.c or [32, 256], args.seconds)),
                  flush=True)


if __name__ == "__main__":
    main()
