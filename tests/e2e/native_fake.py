"""A stand-in node and stand-in workers for ``anycore-gateway`` (the native data plane),
speaking the real protocols: ``anycore.dataplane`` on a SOCK_SEQPACKET control socket
(fds by SCM_RIGHTS) and ``anycore.wire`` frames on each worker's data socket.

``FakeNode`` starts the binary, sends it Settings/Listen/Service/AddWorker, and records
what it says back (an Upgrade's client socket too: ``upgraded``). ``python native_fake.py worker FD`` is a fake worker (one process per
worker, as in a real node) answering by path:

- ``/hello``: 200 "hello" in one Resp frame, then Done — the benchmark's app;
- ``/headers``: the Req frame's fields as JSON;
- ``/echo``: reads the whole streamed request body (returning Credit as it reads), then
  answers its length and sha256 — unless ``?stream=1``: then echoes each chunk back as
  it arrives (a streaming response);
- ``/stream?n=N``: N chunks of 64 KiB, under the response credit window;
- ``/sleep?s=X``: answers after X seconds; a Cancel makes it say Done("cancelled") (with
  ``&stubborn=1`` it ignores the Cancel and keeps its slot until it answers);
- ``/noresp``: Done without a response; ``/die``: the worker exits mid-request;
- ``/cancels``: how many Cancel frames this worker received;
- anything else: 200 with the request body, once whole.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from anycore import dataplane, wire  # noqa: E402

BINARY = Path(os.environ.get("ANYCORE_GATEWAY_BIN") or ROOT / "native" / "target" / "release" / "anycore-gateway")


class FakeNode:
    def __init__(self, threads: int = 0, max_connections: int = 1000, header_limit: int = 65536,
                 stderr: Any = None) -> None:
        self.ctrl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([str(BINARY), "--control-fd", str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                     stderr=stderr)
        theirs.close()
        self.messages: list[Any] = []
        self.upgrades: list[tuple[Any, socket.socket]] = []
        self.upgrades_taken = 0
        self.cond = threading.Condition()
        self.workers: dict[int, subprocess.Popen[bytes]] = {}
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.send(dataplane.Settings("node-test", max_connections, header_limit, 10.0, 5.0, threads))
        self.started = self.wait(lambda m: isinstance(m, dataplane.Started))
        self.port = 0

    def _read(self) -> None:
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.ctrl, 1 << 17, 4)
            except OSError:
                return
            if not data:
                return
            message = dataplane.from_gateway.decode(data)
            if isinstance(message, dataplane.Upgrade) and fds:
                self.upgrades.append((message, socket.socket(fileno=fds.pop(0))))
            for fd in fds:
                os.close(fd)
            with self.cond:
                self.messages.append(message)
                self.cond.notify_all()

    def upgraded(self, timeout: float = 10.0) -> tuple[Any, socket.socket]:
        """The next WebSocket hand-off: its Upgrade message and the client's socket, now
        the node's (as ``node/native.py`` adopts it)."""
        taken = self.upgrades_taken
        self.wait(lambda m: isinstance(m, dataplane.Upgrade) and len(self.upgrades) > taken, timeout)
        self.upgrades_taken += 1
        return self.upgrades[taken]

    def wait(self, match: Any, timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for m in self.messages:
                    if match(m):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the gateway sent no matching message within {timeout}s: {self.messages[-5:]}")
                self.cond.wait(left)

    def stats(self, service: str, match: Any, timeout: float = 10.0, since: int = 0) -> Any:
        """Wait until the latest Stats of ``service`` (after message number ``since``)
        matches. Stats come only on change."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                latest = next((m for m in reversed(self.messages[since:])
                               if isinstance(m, dataplane.Stats) and m.service == service), None)
                if latest is not None and match(latest):
                    return latest
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"the latest Stats of {service} never matched within {timeout}s: {latest}")
                self.cond.wait(left)

    def send(self, message: Any, fds: list[int] | None = None) -> None:
        socket.send_fds(self.ctrl, [dataplane.encode(message)], fds or [])

    def listen(self) -> int:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        sock.listen(2048)
        self.port = sock.getsockname()[1]
        self.send(dataplane.Listen(f"127.0.0.1:{self.port}"), [sock.fileno()])
        sock.close()
        return self.port

    def service(self, name: str = "app", routes: list[str] | None = None, release: str = "r1", running: bool = True,
                max_body: int = 1 << 30, max_queue: int = 100, max_queue_bytes: int = 1 << 26,
                deadline: float = 30.0, request_buffer: int = 64 * 1024, body_timeout: float = 30.0) -> None:
        self.send(dataplane.Service(name, routes or ["/"], release, running, max_body, max_queue, max_queue_bytes,
                                    deadline, request_buffer, body_timeout))

    def add_worker(self, worker: int, service: str = "app", release: str = "r1", slots: int = 8,
                   stdout: Any = None) -> subprocess.Popen[bytes]:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        proc = subprocess.Popen([sys.executable, __file__, "worker", str(theirs.fileno())], pass_fds=[theirs.fileno()],
                                stdout=stdout)
        theirs.close()
        self.send(dataplane.AddWorker(service, release, worker, slots), [mine.fileno()])
        mine.close()
        self.workers[worker] = proc
        return proc

    def hang_up(self) -> None:
        """Close the node's end of the control socket (shutdown first: the reader thread's
        recv would keep the socket open under a bare close)."""
        try:
            self.ctrl.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.ctrl.close()

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        self.hang_up()
        for proc in [self.proc, *self.workers.values()]:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


# -- the fake worker ----------------------------------------------------------------------------
class Worker(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.out: list[bytes] = []
        self.requests: dict[int, dict[str, Any]] = {}
        self.cancels = 0
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.loop.stop()

    def send(self, frame: Any) -> None:
        if not self.out:
            self.loop.call_soon(self.flush)
        self.out.append(wire.encode(frame))

    def flush(self) -> None:
        if self.out and self.transport is not None:
            self.transport.write(b"".join(self.out))
        self.out.clear()

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while len(self.buf) >= 4:
            n = int.from_bytes(self.buf[:4], "big")
            if len(self.buf) < 4 + n:
                break
            frame = wire.decoder.decode(bytes(self.buf[4:4 + n]))
            del self.buf[:4 + n]
            self.on_frame(frame)

    def on_frame(self, f: Any) -> None:
        if type(f) is wire.Req:
            self.on_request(f)
        elif type(f) is wire.Body:
            r = self.requests.get(f.id)
            if r is None:
                return
            r["body"].append(f.data)
            self.send(wire.Credit(f.id, len(f.data)))
            if r.get("stream"):
                self.send(wire.Body(f.id, f.data, f.more))
                if not f.more:
                    self.done(f.id)
            elif not f.more and r.get("plain"):
                self.respond(f.id, b"".join(r["body"]), 200, b"text/plain")
            elif not f.more:
                body = b"".join(r["body"])
                self.respond(f.id, json.dumps({"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}).encode())
        elif type(f) is wire.Credit:
            r = self.requests.get(f.id)
            if r is not None:
                r["credit"] += f.n
                self.pump(f.id)
        elif type(f) is wire.Cancel:
            self.cancels += 1
            if self.requests.get(f.id, {}).get("stubborn"):
                return  # an app that ignores the cancel: its slot stays taken until it returns
            r = self.requests.pop(f.id, None)
            if r is not None:
                if r.get("timer"):
                    r["timer"].cancel()
                self.send(wire.Done(f.id, "cancelled"))

    def respond(self, rid: int, body: bytes, status: int = 200, ctype: bytes = b"application/json") -> None:
        self.send(wire.Resp(rid, status, [(b"content-type", ctype)], body, False))
        self.done(rid)

    def done(self, rid: int, error: str | None = None) -> None:
        self.requests.pop(rid, None)
        self.send(wire.Done(rid, error))

    def on_request(self, f: wire.Req) -> None:
        if f.path == "/hello" or f.path.endswith("/hello"):
            self.send(wire.Resp(f.id, 200, [(b"content-type", b"text/plain")], b"hello", False))
            self.send(wire.Done(f.id, None))
            return
        path = f.path[len(f.root_path):] or "/"  # the app's own route under its mount
        q = urllib.parse.parse_qs(f.query.decode())
        r: dict[str, Any] = {"body": [f.body] if f.body else [], "credit": wire.WINDOW}
        self.requests[f.id] = r
        if f.path.endswith("/headers"):
            self.respond(f.id, json.dumps({
                "method": f.method, "path": f.path, "raw_path": f.raw_path.decode(), "query": f.query.decode(),
                "headers": [[k.decode(), v.decode()] for k, v in f.headers], "http_version": f.http_version,
                "scheme": f.scheme, "client": f.client, "server": f.server, "root_path": f.root_path, "more": f.more,
            }).encode())
        elif path == "/echo":
            if "stream" in q:
                r["stream"] = True
                self.send(wire.Resp(f.id, 200, [(b"content-type", b"application/octet-stream")], b"", True))
            if not f.more:
                self.on_frame(wire.Body(f.id, b"", False))
        elif path == "/stream":
            r["left"] = int(q.get("n", ["4"])[0])
            self.send(wire.Resp(f.id, 200, [(b"content-type", b"application/octet-stream")], b"", True))
            self.pump(f.id)
        elif path == "/sleep":
            r["stubborn"] = "stubborn" in q
            r["timer"] = self.loop.call_later(float(q.get("s", ["1"])[0]), self.respond, f.id, b"slept")
        elif path == "/noresp":
            self.done(f.id)
        elif path == "/die":
            self.flush()
            os._exit(0)
        elif path == "/cancels":
            self.respond(f.id, json.dumps({"cancels": self.cancels}).encode())
        else:  # anything else: the request body back, once whole (the HTTP corpus' app)
            r["plain"] = True
            if not f.more:
                self.on_frame(wire.Body(f.id, b"", False))

    def pump(self, rid: int) -> None:
        r = self.requests.get(rid)
        if r is None or "left" not in r:
            return
        while r["left"] > 0 and r["credit"] > 0:
            r["left"] -= 1
            r["credit"] -= wire.CHUNK
            self.send(wire.Body(rid, b"x" * wire.CHUNK, True))
        if r["left"] == 0:
            self.send(wire.Body(rid, b"", False))
            self.done(rid)


def worker_main(fd: int) -> None:
    try:
        import uvloop  # type: ignore[import-not-found]
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    loop = asyncio.new_event_loop()
    sock = socket.socket(fileno=fd)

    async def start() -> None:
        await loop.create_unix_connection(Worker, sock=sock)

    loop.run_until_complete(start())
    loop.run_forever()


if __name__ == "__main__" and sys.argv[1:2] == ["worker"]:
    worker_main(int(sys.argv[2]))
