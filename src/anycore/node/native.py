"""L2 — the node's side of the native data plane: ``anycore up --gateway native``.

With the native gateway the node serves no HTTP itself: ``anycore-gateway`` (the Rust
program in ``native/``) owns the listening socket and every client connection, places
each request on a worker slot (its port of ``router/core.py``) and talks to the workers
over their *data sockets*. The node stays the control plane, and this module is the one
place that speaks ``anycore.dataplane`` to the gateway:

- ``start`` spawns ``anycore-gateway --control-fd 3`` in its own session (a terminal's
  Ctrl-C reaches the node, which shuts the gateway down in order), sends ``Settings``,
  then the bound listening socket in ``Listen`` (SCM_RIGHTS), and waits for ``Started``.
- The services and workers are mirrored as they change, in the order they change in the
  node's loop: ``Service`` (routes, live release, limits, running) on every deploy, stop
  and start; ``AddWorker`` with the node's end of the worker's data socket once the worker
  said ``Ready``; ``Shift`` as the deploy's one atomic step; ``Accepting(false)`` when a
  worker drains; ``RemoveWorker`` when it is gone.
- A draining worker gets its ``Stop`` (on its control socket, from the node) only once the
  gateway reported it ``WorkerIdle``: a request already written to the data socket must
  find a worker still serving. The worker's ``stop_gate`` is that wait; the supervisor's
  drain timeout still bounds it.
- ``Stats`` feed the Python router's per-worker counts (in flight, served), which the
  scaler, recycling (``max_requests``) and ``ps`` already read, plus the queue length, and
  the node's ``RequestStats`` (``/metrics``): statuses, histograms and rejections per release.
- ``RequestCrashed``: the gateway applied the crash rule to a dead worker's request; the
  node writes the log line the Python gateway writes (retried, quarantined, failed).
- ``WorkerLost`` (the data socket broke under the gateway): the worker is of no use any
  more; it is killed, and its control socket's EOF removes it the usual way.
- ``Upgrade`` (a WebSocket handshake, with the client's socket): ``Handoffs`` adopts the
  connection into the node's own Python HTTP code (a ``gateway.server.Gateway`` with no
  listener), so WebSockets and Sessions run exactly as under the Python gateway.

If the gateway process dies, the node restarts it in place (``_restart_soon``): the
workers keep running, the listening socket stays bound (the node keeps it), and the new
gateway gets Settings, Listen, every service and every live worker again — the node keeps
a dup of each worker's data socket for that. Requests in flight on the dead gateway are
lost (their clients' connections died with it): each worker cancels them and brings its
data socket to a frame boundary (``GatewayReset``/``GatewayResetDone``, ``_reset_workers``)
before the new gateway starts, and a late answer carries an id the new gateway ignores
(it numbers its requests past the old ones: ``Settings.first_id``). Restarts follow a worker's restart policy (``supervisor/policy.py``: at once,
then backoff); past ``GATEWAY_RESTARTS.intensity`` deaths within its period ``on_gone``
is called once, and the node exits 3 as in stage 1.

Sends never block the loop: a message the socket cannot take now waits in order (with its
file descriptors held open) until the socket is writable.
"""

from __future__ import annotations

import asyncio
import collections
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sized

import msgspec

from anycore import dataplane, wire
from anycore.config import parse_route
from anycore.errors import AnycoreError, ConfigError
from anycore.gateway.http import Limits
from anycore.gateway.server import Gateway
from anycore.lifecycle import ServiceState, WorkerState
from anycore.log import LogFormat, NodeLog, combined_line
from anycore.router.core import WorkerSlots
from anycore.stats import RequestStats
from anycore.supervisor.policy import RestartPolicy
from anycore.node.native_counts import GatewayCounts
from anycore.node.native_handoff import Handoffs
from anycore.node.spill import NativeSpill

if TYPE_CHECKING:
    from anycore.cluster.agent import ClusterAgent
    from anycore.node.service import ServiceRuntime
    from anycore.supervisor.worker import WorkerHandle

