"""L0 — the ports: what one layer may ask of another, as typing Protocols.

Layers (enforced by tests/unit/test_layers.py; see ARCHITECTURE.md):

    L0  pure: errors, wire, config, lifecycle, log, ports and the decision cores
        (router, scaler, restart policy, crash outcome, rollout decision, ...). No asyncio,
        no sockets.
    L1  adapters: gateway, supervisor, release, cluster, worker (+ the shared bases
        ``framing`` and ``tasks``). They never import ``node/``; the gateway and the
        supervisor never import each other.
    L2  node/: the executors that join the adapters, and the composition root.
    L3  cli/.

An adapter talks to the layer above only through a port it is handed. Each port is
narrow on purpose: it is the seam where another implementation can sit — a peer node's
slot instead of a local worker (``Channel``), or an HTTP data plane in another process
instead of the in-process gateway (``RequestSink``'s caller).

The exchange and the WebSocket session are passed through these ports as opaque objects
typed ``Any`` here: L0 cannot name the gateway's classes, and the ports do not need to.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from anycore import wire
from anycore.commands import Command
from anycore.lifecycle import Lifecycle, ServiceState
from anycore.log import NodeLog
from anycore.release.deploy import Deploy
from anycore.router.core import Router
from anycore.stats import RequestStats


class FrameTarget(Protocol):
    """An exchange or a WebSocket session, as the channel that feeds it sees it."""

    id: int

    def on_frame(self, frame: wire.Frame) -> None: ...


class Channel(Protocol):
    """Where a request or a WebSocket runs: a local worker (``supervisor.worker.WorkerHandle``)
    or a slot on a peer node (``cluster.dispatch.RemoteSlot``). What an exchange or a session
    may do with it: send it frames. The frames for an id come back through ``on_frame``."""

    id: int
    release: str

    def send(self, frame: wire.Frame) -> None: ...

    def start_request(self, exchange: Any, frame: wire.Req) -> None: ...


class SocketChannel(Channel, Protocol):
    """A channel that also hosts WebSockets (a local worker): ``sockets`` maps a session's id
    to the session, so the worker's frames for it find it. What a ``WebSocketSession`` is
    placed on and moved between."""

    sockets: dict[int, Any]


class RequestSink(Protocol):
    """A service as the gateway sees it (``node.service.ServiceRuntime``): where parsed
    requests and upgraded WebSockets go, and what it tells the gateway's connections."""

    name: str
    release_id: str  # named in the anycore-release header of node-made answers
    max_body: int    # the connection refuses a body past it (413) while reading
    routes: list[str]  # "[host]/prefix" entries the gateway routes to it (Gateway.add_service)

    def submit(self, exchange: Any, path: str) -> None: ...

    def place_buffered(self, exchange: Any) -> None: ...

    def unreserve(self, exchange: Any) -> None: ...

    def client_gone(self, exchange: Any) -> None: ...

    def open_websocket(self, session: Any, frame: wire.WsOpen) -> None: ...

    def websocket_gone(self, session: Any) -> None: ...


class DataPlane(Protocol):
    """An HTTP data plane in another process (``node.native.NativeGateway``: anycore-gateway),
    as a service (``node.service.ServiceRuntime``) tells it of its workers and its shifts.
    It places the requests itself; the service's router only mirrors its counts."""

    def service_changed(self, runtime: Any) -> None: ...  # routes, live release, limits, running

    def add_worker(self, runtime: Any, worker: Any) -> None: ...  # ready: hand over its data socket

    def shifted(self, runtime: Any, old: list[Any], applied: Any = None) -> None: ...  # the deploy's one atomic step

    def draining(self, worker: Any) -> None: ...  # no new requests; its Stop waits until idle there

    def remove_worker(self, worker: Any) -> None: ...


class ReleaseOwner(Protocol):
    """What a release supervisor reports to (``node.service.ServiceRuntime``). The worker
    table is the supervisor's; request accounting (in flight, served) is the router's,
    asked through ``inflight``/``served_by``."""

    name: str
    scale_override: tuple[int, int] | None
    data_sockets: bool  # give each worker a data socket (the native gateway's, see node/native.py)

    def on_done(self, worker: Any, exchange: Any, error: str | None) -> None: ...

    def worker_ready(self, worker: Any) -> None: ...

    def worker_draining(self, worker: Any) -> None: ...

    def worker_lost(self, worker: Any) -> None: ...

    def release_crashlooping(self, release: Any) -> None: ...

    def on_enqueue(self, worker: Any, frame: wire.Enqueue) -> None: ...  # the app's anycore.enqueue

    def autoscale(self, now: float, budget: int | None) -> None: ...

    def inflight(self, worker_id: int) -> int: ...

    def served_by(self, worker_id: int) -> int: ...


class ServiceView(Protocol):
    """A service as the cluster agent and the cross-node dispatch see it (``node.service.
    ServiceRuntime``): its name and release, the router's counts (what a heartbeat
    advertises, and the queue a busy node spills from), and the two ways a request crosses
    nodes — a peer's claim placed on a free slot here (``accept_remote``, never queued) and
    a request back from a peer at the head of the queue (``requeue``)."""

    @property
    def name(self) -> str: ...

    @property
    def release_id(self) -> str: ...

    @property
    def release(self) -> Any: ...  # the live release (None while stopped)

    @property
    def life(self) -> Lifecycle[ServiceState]: ...

    @property
    def router(self) -> Router[Any]: ...

    @property
    def server(self) -> tuple[str, int] | None: ...  # the gateway's address, for a request's first frame

    async def accept_remote(self, exchange: Any) -> bool: ...

    def requeue(self, exchange: Any) -> None: ...


class ReleaseStore(Protocol):
    """The code store's desired state, as the rollout and follow read it (``release.store.CodeStore``)."""

    async def get_release(self, release: str) -> Any: ...  # a ReleaseRecord, or None

    async def all_services(self) -> list[Any]: ...  # ServiceRecords: live release, stopped, history


class Deployments(Protocol):
    """The node's deployer as the cluster code sees it (``node.deployer.Deployer``): start a
    deploy of a release record (held at a rollout ``gate`` before its shift when given), and
    the deploys it knows."""

    @property
    def store(self) -> ReleaseStore: ...

    @property
    def deploys(self) -> Mapping[str, Deploy]: ...

    def start(self, record: Any, source: str, deploy_id: str | None = None, gate: Any = None,
              migrate: bool = True) -> Deploy: ...


class NodeView(Protocol):
    """The node as the cluster code (agent, rollout, follow) sees it, instead of the whole
    ``Node``. Implemented by ``node.node.Node``. Anything that changes the node goes
    through ``command`` (its single command queue), never a direct call."""

    @property
    def node_id(self) -> str: ...

    @property
    def log(self) -> NodeLog: ...

    @property
    def nc(self) -> Any: ...  # the NATS client (None before it connects)

    @property
    def gateway_url(self) -> str: ...

    @property
    def services(self) -> Mapping[str, ServiceView]: ...

    def command(self, command: Command) -> None: ...  # enqueue; the node runs it in turn


class AdminView(Protocol):
    """The node as the admin listener (``/metrics``, dashboard) sees it: read-only.
    Implemented by ``node.node.Node``."""

    @property
    def node_id(self) -> str: ...

    @property
    def log(self) -> NodeLog: ...  # events: ``log.watchers`` get them structured

    @property
    def stats(self) -> RequestStats: ...  # cumulative request counts per (service, release)

    def snapshot(self) -> dict[str, Any]: ...  # what ``anycore ps --json`` shows for this node
