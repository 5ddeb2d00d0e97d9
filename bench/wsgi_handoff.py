"""How requests should cross between a WSGI worker's frame loop and its app threads.

    bench/.venvs/anycore/bin/python bench/wsgi_handoff.py [--requests 20000] [--inflight 8] [--rounds 3] [--app flaskjson]

A real worker (``run_worker``, uvloop, the real runner) is forked with its frame socket
as one end of a socketpair; this process plays the node: it keeps ``--inflight`` ``Req``
frames of a WSGI hello app in flight and reads ``Resp``/``Done``. Reported per design:
requests/s and the worker's CPU per request (utime+stime of the child), alternating the
designs each round. The designs (the first is what anycore ships):

    shared-queue      one SimpleQueue that every app thread takes from; the thread writes its
                      frames to the socket itself (locked writer)
    per-thread-queue  one SimpleQueue per app thread, idle threads on a LIFO stack; the
                      thread writes
    loop-writes       the shared queue, but the thread hands its frames back to the loop
                      (call_soon_threadsafe) and the loop writes them (a2wsgi's shape)
    inline          the app runs in the loop's own thread (gunicorn-sync style), one request
                    at a time whatever is in flight

Run it with ``--inflight 1 --slots 1`` for the slots = 1 question, and with the default
``--inflight 8`` for a worker with free slots.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import threading
import time
from queue import SimpleQueue
from typing import Any

import msgspec

from anycore import wire
from anycore.worker import runner, wsgi_threads
from anycore.worker.wsgi import WsgiCycle, run_cycle

DESIGNS = ["shared-queue", "per-thread-queue", "loop-writes", "inline"]


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "13")])
    return [b"Hello, world!"]


class PerThreadQueue(wsgi_threads.WsgiThreads):
    """One SimpleQueue per thread; the loop pops an idle thread from a LIFO stack."""

    def start(self) -> None:
        self.idle: list[SimpleQueue[WsgiCycle]] = []
        self.lock = threading.Lock()

        def serve(inbox: SimpleQueue[WsgiCycle]) -> None:
            while True:
                cycle = inbox.get()
                tail = run_cycle(self.app, cycle, self.base, self.write)
                self.cycles.pop(cycle.id, None)
                with self.lock:
                    self.idle.append(inbox)
                self.write(tail)
        for _ in self.threads:
            inbox: SimpleQueue[WsgiCycle] = SimpleQueue()
            self.idle.append(inbox)
            threading.Thread(target=serve, args=(inbox,), daemon=True).start()

    def submit(self, req: wire.Req) -> None:
        cycle = WsgiCycle(req, self.cond)
        self.cycles[req.id] = cycle
        with self.lock:
            inbox = self.idle.pop()
        inbox.put(cycle)


class Inline(wsgi_threads.WsgiThreads):
    def start(self) -> None:
        pass

    def submit(self, req: wire.Req) -> None:
        cycle = WsgiCycle(req, self.cond)
        self.write(run_cycle(self.app, cycle, self.base, self.write))


def load_app(name: str) -> Any:
    """``hello`` (above) or the app of bench/apps/NAME (flaskjson, djangorows)."""
    if name == "hello":
        return hello
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(os.path.dirname(__file__), "apps", name, "app.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(spec.origin or ""))
    spec.loader.exec_module(module)
    return module.app


APP: Any = hello


def child(design: str, sock: socket.socket, slots: int) -> None:
    if design == "per-thread-queue":
        runner.WsgiThreads = PerThreadQueue  # type: ignore[misc]
    elif design == "inline":
        runner.WsgiThreads = Inline  # type: ignore[misc]
    elif design == "loop-writes":
        original = runner.WsgiThreads

        class LoopWrites(original):  # type: ignore[misc, valid-type]
            def __init__(self, app: Any, slots: int, write: Any) -> None:
                import asyncio

                loop = asyncio.get_running_loop()
                super().__init__(app, slots, lambda data: loop.call_soon_threadsafe(write, data))
        runner.WsgiThreads = LoopWrites  # type: ignore[misc]
    runner.run_worker(APP, lifespan=False, data_fd=sock.detach(), log_fd=os.open(os.devnull, os.O_WRONLY),
                      tick=1.0, wsgi=True, slots=1 if design == "inline" else slots)


def measure(design: str, requests: int, inflight: int, slots: int) -> tuple[float, float]:
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:
        ours.close()
        child(design, theirs, slots)
        os._exit(0)
    theirs.close()
    decoder = msgspec.msgpack.Decoder(wire.Frame)
    buf = bytearray()

    def frames() -> Any:
        while True:
            while len(buf) >= 4:
                size = int.from_bytes(buf[:4], "big")
                if len(buf) < 4 + size:
                    break
                frame = decoder.decode(bytes(buf[4:4 + size]))
                del buf[:4 + size]
                yield frame
            data = ours.recv(1 << 16)
            if not data:
                return
            buf.extend(data)

    def req(i: int) -> bytes:
        return wire.encode(wire.Req(i, "GET", "/", b"/", b"", [(b"host", b"bench")], "1.1", "http", None, None, "", b"", False))

    stream = frames()
    while type(next(stream)) is not wire.Ready:
        pass
    done = sent = 0
    cpu0 = _cpu(pid)
    t0 = time.perf_counter()
    ours.sendall(b"".join(req(i) for i in range(inflight)))
    sent = inflight
    for frame in stream:
        if type(frame) is wire.Done:
            done += 1
            if sent < requests:
                ours.sendall(req(sent))
                sent += 1
            elif done == requests:
                break
    elapsed = time.perf_counter() - t0
    cpu = _cpu(pid) - cpu0
    ours.sendall(wire.encode(wire.Stop()))
    ours.close()
    os.waitpid(pid, 0)
    return requests / elapsed, cpu * 1e6 / requests


def _cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--inflight", type=int, default=8)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--designs", default=",".join(DESIGNS))
    parser.add_argument("--app", default="hello", help="hello, or an app of bench/apps: flaskjson, djangorows")
    args = parser.parse_args()
    global APP
    APP = load_app(args.app)
    designs = args.designs.split(",")
    results: dict[str, list[tuple[float, float]]] = {d: [] for d in designs}
    print(f"load {os.getloadavg()[0]:.1f}; {args.app}: {args.requests} requests, {args.inflight} in flight, slots {args.slots}")
    for r in range(args.rounds):
        for design in designs if r % 2 == 0 else designs[::-1]:
            results[design].append(measure(design, args.requests, args.inflight, args.slots))
    for design, rows in results.items():
        rates = sorted(x for x, _ in rows)
        cpus = sorted(y for _, y in rows)
        print(f"{design:13s} {rates[len(rates) // 2]:8.0f} req/s ({rates[0]:.0f}–{rates[-1]:.0f})   "
              f"worker CPU {cpus[len(cpus) // 2]:5.1f} µs/req ({cpus[0]:.1f}–{cpus[-1]:.1f})")
    print(f"load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    sys.exit(main())