BINARY = "anycore-gateway"
MAX_FDS = 4  # file descriptors taken from one control message (a message names at most one)
START_TIMEOUT = 10.0  # seconds from exec to Started
CONTROL_FD = 3
# Restarts of a dead gateway: as a worker's (at once, then 0.1 s doubling up to 2 s); more
# than 5 deaths within 60 s and the node gives up (exit 3): something is wrong with it.
GATEWAY_RESTARTS = dict(base=0.1, cap=2.0, stable=30.0, intensity=5, period=60.0)
ID_SPAN = 1 << 40  # request ids per gateway generation (Settings.first_id)
RESET_TIMEOUT = 2.0  # seconds a restart waits for the workers' GatewayResetDone
INSTALL = ("install a Rust toolchain and the crates it builds from (Debian: `apt-get install cargo librust-hyper-dev "
           "librust-tokio-dev librust-rmp-serde-dev librust-serde-dev librust-socket2-dev librust-nix-dev`), "
           "then `pip install -e .` again; or set ANYCORE_GATEWAY_BIN")


def find_binary() -> str | None:
    """``$ANYCORE_GATEWAY_BIN``, else ``anycore/bin/anycore-gateway`` in the package, else PATH."""
    explicit = os.environ.get("ANYCORE_GATEWAY_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    packaged = Path(__file__).resolve().parent.parent / "bin" / BINARY
    if os.access(packaged, os.X_OK):
        return str(packaged)
    return shutil.which(BINARY)


def _socket(fd: int) -> socket.socket | None:
    """A received fd as a socket; closed (None) if it is not one."""
    try:
        return socket.socket(fileno=fd)
    except OSError:
        os.close(fd)
        return None


class NativeGateway:
    """The node's handle on ``anycore-gateway``: the face of ``gateway.server.Gateway`` the
    node and the deployer use (start, stop, routes, url), plus the hooks a
    ``ServiceRuntime`` calls as its workers come and go (``ServiceRuntime.dataplane``)."""

    def __init__(self, log: NodeLog, limits: Limits, binary: str, threads: int = 0,
                 on_gone: Callable[[str], None] | None = None, stats: RequestStats | None = None,
                 handoffs: "Handoffs | None" = None) -> None:
        self.log = log
        self.limits = limits
        self.binary = binary
        self.threads = threads
        self.on_gone = on_gone
        self.stats = stats if stats is not None else RequestStats()  # the node's: service "" answers go here
        self.node_id = ""
        self.host, self.port = "", 0
        self.starting = True  # the Python gateway's flag; the native one routes what it is told
        self.connections: Sized = range(0)  # held by the gateway: only their number, from Stats
        self.version, self.gateway_threads = "", 0
        self.process: subprocess.Popen[bytes] | None = None
        self.control: socket.socket | None = None
        self.services: dict[str, "ServiceRuntime"] = {}
        self.routes: dict[str, list[tuple[str | None, str]]] = {}
        self.workers: dict[int, "WorkerHandle"] = {}  # told to the gateway (AddWorker), not yet removed
        self.idle: set[int] = set()  # not accepting, nothing in flight (WorkerIdle)
        self.refusing: set[int] = set()  # told Accepting(false)
        self.counts = GatewayCounts()  # Stats -> gateway_errors and the node's RequestStats
        self._outbox: collections.deque[tuple[bytes, list[socket.socket]]] = collections.deque()
        self.spill: NativeSpill | None = None  # cluster spill-over (node/spill.py), once the agent runs
        self._shifts: collections.deque[Callable[[], None]] = collections.deque()  # awaiting Shifted, in order
        self._started: asyncio.Future[dataplane.Started] | None = None
        self._closing = False
        self._gone = False
        self.handoffs = handoffs if handoffs is not None else Handoffs(Gateway(log, limits))
        # Restarting in place: what the node keeps to hand a new gateway.
        self._listener: socket.socket | None = None
        self._data: dict[int, socket.socket] = {}  # worker id -> a dup of the node's end of its data socket
        self._worker_service: dict[int, str] = {}
        self._served_base: dict[int, int] = {}  # worker id -> requests served under earlier gateways
        self.generation = 0  # gateways started
        self.restarts = RestartPolicy(**GATEWAY_RESTARTS)  # type: ignore[arg-type]
        self._spawned_at = 0.0
        self._restarting: asyncio.Task[None] | None = None

    # -- the process and its control socket ------------------------------------------------
    async def start(self, host: str, port: int) -> None:
        """Bind the listening socket, spawn the gateway, hand it the socket; raises
        AnycoreError if it does not come up (OSError if the port cannot be bound)."""
        listener = socket.create_server((host, port), backlog=2048, reuse_port=False,
                                        family=socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.host, self.port = listener.getsockname()[:2]
        self.handoffs.start()
        self._listener = listener  # kept: a restarted gateway gets it again
        try:
            started = await self._spawn()
        except AnycoreError:
            await self.stop(1.0)
            raise
        self.log.event("gateway.started", kind="native", version=started.version, threads=started.threads,
                       pid=self.process.pid if self.process else None, listen=f"{self.host}:{self.port}")

    async def _spawn(self) -> dataplane.Started:
        """Run a gateway and tell it everything the node knows now (Settings, Listen, then
        every service and worker: nothing on a first start); returns its Started."""
        assert self._listener is not None
        node_end, gateway_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        fd = gateway_end.fileno()

        def onto_fd3() -> None:  # in the child, before exec: the control socket on fd 3, and only it
            if fd == CONTROL_FD:
                os.set_inheritable(fd, True)
            else:
                os.dup2(fd, CONTROL_FD)

        try:
            # close_fds=False: every fd of the node is non-inheritable, so exec closes them
            # all but the one dup'ed onto fd 3 (pass_fds would keep the original number).
            self.process = subprocess.Popen([self.binary, "--control-fd", str(CONTROL_FD)], close_fds=False,
                                            preexec_fn=onto_fd3, start_new_session=True, stdin=subprocess.DEVNULL)
        except OSError as exc:
            node_end.close()
            raise AnycoreError(f"cannot run the native gateway {self.binary}: {exc.strerror or exc} — {INSTALL}") from None
        finally:
            gateway_end.close()
        self._spawned_at = asyncio.get_running_loop().time()
        self.attach(node_end)
        self.send(dataplane.Settings(self.node_id, self.limits.max_connections, self.limits.max_header_bytes,
                                     self.limits.header_timeout, self.limits.keepalive_timeout, self.threads,
                                     self.generation * ID_SPAN, self.handoffs.gateway.access_log is not None))
        self.generation += 1
        self._send_edge()
        self.send(dataplane.Listen(f"{self.host}:{self.port}"), [self._listener.dup()])
        self._replay()
        try:
            started = await asyncio.wait_for(asyncio.shield(self._started), START_TIMEOUT)  # type: ignore[arg-type]
        except (asyncio.TimeoutError, AnycoreError):
            code = self.process.poll()
            what = f"exited with status {code}" if code is not None else f"did not start within {START_TIMEOUT:.0f}s"
            raise AnycoreError(f"the native gateway {self.binary} {what} (see its output above) — "
                               "or run with --gateway python") from None
        self.version, self.gateway_threads = started.version, started.threads
        return started

    def attach(self, control: socket.socket) -> None:
        """Use ``control`` as the control socket (``start`` does; tests pass a socketpair end)."""
        control.setblocking(False)
        self.control = control
        self._started = asyncio.get_running_loop().create_future()
        self._started.add_done_callback(lambda f: f.cancelled() or f.exception())
        asyncio.get_running_loop().add_reader(control.fileno(), self._readable)

    def send(self, message: dataplane.ToGateway, fds: list[socket.socket] | None = None) -> None:
        """Queue one message (its fds are closed here once sent) and send what the socket takes."""
        if self.control is None or self._gone:
            for sock in fds or []:
                sock.close()
            return
        self._outbox.append((dataplane.encode(message), fds or []))
        if len(self._outbox) == 1:
            self._flush()

    def _flush(self) -> None:
        control = self.control
        assert control is not None
        while self._outbox:
            data, fds = self._outbox[0]
            try:
                if fds:
                    socket.send_fds(control, [data], [s.fileno() for s in fds])
                else:
                    control.send(data)
            except BlockingIOError:
                asyncio.get_running_loop().add_writer(control.fileno(), self._writable)
                return
            except OSError:
                self._lost()
                return
            self._outbox.popleft()
            for sock in fds:
                sock.close()  # the gateway has its own copy now

    def _writable(self) -> None:
        if self.control is not None:
            asyncio.get_running_loop().remove_writer(self.control.fileno())
            self._flush()

    def _readable(self) -> None:
        assert self.control is not None
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.control, 65536, MAX_FDS)
            except BlockingIOError:
                return
            except OSError:
                data, fds = b"", []
            passed = [sock for fd in fds if (sock := _socket(fd)) is not None]
            if not data:
                for sock in passed:
                    sock.close()
                self._lost()
                return
            try:
                message = dataplane.from_gateway.decode(data)
            except msgspec.DecodeError:
                message = None  # a newer gateway's message (or a bad one): ignored, as the protocol says
            if type(message) is dataplane.Upgrade and passed:
                self.handoffs.adopt(message, passed.pop(0), self.starting)  # type: ignore[arg-type]
            for sock in passed:
                sock.close()  # fds of a message that takes none (or more than it takes)
            if message is not None:
                self._on_message(message)

    def _on_message(self, message: dataplane.FromGateway) -> None:
        kind = type(message)
        if kind is dataplane.Stats:
            self._stats(message)  # type: ignore[arg-type]
            for worker_id in self.idle:  # a Stats built before the WorkerIdle may arrive after it
                self._idle_counts(worker_id)
            self._drain_node_queue(message.service)  # type: ignore[union-attr]
        elif kind is dataplane.WorkerIdle:
            self.idle.add(message.worker)  # type: ignore[union-attr]
            self._idle_counts(message.worker)  # type: ignore[union-attr]
            worker = self.workers.get(message.worker)  # type: ignore[union-attr]
            if worker is not None and worker.stop_gate is not None and not worker.stop_gate.done():
                worker.stop_gate.set_result(None)
        elif kind is dataplane.WorkerLost:
            worker = self.workers.get(message.worker)  # type: ignore[union-attr]
            self.log.event("gateway.worker_lost", worker=message.worker, inflight=message.inflight)  # type: ignore[union-attr]
            # No data socket, no use: kill it, and its control EOF removes it. Not a draining
            # worker: its data socket closes as it exits by itself after Stop (killing it there
            # turned a clean scale-down into "killed by SIGKILL"); its drain's timeout bounds that.
            if worker is not None and worker.state is not WorkerState.DRAINING:
                worker.signal(signal.SIGKILL)
        elif kind is dataplane.RequestCrashed:
            self._crashed(message)  # type: ignore[arg-type]
        elif kind is dataplane.AccessLog:
            self._access(message)  # type: ignore[arg-type]
        elif kind is dataplane.Shifted:
            if self._shifts:
                self._shifts.popleft()()
        elif kind is dataplane.Offer or kind is dataplane.Reserved:
            self._spill_message(message)
        elif kind is dataplane.Started and self._started is not None and not self._started.done():
            self._started.set_result(message)  # type: ignore[arg-type]

    def _lost(self) -> None:
        if self._gone:
            return
        self._gone = True
        if self.control is not None:
            loop = asyncio.get_running_loop()
            loop.remove_reader(self.control.fileno())
            loop.remove_writer(self.control.fileno())
        for _, fds in self._outbox:
            for sock in fds:
                sock.close()
        self._outbox.clear()
        if self._started is not None and not self._started.done():
            self._started.set_exception(AnycoreError("the native gateway exited"))
        while self._shifts:  # nothing will confirm them now
            self._shifts.popleft()()
        for worker in self.workers.values():  # nothing will report them idle now
            if worker.stop_gate is not None and not worker.stop_gate.done():
                worker.stop_gate.set_result(None)
        if self._closing:
            return
        code = self.process.poll() if self.process is not None else None
        detail = f"exit status {code}" if code is not None else "its control socket closed"
        self.log.event("gateway.died", kind="native", detail=detail)
        self._restart_soon(detail)

    # -- the edge: TLS and proxy headers (gateway/tls.py, gateway/proxy.py) ----------------
    def _send_edge(self) -> None:
        """Before the first Listen: proxy trust, then the TLS files (read by the CLI before)."""
        if self.limits.proxy is not None:
            self.send(dataplane.ProxyHeaders(list(self.limits.proxy.trusted)))
        if self.limits.tls is not None:
            cert, key = self.limits.tls.read()
            self.send(dataplane.Tls(cert, key))

    def reload_tls(self) -> str:
        """SIGHUP: send the TLS files again; new connections get them, open ones keep theirs.
        Files the gateway's TLS library refuses leave the previous certificate serving."""
        if self.limits.tls is None:
            return "no --tls-cert: nothing to reload"
        try:
            cert, key = self.limits.tls.read()
        except AnycoreError as exc:
            self.log.event("tls.reload_failed", error=str(exc))
            return str(exc)
        self.send(dataplane.Tls(cert, key))
        self.log.event("tls.reloaded", cert=self.limits.tls.cert)
        return "TLS certificate reloaded"

    async def stop(self, timeout: float) -> None:
        """Shutdown: the gateway stops accepting and finishes current responses within
        ``timeout``; killed if it takes longer."""
        self._closing = True
        if self._restarting is not None:
            self._restarting.cancel()
        self.send(dataplane.Shutdown(timeout))
        process = self.process
        if process is not None:
            deadline = asyncio.get_running_loop().time() + timeout + 1.0
            while process.poll() is None and asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.02)
            if process.poll() is None:
                process.kill()
                process.wait()
        if self.control is not None:
            self._lost()
            self.control.close()
        if self.spill is not None:
            self.spill.close()
        await self.handoffs.stop(timeout)
        for sock in [*self._data.values(), *([self._listener] if self._listener is not None else [])]:
            sock.close()
        self._data.clear()
        self._listener = None

    # -- restarting a dead gateway in place ------------------------------------------------
    def _restart_soon(self, detail: str) -> None:
        """The gateway died: start another after the policy's delay, or give up (``on_gone``:
        the node exits 3) when it died too often."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        decision = self.restarts.on_crash(now, now - self._spawned_at)
        if self._listener is None:  # not started by us (a test's attached socket): nothing to restart
            if self.on_gone is not None:
                self.on_gone(detail)
            return
        if decision.crashlooping:
            self.log.event("gateway.gave_up", kind="native", deaths=len(self.restarts.exits),
                           period=self.restarts.period)
            if self.on_gone is not None:
                self.on_gone(f"{detail}; it died {len(self.restarts.exits)} times within "
                             f"{self.restarts.period:.0f}s, so it is not restarted again")
            return
        self.log.event("gateway.restarting", kind="native", delay=round(decision.delay, 3), workers=len(self.workers))
        self._restarting = loop.create_task(self._restart(decision.delay))

    async def _restart(self, delay: float) -> None:
        await asyncio.sleep(delay)
        process, control = self.process, self.control
        if process is not None and process.poll() is None:
            process.kill()  # its control socket broke but it runs: it must not serve on
        if process is not None:
            while process.poll() is None:
                await asyncio.sleep(0.01)
        if control is not None:
            control.close()
        self.control, self._gone = None, False
        self.idle.clear()
        self.counts.restarted()
        for worker_id, slots in self._routers_workers():
            self._served_base[worker_id] = slots.served
        await self._reset_workers(self.generation * ID_SPAN)
        try:
            started = await self._spawn()
        except AnycoreError as exc:
            self.log.event("gateway.restart_failed", kind="native", detail=str(exc))
            if self.process is not None and self.process.poll() is None:
                self.process.kill()  # its EOF counts as the next death (_lost)
            elif not self._gone:
                self._lost()
            return
        self.log.event("gateway.restarted", kind="native", pid=self.process.pid if self.process else None,
                       version=started.version, workers=len(self.workers), restarts=self.restarts.consecutive)

    async def _reset_workers(self, below: int) -> None:
        """Each worker drops the dead gateway's requests and brings its data socket to a
        frame boundary (``GatewayReset``; it answers ``GatewayResetDone``, or RESET_TIMEOUT
        passes); meanwhile the node reads and discards what the workers write to it."""
        loop = asyncio.get_running_loop()
        kept = list(self._data.values())
        for sock in kept:
            loop.add_reader(sock.fileno(), _discard_pending, sock)
        waits = []
        for worker in list(self.workers.values()):
            if worker.proto is not None and worker.id in self._data:
                gate = worker.gateway_reset = loop.create_future()
                waits.append(gate)
                worker.proto.send(wire.GatewayReset(below))
        try:
            if waits:
                await asyncio.wait(waits, timeout=RESET_TIMEOUT)
        finally:
            for sock in kept:
                if sock.fileno() >= 0:
                    loop.remove_reader(sock.fileno())
                    _discard_pending(sock)

    def _routers_workers(self) -> list[tuple[int, WorkerSlots]]:
        return [(wid, slots) for runtime in self.services.values() for wid, slots in runtime.router.workers.items()]

    def _replay(self) -> None:
        """A new gateway learns what the old one knew: the services (routes, live release,
        limits), then every worker with a dup of its data socket, and which stop accepting."""
        for runtime in list(self.services.values()):
            self.service_changed(runtime)
        for worker_id, worker in list(self.workers.items()):
            kept, service = self._data.get(worker_id), self._worker_service.get(worker_id)
            if kept is None or service is None:
                continue
            self.send(dataplane.AddWorker(service, worker.release, worker_id, worker.slots), [kept.dup()])
            if worker_id in self.refusing:
                self.send(dataplane.Accepting(worker_id, False))

    # -- what the node and the deployer ask (as of gateway.server.Gateway) -----------------
    def set_node(self, node_id: str) -> None:
        self.node_id = node_id
        self.handoffs.gateway.set_node(node_id)

    @property
    def errors(self) -> dict[int, int]:
        """Answers >= 400 by status (``ps``'s ``gateway_errors``), from Stats."""
        return self.counts.errors

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https' if self.limits.tls else 'http'}://{host}:{self.port}"

    def check_routes(self, name: str, routes: list[str]) -> list[tuple[str | None, str]]:
        mine = [parse_route(r) for r in routes]
        for other, taken in self.routes.items():
            for key in mine:
                if other != name and key in taken:
                    raise ConfigError(f"route {key[0] or ''}{key[1]} of service {name!r} is already taken by {other!r} — "
                                      "set distinct `routes` in anycore.toml")
        return mine

    def add_service(self, runtime: "ServiceRuntime") -> None:
        """Create or update the service in the gateway (routes, live release, limits)."""
        self.routes[runtime.name] = self.check_routes(runtime.name, runtime.routes)
        self.services[runtime.name] = runtime
        self.handoffs.gateway.add_service(runtime)
        self.service_changed(runtime)

    def remove_service(self, name: str) -> None:
        self.routes.pop(name, None)
        self.handoffs.gateway.remove_service(name)
        if self.services.pop(name, None) is not None:
            self.send(dataplane.RemoveService(name))
            if self.spill is not None:
                self.spill.service_removed(name)

    # -- hooks of a ServiceRuntime (its ``dataplane``) ----------------------------------------
    def service_changed(self, runtime: "ServiceRuntime") -> None:
        if runtime.name not in self.services:
            return  # not routed yet: add_service sends it whole
        config = runtime.config
        running = runtime.life.state is ServiceState.RUNNING and runtime.release is not None
        self.send(dataplane.Service(runtime.name, list(config.routes), runtime.release_id if running else "", running,
                                    config.max_body, config.max_queue, config.max_queue_bytes, config.timeout,
                                    config.request_buffer, config.body_timeout))

    def add_worker(self, runtime: "ServiceRuntime", worker: "WorkerHandle") -> None:
        """The worker said Ready: the gateway gets its data socket (the node's copy closes)."""
        data, worker.data = worker.data, None
        if data is None:
            return  # lost meanwhile
        if runtime.name not in self.services:  # a first release warms up before its routes are added
            self.services[runtime.name] = runtime
            self.service_changed(runtime)
        self.workers[worker.id] = worker
        self._data[worker.id] = data.dup()  # for a restarted gateway
        self._worker_service[worker.id] = runtime.name
        self.send(dataplane.AddWorker(runtime.name, worker.release, worker.id, worker.slots), [data])

    def shifted(self, runtime: "ServiceRuntime", old: list["WorkerHandle"],
                applied: Callable[[], None] | None = None) -> None:
        """The deploy's shift, one message; then the old release's workers stop accepting.
        ``applied`` runs once the gateway says it applied the shift (``Shifted``)."""
        if applied is not None:
            if self.control is None or self._gone:
                applied()
            else:
                self._shifts.append(applied)
        self.send(dataplane.Shift(runtime.name, runtime.release_id))
        self.service_changed(runtime)
        for worker in old:
            self.stop_accepting(worker)

    def stop_accepting(self, worker: "WorkerHandle") -> None:
        if worker.id in self.workers and worker.id not in self.refusing:
            self.refusing.add(worker.id)
            self.send(dataplane.Accepting(worker.id, False))

    def draining(self, worker: "WorkerHandle") -> None:
        """The worker drains: no new request; its Stop waits until the gateway says it is idle."""
        if worker.id not in self.workers or self._gone:
            return  # the gateway never had it (still starting), or is gone: Stop may go now
        self.stop_accepting(worker)
        gate = worker.stop_gate = asyncio.get_running_loop().create_future()
        if worker.id in self.idle:
            gate.set_result(None)

    def remove_worker(self, worker: "WorkerHandle") -> None:
        self.idle.discard(worker.id)
        self.refusing.discard(worker.id)
        self._served_base.pop(worker.id, None)
        self._worker_service.pop(worker.id, None)
        if (kept := self._data.pop(worker.id, None)) is not None:
            asyncio.get_running_loop().remove_reader(kept.fileno())  # if a restart reads it now
            kept.close()
        if self.workers.pop(worker.id, None) is not None:
            self.send(dataplane.RemoveWorker(worker.id))
        if worker.stop_gate is not None and not worker.stop_gate.done():
            worker.stop_gate.set_result(None)

    # -- the access log ------------------------------------------------------------------------
    def _access(self, batch: dataplane.AccessLog) -> None:
        """The gateway's records of finished exchanges, as the Python gateway's access lines
        (``gateway.server.Gateway.access``: the same fields, formats and watchers)."""
        fmt = self.handoffs.gateway.access_log
        if fmt is None:
            return
        for r in batch.records:
            fields: dict[str, object] = dict(
                method=r.method, path=r.path.decode("latin-1"), status=r.status, ms=round(r.seconds * 1000, 2),
                queued_ms=round(r.queued * 1000, 2), release=r.release or None, client=r.client or None,
                bytes=r.size, node=r.node or None, request_id=r.request_id.decode("latin-1") or None,
            )
            line = ""
            if fmt is LogFormat.COMBINED:
                request_line = b"%s %s HTTP/%s" % (r.method.encode("latin-1"), r.target, r.http_version.encode())
                line = combined_line(r.client or None, r.received, request_line, r.status, r.size, r.referer, r.agent)
            self.log.access(fmt, r.service, fields, line)

    # -- a dead worker's requests ---------------------------------------------------------------
    def _crashed(self, crashed: dataplane.RequestCrashed) -> None:
        """The gateway applied ``router/crash.py``'s rule to a request of a dead worker: the
        node's log line, as ``node/crashes.py`` writes it under the Python gateway."""
        path = crashed.path or None
        request_id = crashed.request_id or None
        if crashed.outcome == "retry":
            self.log.event("request.retried", crashed.service, method=crashed.method, path=path,
                           dead_worker=crashed.worker, request_id=request_id)
        elif crashed.outcome == "quarantine":
            runtime = self.services.get(crashed.service)
            if runtime is not None:
                runtime.crashes.quarantined += 1
            self.log.event("request.quarantined", crashed.service, method=crashed.method, path=path,
                           crashed_workers=round(crashed.blame), request_id=request_id)
        elif crashed.outcome == "fail":
            self.log.event("request.failed", crashed.service, method=crashed.method or None, path=path, status=502,
                           dead_worker=crashed.worker, request_id=request_id)

    def _drain_node_queue(self, service: str) -> None:
        """What the node itself queued (a call between services, a job, a request back from
        a lost peer: they are placed by the node's router, on its mirror of the gateway's
        counts) takes the slots the gateway's Stats show free: nothing else frees a slot
        in that mirror under the native gateway."""
        runtime = self.services.get(service)
        if runtime is not None and runtime.router.queue:
            runtime.placement.drain_queue()

    def _idle_counts(self, worker_id: int) -> None:
        """An idle worker (draining, nothing in flight: WorkerIdle) has nothing in flight for
        good, whatever a Stats said (the gateway builds one under its lock and sends it
        after, so one older than the WorkerIdle can arrive after it): its exit line and the
        scaler read the mirror, not the gateway."""
        for runtime in self.services.values():
            slots = runtime.router.workers.get(worker_id)
            if slots is not None:
                slots.inflight = 0

    # -- cluster spill-over (node/spill.py) ----------------------------------------------------
    def start_spill(self, services: Mapping[str, "ServiceRuntime"], agent: "ClusterAgent") -> None:
        """The cluster agent runs: queued requests may go to peers, peers' to free slots here."""
        self.spill = NativeSpill(self.send, services)
        self.spill.attach(agent)
        for runtime in services.values():
            runtime.spill = self.spill

    def _spill_message(self, message: dataplane.FromGateway) -> None:
        spill = self.spill
        if spill is None:
            if type(message) is dataplane.Offer:  # no cluster (yet): the request stays queued
                self.send(dataplane.Claimed(message.service, message.id, 0))  # type: ignore[union-attr]
            return
        if type(message) is dataplane.Offer:
            spill.offered(message)  # type: ignore[arg-type]
        else:
            spill.reserved(message)  # type: ignore[arg-type]

    # -- Stats -------------------------------------------------------------------------------
    def _stats(self, stats: dataplane.Stats) -> None:
        if stats.service == "":  # the answers to requests no service is routed at (404, starting)
            self.counts.count_errors(stats)
            self.connections = range(stats.connections)
            self.counts.add_requests(self.stats, stats)
            return
        runtime = self.services.get(stats.service)
        if runtime is None:
            return
        router = runtime.router
        inflight = dict(stats.inflight)  # every worker of the service: absent ones have none
        for worker_id, slots in router.workers.items():
            slots.inflight = inflight.get(worker_id, 0)
        for worker_id, served in stats.served:
            served += self._served_base.get(worker_id, 0)  # what it served under earlier gateways
            if (slots := router.workers.get(worker_id)) is not None:
                router.served += max(0, served - slots.served)
                slots.served = served
        runtime.external_queued = stats.queued
        runtime.external_buffering = stats.buffering
        router.rejected = sum(count for _, count in stats.rejected)
        self.counts.count_errors(stats)
        self.connections = range(stats.connections)
        self.counts.add_requests(runtime.stats, stats)


def _discard_pending(sock: socket.socket) -> None:
    """Drop what a worker wrote to a dead gateway and it did not read: answers nobody
    waits for any more, maybe starting mid-frame. What the worker writes from now on starts
    at a frame boundary (it writes whole frames), unless it is mid-way through one now."""
    try:
        while sock.recv(1 << 16, socket.MSG_DONTWAIT):
            pass
    except OSError:
        pass
