"""A stand-in for ``anycore-gateway``, in Python: the node's side of the native data plane
tested end to end (control socket on fd 3, SCM_RIGHTS, data sockets through the zygote,
Shift, drain after WorkerIdle) on machines where the Rust binary is not built.

It speaks exactly ``anycore.dataplane`` and ``anycore.wire``, and serves the simplest
HTTP/1.1 there is: keep-alive, a Content-Length body read whole, the answer buffered whole,
placement on the least-loaded accepting worker of the live release with a free slot, 503
when none has one (no queue), no deadlines. A head asking for ``Upgrade: websocket`` (with
``Connection: upgrade``, the Python gateway's rule) is handed to the node as the real one
does: ``Upgrade`` with the client's socket, the bytes read from the head on, and reading
stops here. Enough for the node's side, nothing more: the real gateway's behaviour is
tested against the real binary (tests/e2e/test_native.py).

Run as ``python native_stand_in.py --control-fd 3`` (the node's ANYCORE_GATEWAY_BIN is a
small shell script exec'ing this).
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import socket
import sys
from dataclasses import dataclass, field

from anycore import dataplane, wire
from anycore.framing import FrameProtocol


@dataclass
class Worker:
    id: int
    service: str
    release: str
    slots: int
    proto: FrameProtocol | None = None
    inflight: int = 0
    served: int = 0
    accepting: bool = True
    waiting: dict[int, asyncio.Future[list[wire.Frame]]] = field(default_factory=dict)
    frames: dict[int, list[wire.Frame]] = field(default_factory=dict)


class StandIn:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.services: dict[str, dataplane.Service] = {}
        self.workers: dict[int, Worker] = {}
        self.ids = itertools.count(1)
        self.done = asyncio.get_running_loop().create_future()
        self.server: asyncio.AbstractServer | None = None
        self.changed = True
        self.outbox: collections.deque[tuple[bytes, int | None]] = collections.deque()

    def say(self, message: dataplane.FromGateway, fd: int | None = None) -> None:
        """Send in order; what the socket cannot take now waits (its fd held) until it can."""
        self.outbox.append((dataplane.encode(message), fd))
        if len(self.outbox) == 1:
            self.flush()

    def flush(self) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_writer(self.control.fileno())
        while self.outbox:
            data, fd = self.outbox[0]
            try:
                socket.send_fds(self.control, [data], [fd]) if fd is not None else self.control.send(data)
            except BlockingIOError:
                loop.add_writer(self.control.fileno(), self.flush)
                return
            self.outbox.popleft()
            if fd is not None:
                os.close(fd)

    def readable(self) -> None:
        try:
            data, fds, _, _ = socket.recv_fds(self.control, 65536, 4)
        except BlockingIOError:
            return
        if not data:
            self.done.set_result(None) if not self.done.done() else None
            return
        asyncio.ensure_future(self.handle(dataplane.to_gateway.decode(data), fds))

    async def handle(self, message: dataplane.ToGateway, fds: list[int]) -> None:
        kind = type(message)
        if kind is dataplane.Listen:
            self.server = await asyncio.start_server(self.client, sock=socket.socket(fileno=fds[0]))
            self.say(dataplane.Started("stand-in", 1))
        elif kind is dataplane.Service:
            self.services[message.name] = message  # type: ignore[union-attr]
        elif kind is dataplane.Shift:
            if message.service in self.services:  # type: ignore[union-attr]
                self.services[message.service].release = message.release  # type: ignore[union-attr]
            self.say(dataplane.Shifted(message.service, message.release))  # type: ignore[union-attr]
        elif kind is dataplane.AddWorker:
            worker = Worker(message.worker, message.service, message.release, message.slots)  # type: ignore[union-attr]
            self.workers[worker.id] = worker
            _, worker.proto = await asyncio.get_running_loop().connect_accepted_socket(
                lambda: FrameProtocol(lambda f: self.frame(worker, f), lambda exc: self.lost(worker)),
                sock=socket.socket(fileno=fds[0]))
        elif kind is dataplane.Accepting and (worker := self.workers.get(message.worker)) is not None:  # type: ignore[union-attr]
            worker.accepting = message.accepting  # type: ignore[union-attr]
            self.check_idle(worker)
        elif kind is dataplane.RemoveWorker and (worker := self.workers.pop(message.worker, None)) is not None:  # type: ignore[union-attr]
            if worker.proto is not None and worker.proto.transport is not None:
                worker.proto.transport.close()
        elif kind is dataplane.Shutdown:
            self.done.set_result(None) if not self.done.done() else None

    def check_idle(self, worker: Worker) -> None:
        if not worker.accepting and not worker.inflight:
            self.say(dataplane.WorkerIdle(worker.id))

    def frame(self, worker: Worker, frame: wire.Frame) -> None:
        rid = getattr(frame, "id", None)
        if rid not in worker.frames:
            return
        worker.frames[rid].append(frame)
        if type(frame) is wire.Done:
            worker.inflight -= 1
            worker.served += 1
            self.changed = True
            worker.waiting.pop(rid).set_result(worker.frames.pop(rid))
            self.check_idle(worker)

    def lost(self, worker: Worker) -> None:
        if self.workers.pop(worker.id, None) is not None:
            self.say(dataplane.WorkerLost(worker.id, worker.inflight))
        for waiter in worker.waiting.values():
            waiter.set_result([])

    def pick(self, path: str) -> tuple[Worker | None, str]:
        """The least-loaded free worker of the service with the longest matching prefix."""
        prefix, service = self.route(path)
        if service is None:
            return None, ""
        free = [w for w in self.workers.values() if w.service == service.name and w.release == service.release
                and w.accepting and w.inflight < w.slots and w.proto is not None and service.running]
        return min(free, key=lambda w: w.inflight, default=None), "" if prefix == "/" else prefix

    async def client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
                if self.upgrade(head, target, headers, reader, writer):
                    return
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                body = await reader.readexactly(length) if length else b""
                status, out_headers, out = await self.serve(method, target, headers, body)
                writer.write(b"HTTP/1.1 %d X\r\n" % status + b"".join(k + b": " + v + b"\r\n" for k, v in out_headers)
                             + b"content-length: %d\r\n\r\n" % len(out) + out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def upgrade(self, head: bytes, target: str, headers: list, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> bool:
        """A WebSocket handshake: hand the connection to the node (``dataplane.Upgrade``)."""
        values = {k.lower(): v.lower() for k, v in headers}
        if values.get("upgrade") != "websocket" or "upgrade" not in values.get("connection", ""):
            return False
        _, service = self.route(target.partition("?")[0])
        writer.transport.pause_reading()
        buffered = head + bytes(reader._buffer)  # read from the socket, not consumed: the node's now
        sock = writer.get_extra_info("socket")
        client, server = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
        self.say(dataplane.Upgrade(service.name if service else "", buffered, tuple(client[:2]), tuple(server[:2])),
                 os.dup(sock.fileno()))
        writer.transport.abort()  # our copy only: the node holds the connection
        return True

    def route(self, path: str) -> tuple[str, dataplane.Service | None]:
        """The longest matching prefix and its service."""
        routes = [(r, s) for s in self.services.values() for r in s.routes
                  if r == "/" or path == r or path.startswith(r + "/")]
        return max(routes, key=lambda route: len(route[0]), default=("", None))

    async def serve(self, method: str, target: str, headers: list, body: bytes) -> tuple[int, list, bytes]:
        path, _, query = target.partition("?")
        worker, root_path = self.pick(path)
        if worker is None:
            return 503, [(b"retry-after", b"1")], b"no free slot\n"
        rid = next(self.ids)
        worker.inflight += 1
        self.changed = True
        worker.frames[rid] = []
        waiter = worker.waiting[rid] = asyncio.get_running_loop().create_future()
        worker.proto.send(wire.Req(rid, method, path, path.encode(), query.encode(),  # type: ignore[union-attr]
                                   [(k.lower().encode(), v.encode()) for k, v in headers], "1.1", "http", None, None, root_path,
                                   body, False))
        frames = await waiter
        resp = next((f for f in frames if type(f) is wire.Resp), None)
        if resp is None:
            return 502, [], b"worker lost\n"
        data = resp.body + b"".join(f.data for f in frames if type(f) is wire.Body)
        headers_out = [(k, v) for k, v in resp.headers if k.lower() not in (b"content-length", b"transfer-encoding")]
        return resp.status, headers_out + [(b"anycore-release", worker.release.encode())], data

    async def stats(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            if self.changed:
                self.changed = False
                for name in self.services:
                    mine = [w for w in self.workers.values() if w.service == name]
                    self.say(dataplane.Stats(name, 0, [(w.id, w.inflight) for w in mine],
                                             [(w.id, w.served) for w in mine], [], []))


async def main(fd: int) -> None:
    control = socket.socket(fileno=fd)
    control.setblocking(False)
    stand_in = StandIn(control)
    asyncio.get_running_loop().add_reader(fd, stand_in.readable)
    stats = asyncio.ensure_future(stand_in.stats())
    await stand_in.done
    stats.cancel()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[sys.argv.index("--control-fd") + 1])))
