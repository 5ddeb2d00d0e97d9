"""The node: one process per machine that holds the sockets and never runs user code.

Start order: NATS (embedded or given) -> NATS connection -> gateway listener -> services
(their zygotes and workers) -> control subscriptions -> the command loop. Stop order is
the reverse, each step bounded: stop accepting and let connections finish their current
response, drain the services (workers finish in-flight requests, then lifespan shutdown),
stop the zygotes, close NATS, stop the embedded server.

Everything that changes the node goes through one queue of ``Command`` objects: SIGTERM
and SIGINT only enqueue ``down``; CLI requests over NATS enqueue the same objects and
await their reply. So no two commands ever interleave their effects.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import nats

from anycore.cluster.control import Command, NatsAuth, connect, control_subject, logs_subject, COMMANDS
from anycore.cluster.embedded import EmbeddedNats
from anycore.config import Service
from anycore.errors import AnycoreError, ReleaseFailed, UnknownService
from anycore.gateway.http import Limits
from anycore.gateway.server import Gateway
from anycore.log import NodeLog
from anycore.node.service import ServiceRuntime
from anycore.release.bundle import release_id

SHUTDOWN_GRACE = 10.0


def make_node_id() -> str:
    host = re.sub(r"[^a-zA-Z0-9_-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"


class Node:
    def __init__(self, home: Path, listen: tuple[str, int], nats_url: str | None = None, token: str | None = None,
                 creds: str | None = None, access_log: bool = False, limits: Limits | None = None) -> None:
        self.home = home
        self.listen = listen
        self.node_id = make_node_id()
        self.log = NodeLog()
        self.gateway = Gateway(self.log, limits or Limits(), access_log)
        self.embedded = EmbeddedNats(home) if nats_url is None else None
        self.auth = NatsAuth(nats_url or "", token, creds)
        self.nc: nats.NATS | None = None
        self.services: dict[str, ServiceRuntime] = {}
        self.commands: asyncio.Queue[Command] = asyncio.Queue()

    # -- run ---------------------------------------------------------------------------
    async def run(self, services: list[Service]) -> int:
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.commands.put_nowait, Command("down", {"signal": signum}))
        try:
            await self._start_control()
            await self.gateway.start(*self.listen)
            self._write_record()
            self.log.event("node.started", node=self.node_id, gateway=self.gateway.url, nats=self.auth.url, pid=os.getpid())
            print(f"anycore node {self.node_id} serving on {self.gateway.url}", flush=True)
            for service in services:
                await self._add_service(service)
        except ReleaseFailed as exc:
            print(f"anycore: {exc}", file=sys.stderr)
            if exc.traceback:
                print(exc.traceback.rstrip(), file=sys.stderr)
            print("anycore: fix the error and run `anycore up` again", file=sys.stderr, flush=True)
            await self._shutdown()
            return 1
        except AnycoreError as exc:
            print(f"anycore: {exc}", file=sys.stderr, flush=True)
            await self._shutdown()
            return 2
        code = await self._command_loop()
        await self._shutdown()
        return code

    async def _start_control(self) -> None:
        if self.embedded is not None:
            await self.embedded.start()
            self.auth = NatsAuth(self.embedded.url, self.embedded.token)
        self.nc = await connect(self.auth, f"anycore-node-{self.node_id}", allow_reconnect=True,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5)
        for command in COMMANDS:
            await self.nc.subscribe(control_subject(self.node_id, command), cb=self._on_control)
        self.log.subscribers.append(self._publish_log)

    def _publish_log(self, service: str, line: str) -> None:
        if self.nc is not None and self.nc.is_connected:
            data = line.encode()
            asyncio.ensure_future(self.nc.publish(logs_subject(self.node_id, service), data))
            if service:
                asyncio.ensure_future(self.nc.publish(logs_subject(self.node_id, ""), data))

    def _write_record(self) -> None:
        record = {"node_id": self.node_id, "nats_url": self.auth.url, "gateway": self.gateway.url, "pid": os.getpid()}
        path = self.home / "node.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    async def _add_service(self, service: Service) -> None:
        if service.config.name in self.services:
            raise AnycoreError(f"two services are named {service.config.name!r} — set distinct `name` in anycore.toml")
        runtime = ServiceRuntime(service.config.name, service.directory, service.config,
                                 release_id(service.directory, service.config), self.log,
                                 server=(self.gateway.host, self.gateway.port))
        self.gateway.add_service(runtime)
        self.services[runtime.name] = runtime
        self.log.event("service.starting", runtime.name, release=runtime.release_id, directory=service.directory)
        try:
            await runtime.start()
        except ReleaseFailed:
            self.gateway.remove_service(runtime.name)
            del self.services[runtime.name]
            raise
        prefix = service.config.routes[0]
        print(f"service {runtime.name} ({runtime.release_id}) at {self.gateway.url}{prefix if prefix.startswith('/') else '/'}",
              flush=True)

    # -- commands --------------------------------------------------------------------------
    async def _on_control(self, msg: Any) -> None:
        command = msg.subject.rsplit(".", 1)[1]
        try:
            args = json.loads(msg.data or b"{}")
        except ValueError:
            args = None
        if not isinstance(args, dict):
            await msg.respond(json.dumps({"ok": False, "error": "the request body must be a JSON object"}).encode())
            return
        reply: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.commands.put_nowait(Command(command, args, reply))
        result = await reply
        await msg.respond(json.dumps(result, default=str).encode())

    async def _command_loop(self) -> int:
        while True:
            command = await self.commands.get()
            try:
                result = await self._execute(command)
            except AnycoreError as exc:
                result = {"ok": False, "error": str(exc)}
            except Exception as exc:  # a bug must not take the node down; say so instead
                self.log.event("node.command_failed", command=command.kind, error=repr(exc))
                result = {"ok": False, "error": f"internal error running {command.kind}: {exc!r}"}
            if command.reply is not None and not command.reply.done():
                command.reply.set_result(result)
            if command.kind == "down":
                return 0

    def _service(self, name: Any) -> ServiceRuntime:
        if not isinstance(name, str) or name not in self.services:
            raise UnknownService(str(name), list(self.services))
        return self.services[name]

    async def _execute(self, command: Command) -> dict[str, Any]:
        kind, args = command.kind, command.args
        if kind == "ps":
            return {"ok": True, "node": self.node_id, "gateway": self.gateway.url, "pid": os.getpid(),
                    "connections": len(self.gateway.connections),
                    "services": [s.info() for s in self.services.values()]}
        if kind == "stop":
            service = self._service(args.get("service"))
            if service.release is None:
                return {"ok": True, "message": f"service {service.name} was already stopped"}
            await service.stop()
            return {"ok": True, "message": f"service {service.name} stopped; it answers 503 until `anycore start {service.name}`"}
        if kind == "start":
            service = self._service(args.get("service"))
            if service.release is not None:
                return {"ok": True, "message": f"service {service.name} is already running ({service.release_id})"}
            await service.start()
            return {"ok": True, "message": f"service {service.name} running ({service.release_id})"}
        if kind == "logs":
            name = args.get("service") or None
            if name is not None:
                self._service(name)
            lines = int(args.get("lines", 200))
            return {"ok": True, "lines": self.log.tail(name, lines)}
        if kind == "down":
            self.log.event("node.stopping", node=self.node_id, reason=f"signal {args['signal']}" if "signal" in args else "anycore down")
            return {"ok": True, "message": f"node {self.node_id} is shutting down"}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    # -- shutdown -------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        await self.gateway.stop(timeout=SHUTDOWN_GRACE)
        await asyncio.gather(*(s.stop(timeout=SHUTDOWN_GRACE) for s in self.services.values() if s.release is not None))
        try:
            (self.home / "node.json").unlink()
        except OSError:
            pass
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), 2.0)
            except Exception:  # the node is going away; a slow NATS must not hold it
                pass
        if self.embedded is not None:
            await self.embedded.stop()
        self.log.event("node.stopped", node=self.node_id)
