"""L2 — the node, the composition root: one process per machine that holds the sockets and
never runs user code.

Start order: NATS (embedded or given) -> NATS connection -> gateway listener -> admin
listener (``/metrics``, the dashboard; ``--admin``) -> services (their zygotes and
workers) -> control subscriptions -> the command loop. Stop order is
the reverse, each step bounded: stop accepting and let connections finish their current
response, drain the services (workers finish in-flight requests, then lifespan shutdown),
stop the zygotes, close NATS, stop the embedded server.

Everything that changes the node goes through one queue of ``Command`` objects: SIGTERM
and SIGINT only enqueue ``down``; CLI requests over NATS enqueue the same objects and
await their reply. So no two commands ever interleave their effects.

The node builds the parts and joins them; each part sees only a narrow view of it: the
cluster agent, the rollout and follow get ``ports.NodeView`` (and the deployer as
``ports.Deployments``), the deployer a ``DeployHost``, the storage healer a
``StorageHost``. None of them imports this module. Every background task the node itself
starts (the scaler tick, publishing log lines and deploy events, an auto-rollback) belongs
to its ``TaskGroup``, closed at the end of the shutdown.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import secrets
import signal
import socket
import sys
from pathlib import Path
from typing import Any, Callable

import nats

from anycore.cluster.agent import ClusterAgent
from anycore.cluster.control import NatsAuth, connect, control_subject, deploy_subject, logs_subject
from anycore.cluster.embedded import EmbeddedNats
from anycore.cluster.rollout import Rollout
from anycore.commands import COMMANDS, Command
from anycore.config import _NAME as _SERVICE_NAME
from anycore.config import Service, ServiceConfig
from anycore.errors import AnycoreError, NodeRunning, ReleaseFailed, StorageError, UnknownService
from anycore.admin import metrics as admin_metrics
from anycore.admin.routes import Routes
from anycore.admin.server import DEFAULT as ADMIN_DEFAULT
from anycore.admin.server import AdminServer, is_loopback
from anycore.gateway.http import Limits
from anycore.gateway.server import Gateway
from anycore.log import NodeLog
from anycore.stats import RequestStats
from anycore.node.calls import Calls
from anycore.node.deployer import Deployer
from anycore.node.jobs import JobRunner
from anycore.node.lock import NodeLock
from anycore.node.native import INSTALL, NativeGateway, find_binary
from anycore.node.native_handoff import Handoffs
from anycore.node.storage import StorageHealer
from anycore.node.service import ServiceRuntime
from anycore.release.deploy import Phase
from anycore.release.env import Environments, IndexSettings, KvLocks
from anycore.release.store import CodeStore, describe
from anycore.supervisor.launch import secure_home
from anycore.scaler.core import share
from anycore.supervisor.zygote import Template
from anycore.tasks import TaskGroup

SHUTDOWN_GRACE = 10.0
SCALE_TICK = 0.25
TASKS_BOUND = 2.0  # seconds the shutdown waits for a task group's cancelled tasks


def make_node_id() -> str:
    host = re.sub(r"[^a-zA-Z0-9_-]", "-", socket.gethostname())[:40] or "node"
    return f"{host}-{secrets.token_hex(3)}"


class Node:
    def __init__(self, home: Path, listen: tuple[str, int], nats_url: str | None = None, token: str | None = None,
                 creds: str | None = None, access_log: bool | str | None = None, limits: Limits | None = None,
                 watch: str | None = None, index: IndexSettings | None = None, service_user: str = "",
                 log_format: str = "logfmt", admin: tuple[str, int] | None = ADMIN_DEFAULT,
                 admin_fallback: bool = False, gateway: str = "python", gateway_threads: int = 0) -> None:
        self.home = home
        # The admin listener's address (None: off). ``admin_fallback``: it is the default, not
        # asked for, so a taken port (another node on this machine) moves to a free one.
        self.admin_address = admin
        self.admin_fallback = admin_fallback
        self.admin: AdminServer | None = None
        self._admin_closers: list[Callable[[], None]] = []  # the dashboard's sampler and watcher, after the listener
        self.index = index or IndexSettings()  # where uv finds the packages of release environments
        self.service_user = service_user  # whom services run as when the node is root ("": the default)
        self.envs: Environments | None = None
        self.listen = listen
        self.node_id = make_node_id()
        self.log = NodeLog(format=log_format)  # "logfmt" or "json"; the access log's own: Gateway
        self.stats = RequestStats()  # what /metrics, the dashboard and `anycore top` read (anycore.stats)
        # The data plane: the in-process Python gateway, or anycore-gateway (node/native.py).
        # Under the native one, the Python gateway runs unbound: the WebSockets handed over.
        python = Gateway(self.log, limits or Limits(), access_log, self.stats)
        self.gateway: Gateway | NativeGateway = python
        self.gateway_binary = find_binary()
        if gateway == "native" or (gateway == "auto" and self.gateway_binary):
            # gateway_threads 0: the gateway's own rule (half the cores it may use, at least one)
            self.gateway = NativeGateway(self.log, limits or Limits(), self.gateway_binary or "", threads=gateway_threads,
                                         on_gone=self._gateway_gone, stats=self.stats, handoffs=Handoffs(python))
        self.exit_code = 0  # set when the node stops for a failure of its own (the native gateway died)
        self.lock = NodeLock(home)
        self.embedded = EmbeddedNats(home, on_event=self.log.event) if nats_url is None else None
        self.auth = NatsAuth(nats_url or "", token, creds)
        self.nc: nats.NATS | None = None
        self.services: dict[str, ServiceRuntime] = {}
        self.calls = Calls(self.node_id, self.services, lambda: asyncio.get_running_loop().time(), self.stats)  # anycore.call
        self.commands: asyncio.Queue[Command] = asyncio.Queue()
        self.deployer: Deployer | None = None
        self.cluster: ClusterAgent | None = None
        self.rollout: Rollout | None = None
        self.watch = watch
        self.nats_reconnects = 0
        self.storage = StorageHealer(self)
        self.jobs = JobRunner(self.node_id, self.log)  # durable jobs; job counts for metrics: self.jobs.counts
        self.tasks = TaskGroup("node", on_error=lambda name, exc: self.log.event(
            "node.task_failed", task=name, error=repr(exc)[:300]))
        self.gateway.set_node(self.node_id)

    # -- the views the parts see (ports.NodeView, DeployHost, StorageHost) --------------
    @property
    def gateway_url(self) -> str:
        return self.gateway.url

    def command(self, command: Command) -> None:
        """Enqueue ``command``; the command loop runs it after the ones before it."""
        self.commands.put_nowait(command)

    def _spawn(self, coro: Any, name: str) -> None:
        self.tasks.offer(coro, name)  # once the node has stopped: nothing more in the background

    def snapshot(self) -> dict[str, Any]:
        """This node now, as ``anycore ps --json`` shows it (ports.AdminView)."""
        return {"node": self.node_id, "gateway": self.gateway.url, "pid": os.getpid(), "data_plane": self._data_plane(),
                "connections": len(self.gateway.connections), "gateway_errors": self.gateway.errors,
                "services": [s.info() for s in self.services.values()],
                "cluster": self.cluster.info() if self.cluster is not None else None,
                "admin": self.admin.url if self.admin is not None else None,
                "deploys": self.deployer.counts.info() if self.deployer is not None else None,
                "jobs": {name: dataclasses.asdict(counts) for name, counts in self.jobs.counts.items()}}

    def _data_plane(self) -> str:
        gateway = self.gateway
        if isinstance(gateway, NativeGateway):
            return f"native ({gateway.binary}, {gateway.gateway_threads} threads)"
        return "python" + ("" if self.gateway_binary else " (the native gateway is not built)")

    def _gateway_gone(self, detail: str) -> None:
        """The native gateway died too often to be restarted (node/native.py): nothing serves
        without it, so the node stops (exit 3)."""
        print(f"anycore: the native gateway died ({detail}); the node stops — see its output above, "
              "then run `anycore up` again (or with --gateway python)", file=sys.stderr, flush=True)
        self.exit_code = 3
        self.command(Command("down", {"reason": "the native gateway died"}))

    # -- run ---------------------------------------------------------------------------
    async def run(self, services: list[Service]) -> int:
        """Run the node until ``down``; the exit code: 0 after a clean stop, 1 if an initial
        service failed to start, 2 for anything else that stopped ``up`` (this home already
        has a node, the port is taken, NATS refused, a disk error): one line says what to do,
        and everything started so far is stopped again."""
        try:
            self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.lock.acquire()  # before anything of the home is touched: a second node leaves it alone
        except NodeRunning as exc:
            print(f"anycore: {exc}", file=sys.stderr, flush=True)
            return 2
        except OSError as exc:
            print(f"anycore: {StorageError.from_os(f'opening {self.home}', exc)}", file=sys.stderr, flush=True)
            return 2
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(self._loop_error)
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.command, Command("down", {"signal": signum}))
        if self.gateway.limits.tls is not None:  # SIGHUP: reload the certificate (either gateway)
            loop.add_signal_handler(signal.SIGHUP, self.command, Command("reload_tls", {}))
        try:
            if isinstance(self.gateway, NativeGateway) and not self.gateway.binary:
                raise AnycoreError(f"--gateway native: no anycore-gateway binary found — {INSTALL}")
            Template.get()  # imports the worker runtime while NATS starts: the first zygote forks from it
            await self._start_control()
            try:
                await self.gateway.start(*self.listen)
            except OSError as exc:
                host, port = self.listen
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise AnycoreError(f"cannot listen on {host}:{port}: {reason} — pick another port "
                                   f"with --listen HOST:PORT (0 picks a free one), or stop what holds it") from None
            await self._start_admin()
            await self.cluster.start()  # type: ignore[union-attr]  # heartbeats name the gateway's URL
            if isinstance(self.gateway, NativeGateway):
                self.gateway.start_spill(self.services, self.cluster)  # type: ignore[arg-type]
            self._write_record()
            self.log.event("node.started", node=self.node_id, gateway=self.gateway.url, nats=self.auth.url, pid=os.getpid())
            print(f"anycore node {self.node_id} serving on {self.gateway.url} (gateway: {self._data_plane()})", flush=True)
            if services:
                for service in services:
                    await self._add_service(service)
            else:
                await self._restore()
            self.gateway.starting = False
        except ReleaseFailed as exc:
            print(f"anycore: {exc}", file=sys.stderr)
            if exc.traceback:
                print(exc.traceback.rstrip(), file=sys.stderr)
            print("anycore: fix the error and run `anycore up` again", file=sys.stderr, flush=True)
            await self._shutdown()
            return 1
        except (AnycoreError, OSError) as exc:
            message = exc if isinstance(exc, AnycoreError) else StorageError.from_os("starting the node", exc)
            print(f"anycore: {message}", file=sys.stderr, flush=True)
            await self._shutdown()
            return 2
        watcher = self.tasks.spawn(self._watch(self.watch), "dev watch") if self.watch else None
        scaler = self.tasks.spawn(self._scale_loop(), "scaler")
        code = await self._command_loop() or self.exit_code
        scaler.cancel()
        if watcher is not None:
            watcher.cancel()
        await self._shutdown()
        return code

    async def _start_admin(self) -> None:
        """The admin listener (``anycore.admin.server``): on loopback open to this machine;
        anywhere else every request needs the node's control token."""
        if self.admin_address is None:
            return
        host, port = self.admin_address
        token = None
        if not is_loopback(host):
            token = self.embedded.token if self.embedded is not None else self.auth.token
            if not token:
                raise AnycoreError(f"--admin {host}:{port} is not a loopback address, so it needs the node's token, "
                                   "and this node has none (it joined NATS with --creds) — pass --token too, or bind "
                                   "the admin listener to 127.0.0.1")
        server = AdminServer(self._admin_routes(), self.log, token)
        try:
            await server.start(host, port)
        except OSError as exc:
            if not self.admin_fallback:
                reason = os.strerror(exc.errno).lower() if exc.errno else str(exc)
                raise AnycoreError(f"cannot listen on {host}:{port} for the admin listener: {reason} — pick another "
                                   "port with --admin HOST:PORT (0 picks a free one), or --admin off") from None
            await server.start(host, 0)
            print(f"anycore: admin port {port} is taken (another node on this machine?); using {server.port} — "
                  "set --admin HOST:PORT to choose", flush=True)
        self.admin = server
        access = ("loopback: no token needed" if token is None else
                  "not loopback: every request needs `Authorization: Bearer <token>`, the token in "
                  f"{self.home / 'token'}" if self.embedded is not None else
                  "not loopback: every request needs `Authorization: Bearer <the node's --token>`")
        print(f"anycore admin listener on {server.url} (/metrics; {access})", flush=True)

    def _admin_routes(self) -> Routes:
        """``/metrics``, and the dashboard's pages when that module is installed."""
        routes = admin_metrics.routes(self)
        try:
            import anycore.admin.dashboard as dashboard  # type: ignore[import-not-found, unused-ignore]
        except ModuleNotFoundError as exc:
            if exc.name != "anycore.admin.dashboard":
                raise
            return routes
        return {**dashboard.routes(self, self._admin_closers), **routes}

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """An error no task awaited (e.g. inside nats-py while NATS goes away): one log line,
        not a traceback on the node's stderr."""
        exc = context.get("exception")
        if isinstance(exc, asyncio.CancelledError):
            return
        self.log.event("node.unhandled_error", message=str(context.get("message", ""))[:200],
                       error=repr(exc)[:300] if exc is not None else None)

    async def _start_control(self) -> None:
        if self.embedded is not None:
            await self.embedded.start()
            self.auth = NatsAuth(self.embedded.url, self.embedded.token)
        self.nc = await connect(self.auth, f"anycore-node-{self.node_id}", allow_reconnect=True,
                                max_reconnect_attempts=-1, reconnect_time_wait=0.5,
                                disconnected_cb=self._nats_disconnected, reconnected_cb=self._nats_reconnected)
        store = await CodeStore(self.nc.jetstream(), self.home / "releases").open()
        await self.jobs.start(self.nc)
        self.envs = Environments(self.home / "envs", self.index, KvLocks(self.nc.jetstream()))
        secure_home(self.home)
        self.deployer = Deployer(self, store, on_storage_error=self.storage.failed)
        self.deployer.listeners.append(self._on_deploy_event)
        for command in COMMANDS:
            await self.nc.subscribe(control_subject(self.node_id, command), cb=self._on_control)
        # `anycore call`: not a command on the queue (a call may take its whole deadline).
        await self.nc.subscribe(control_subject(self.node_id, "call"), cb=self._on_call)
        self.log.subscribers.append(self._publish_log)
        self.cluster = ClusterAgent(self, self.deployer, follow=self.embedded is None)
        self.calls.cluster = self.cluster
        self.rollout = Rollout(self, self.deployer, peers=self.cluster.live_peers)
        await self.rollout.start()

    async def _nats_disconnected(self) -> None:
        self.log.event("node.nats_disconnected", nats=self.auth.url)
        if self.cluster is not None:
            self.cluster.on_disconnected()

    async def _nats_reconnected(self) -> None:
        self.nats_reconnects += 1
        self.log.event("node.nats_reconnected", nats=self.auth.url)

    def _on_deploy_event(self, event: dict[str, Any]) -> None:
        self.log.event("deploy.phase", event["service"], deploy=event["id"], release=event["release"], phase=event["phase"],
                       detail=event["detail"] or None, error=event["error"] or None, elapsed_s=event["elapsed"])
        if self.nc is not None and self.nc.is_connected:
            self._spawn(self._publish(deploy_subject(event["id"]), json.dumps(event).encode()), "publish deploy event")

    def _publish_log(self, service: str, line: str) -> None:
        if self.nc is not None and self.nc.is_connected:
            data = line.encode()
            self._spawn(self._publish(logs_subject(self.node_id, service), data), "publish log")
            if service:
                self._spawn(self._publish(logs_subject(self.node_id, ""), data), "publish log")

    async def _publish(self, subject: str, data: bytes) -> None:
        """Best effort: NATS going away in between loses a log line or an event for its
        followers (the node's own log has it), and a failed publish logs nothing — a log
        line about it would be published in turn."""
        try:
            await self.nc.publish(subject, data)  # type: ignore[union-attr]
        except Exception:
            pass

    def _write_record(self) -> None:
        record = {"node_id": self.node_id, "nats_url": self.auth.url, "gateway": self.gateway.url, "pid": os.getpid(),
                  "admin": self.admin.url if self.admin is not None else None}
        path = self.home / "node.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)

    async def _add_service(self, service: Service) -> None:
        """`anycore up PATH`: publish the directory as a release and deploy it; ReleaseFailed if it fails."""
        assert self.deployer is not None
        if service.config.name in self.services:
            raise AnycoreError(f"two services are named {service.config.name!r} — set distinct `name` in anycore.toml")
        record = await self.deployer.publish_local(service, source=service.directory)
        deploy = self.deployer.start(record, source=service.directory)
        await deploy.task
        if deploy.phase is Phase.FAILED:
            raise ReleaseFailed(record.id, deploy.error.removeprefix(f"release {record.id} failed to start: "), deploy.traceback)
        self._announce(self.services[record.service])

    async def _restore(self) -> None:
        """`anycore up` with no PATH: bring back every service that was live and not stopped."""
        assert self.deployer is not None
        for kept in await self.deployer.store.all_services():
            record = await self.deployer.store.get_release(kept.live) if kept.live else None
            if record is None or kept.stopped:
                continue
            deploy = self.deployer.start(record, source="restore")
            await deploy.task
            if deploy.phase is Phase.FAILED:
                self.log.event("service.restore_failed", kept.name, release=kept.live, error=deploy.error)
            else:
                self._announce(self.services[kept.name])

    async def _scale_loop(self) -> None:
        """Every SCALE_TICK: share the node's cores among the services that want them, then
        let each live release's scaler act within its share (see anycore.scaler.core)."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(SCALE_TICK)
            now = loop.time()
            for service in self.services.values():
                service.sweep(now)
            live = [s for s in self.services.values() if s.release is not None]
            if not live:
                continue
            budget = max([os.cpu_count() or 1] + [s.release.scaler.limits.max_workers for s in live])  # type: ignore[union-attr]
            wants = {s.name: (s.release.scaler.limits.min_workers, s.release.wanted()) for s in live}  # type: ignore[union-attr]
            grants = share(budget, wants) if sum(w for _, w in wants.values()) > budget else {}
            for service in live:
                service.autoscale(loop.time(), grants.get(service.name))

    async def _watch(self, path: str) -> None:
        """`anycore dev`: deploy a new release of ``path`` after every saved change (debounced)."""
        import watchfiles

        from anycore.config import load_service
        from anycore.release.bundle import ALWAYS_IGNORED

        def relevant(change: watchfiles.Change, name: str) -> bool:
            parts = set(Path(name).parts)
            return not (parts & ALWAYS_IGNORED) and not name.endswith((".pyc", ".swp", "~"))

        assert self.deployer is not None
        watching = False
        # The first (empty) yield on timeout comes once the watches are set up: only from then
        # on is a save seen, so that is when `dev: watching` is said (an edit before it is not).
        async for changes in watchfiles.awatch(path, watch_filter=relevant, debounce=200, step=50,
                                               rust_timeout=200, yield_on_timeout=True):
            if not changes:
                if not watching:
                    watching = True
                    print(f"dev: watching {path}", flush=True)
                continue
            try:
                service = load_service(path)
                record = await self.deployer.publish_local(service, source=f"{service.directory} (dev)")
            except AnycoreError as exc:
                self.log.event("dev.deploy_skipped", error=str(exc))
                continue
            deploy = self.deployer.start(record, source=f"{service.directory} (dev)")
            await deploy.task
            print(f"dev: {deploy.phase.value} {record.id}" + (f": {deploy.error}" if deploy.error else ""), flush=True)

    def _announce(self, runtime: ServiceRuntime) -> None:
        prefix = runtime.config.routes[0]
        print(f"service {runtime.name} ({runtime.release_id}) at {self.gateway.url}{prefix if prefix.startswith('/') else '/'}",
              flush=True)

    def create_service(self, name: str, config: ServiceConfig) -> ServiceRuntime:
        runtime = ServiceRuntime(name, "", config, "", self.log, server=(self.gateway.host, self.gateway.port),
                                 stats=self.stats)
        runtime.on_crashloop = self._auto_rollback
        runtime.on_call = self.calls.port(runtime)
        if isinstance(self.gateway, NativeGateway):
            runtime.dataplane = self.gateway  # before its first release: its workers get data sockets
        if self.cluster is not None:
            runtime.on_queued = self.cluster.spill_soon
        if isinstance(self.gateway, NativeGateway):
            runtime.spill = self.gateway.spill
        self.jobs.watch(runtime)
        self.services[name] = runtime
        return runtime

    def forget_service(self, runtime: ServiceRuntime) -> None:
        if self.services.get(runtime.name) is runtime and runtime.release is None:
            del self.services[runtime.name]
            self.jobs.forget(runtime)
            self.gateway.remove_service(runtime.name)

    def _auto_rollback(self, runtime: ServiceRuntime, to: str) -> None:
        async def go() -> None:
            assert self.deployer is not None
            try:
                await self.deployer.rollback(runtime, to, source="auto-rollback (crashlooping after shift)")
            except AnycoreError as exc:
                self.log.event("release.rollback_failed", runtime.name, error=str(exc))

        self._spawn(go(), f"auto-rollback {runtime.name}")

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
        self.command(Command(command, args, reply))
        result = await reply
        await msg.respond(json.dumps(result, default=str).encode())

    async def _on_call(self, msg: Any) -> None:
        self._spawn(self._answer_call(msg), "anycore call")  # NATS runs one callback at a time per subscription

    async def _answer_call(self, msg: Any) -> None:
        try:
            args = json.loads(msg.data or b"{}")
        except ValueError:
            args = None
        try:
            result = await self.calls.from_cli(args) if isinstance(args, dict) else \
                {"ok": False, "error": "the request body must be a JSON object"}
        except Exception as exc:  # a bug must not leave the CLI waiting for its timeout: say so at once
            self.log.event("node.command_failed", command="call", error=repr(exc)[:300])
            result = {"ok": False, "error": f"internal error running call: {exc!r}"}
        await msg.respond(json.dumps(result).encode())

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
        if kind == "reload_tls":
            return {"ok": True, "message": self.gateway.reload_tls()}
        if kind == "ps":
            return {"ok": True, **self.snapshot()}
        if kind == "stop":
            service = self._service(args.get("service"))
            if service.release is None:
                return {"ok": True, "message": f"service {service.name} was already stopped"}
            await service.stop()
            if self.deployer is not None:
                await self.deployer.store.set_stopped(service.name, True)
            return {"ok": True, "message": f"service {service.name} stopped; it answers 503 until `anycore start {service.name}`"}
        if kind == "start":
            service = self._service(args.get("service"))
            if service.release is not None:
                return {"ok": True, "message": f"service {service.name} is already running ({service.release_id})"}
            await service.start()
            if self.deployer is not None:
                await self.deployer.store.set_stopped(service.name, False)
            return {"ok": True, "message": f"service {service.name} running ({service.release_id})"}
        if kind == "logs":
            name = args.get("service") or None
            if name is not None:
                self._service(name)
            lines = int(args.get("lines", 200))
            return {"ok": True, "lines": self.log.tail(name, lines)}
        if kind == "deploy":
            assert self.deployer is not None
            record = await self.deployer.store.get_release(str(args.get("release")))
            if record is None:
                return {"ok": False, "error": f"release {args.get('release')} is not in the code store — upload it first"}
            assert self.rollout is not None
            deploy = self.rollout.deploy(record, str(args.get("source", "")), args.get("deploy_id"), self.deployer.start)
            return {"ok": True, "deploy": deploy.snapshot()}
        if kind == "rollback":
            assert self.deployer is not None
            rollout, deployer = self.rollout, self.deployer
            assert rollout is not None
            deploy = await self.deployer.rollback(self._service(args.get("service")), args.get("to") or None,
                                                  source=f"rollback{' to ' + args['to'] if args.get('to') else ''}",
                                                  deploy_id=args.get("deploy_id"),
                                                  start=lambda r, s, d: rollout.deploy(r, s, d, deployer.start))
            return {"ok": True, "deploy": deploy.snapshot()}
        if kind == "recover":
            return {"ok": True, "message": await self.storage.recover()}
        if kind == "abort":
            assert self.deployer is not None
            return {"ok": True, **(await self.deployer.abort(str(args.get("deploy_id", ""))))}
        if kind == "scale":
            service = self._service(args.get("service"))
            low, high = service.set_limits(args.get("min"), args.get("max"))
            return {"ok": True, "message": f"service {service.name}: workers between {low} and {high} (no restart)"}
        if kind == "releases":
            return await self._releases(args.get("service"))
        if kind == "env":
            return self._env(self._service(args.get("service")))
        if kind == "jobs":
            name = args.get("service") or None
            if name is not None and not (isinstance(name, str) and _SERVICE_NAME.match(name)):
                raise AnycoreError(f"{name!r} is not a service name (lowercase letters, digits, '-', '_')")
            return await self.jobs.report(name)
        if kind == "down":
            self.log.event("node.stopping", node=self.node_id, reason=f"signal {args['signal']}" if "signal" in args else
                           args.get("reason", "anycore down"))
            return {"ok": True, "message": f"node {self.node_id} is shutting down"}
        return {"ok": False, "error": f"unknown command {kind!r}"}

    async def _releases(self, name: Any) -> dict[str, Any]:
        assert self.deployer is not None
        store = self.deployer.store
        if name and not (isinstance(name, str) and _SERVICE_NAME.match(name)):
            raise UnknownService(str(name), list(self.services))  # not even a valid name (nor a valid KV key)
        kept = await store.get_service(str(name)) if name else None
        if name and kept is None and name not in self.services:
            raise UnknownService(str(name), list(self.services))
        records = []
        for release in reversed(kept.history if kept else []):
            record = await store.get_release(release)
            if record is not None:
                entry = describe(record)
                entry["live"] = release == kept.live and not kept.stopped  # type: ignore[union-attr]
                entry["cached"] = store.cached(release) is not None
                env = self.envs.used_by(release) if self.envs is not None else None
                entry["env"] = env.summary() if env is not None else None
                records.append(entry)
        deploys = [d.snapshot() for d in self.deployer.deploys.values() if not name or d.service == name]
        runtime = self.services.get(str(name)) if name else None
        return {"ok": True, "service": name, "live": kept.live if kept else "", "releases": records, "deploys": deploys[-10:],
                "failed": runtime.failed if runtime else [], "rolled_back": runtime.rolled_back if runtime else ""}

    def _env(self, service: ServiceRuntime) -> dict[str, Any]:
        """`anycore env SERVICE`: the live release's environment and its packages."""
        launch = service.launch
        info = self.envs.used_by(service.release_id) if self.envs is not None and launch and launch.env_hash else None
        return {"ok": True, "service": service.name, "release": service.release_id, "env": info.hash if info else "",
                "python": launch.python if launch else sys.executable, "user": launch.user if launch else "",
                "packages": info.packages if info else [], "size_mib": info.summary()["size_mib"] if info else 0,
                "runtime": self.envs.runtime if self.envs is not None else []}

    # -- shutdown -------------------------------------------------------------------------------
    async def _shutdown(self) -> None:
        """Stop everything this node started, in reverse order, each step bounded; safe after
        a start that failed half-way (whatever was not started is skipped)."""
        if self.cluster is not None:
            self.cluster.leave()
        self.jobs.stop_pulling()  # jobs running finish with their service and are acknowledged below
        await self.gateway.stop(timeout=SHUTDOWN_GRACE)
        await asyncio.gather(*(s.stop(timeout=SHUTDOWN_GRACE) for s in self.services.values() if s.release is not None or s.draining))
        if self.admin is not None:
            await self.admin.stop(TASKS_BOUND)  # scrapes and dashboards saw the drain; now they go
        for close in self._admin_closers:
            close()
        await self.jobs.close(TASKS_BOUND)
        if self.rollout is not None:
            await self.rollout.close()
        if self.deployer is not None:
            await self.deployer.tasks.close(TASKS_BOUND)  # a deploy still running cleans up its new release
        await self.storage.close()
        if self.cluster is not None:
            await self.cluster.close()
        if self.lock.fd >= 0:  # only the lock's holder wrote node.json
            try:
                (self.home / "node.json").unlink()
            except OSError:
                pass
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), 2.0)
            except Exception:  # the node is going away; a slow NATS must not hold it
                pass
        await self.tasks.close(TASKS_BOUND)
        if self.embedded is not None:
            await self.embedded.stop()
        await Template.shutdown()
        self.log.event("node.stopped", node=self.node_id)
