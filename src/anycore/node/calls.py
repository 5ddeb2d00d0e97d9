"""L2 — calls between services: a worker's call placed like a request from outside.

A worker's code calls another service (``anycore.call``, ``worker/calls.py``); its frames
arrive on the worker's frame socket (``CallReq``, ``CallBody``, ``CallCredit``,
``CallCancel``; ``WorkerHandle.on_call``). Each call becomes a ``CallExchange``: an
``Exchange`` with no client socket (the pattern of ``cluster.dispatch.RemoteExchange``)
submitted to the target service's ``RequestSink`` — so it is placed exactly like an outside
request: a free local slot, a peer's free slot (the cross-node spill-over of a queued
request), or the queue, with the call's deadline; the crash rule, the sweep, quarantine
and the stats of the service apply unchanged. What a client socket would get goes back to
the calling worker as ``CallResp``/``CallBody``/``CallEnd`` frames.

Deadlines. The call carries its budget (the caller's remaining deadline, or less): the
exchange's deadline is clamped to it whatever the service's own timeout says
(``CallExchange.deadline``). The caller also keeps the budget itself and cancels at its end
(``CallCancel``: the callee's request is cancelled like a client that left).

Flow control. Request body: the caller may send ``WINDOW`` bytes; the node returns
``CallCredit`` for each byte it forwards to the callee's worker, which has its own window:
at most two windows of a call's body are in the node. Response body: the callee's frames
are forwarded as they come; the caller's ``CallCredit`` goes to the callee as ``Credit``.

Cycles. A call never holds a slot of its caller: the calling request keeps its own slot
and awaits. So a chain A -> B -> C holds one slot per hop, and waits only on slots further
down. A cycle (A -> A, or A -> B -> A) could wait on itself: when every slot of A is held
by callers waiting on calls into A, the queued calls can never be placed. So: the chain of
services a request went through travels in ``anycore-call-chain``; a call into a service
already on its chain that finds no free slot right now is answered 503 at once instead of
queueing behind itself, and a chain past ``MAX_DEPTH`` is refused with 508 Loop Detected.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import json
import math
import urllib.parse
from typing import TYPE_CHECKING, Any, Callable, Mapping

from anycore import wire
from anycore.gateway import requestid
from anycore.config import parse_route
from anycore.gateway.exchange import Exchange
from anycore.gateway.states import STARTED

if TYPE_CHECKING:
    from anycore.node.service import ServiceRuntime
    from anycore.stats import RequestStats

MAX_DEPTH = 8
ELSEWHERE_TIMEOUT = 30.0  # a call with no budget to a service only peers run (its own timeout is theirs)
CHAIN = b"anycore-call-chain"
CYCLE_RETRY_AFTER = 1


class _NoClient:
    """The client socket a call does not have (cf. ``cluster.dispatch._NoClient``)."""

    client = None
    closing = False
    writing_paused = False
    node_header = b""

    def __init__(self) -> None:
        self.closed = False  # the caller gave up (CallCancel) or its worker is gone

    def body_flow(self, ok: bool) -> None:  # the caller is paced by CallCredit instead
        pass

    def write(self, data: bytes) -> None:  # "100 Continue": no client to tell
        pass

    def response_done(self, exchange: Exchange) -> None:
        pass

    def abort(self) -> None:
        self.closed = True


class CallExchange(Exchange):
    """One call, as the target service sees it: a request whose answer goes to a worker."""

    def __init__(self, caller: Any, call: wire.CallReq, path: str, root_path: str, headers: list[tuple[bytes, bytes]],
                 now: float, node: str, on_finished: Callable[["CallExchange"], None]) -> None:
        self.budget_end = now + call.timeout if call.timeout > 0 else math.inf  # before Exchange sets ``deadline``
        length = next((v for k, v in headers if k == b"content-length"), None)
        super().__init__(_NoClient(), call.method, path.encode("utf-8") if not path.isascii() else path.encode(),
                         call.query, headers, "1.1", True, int(length) if length and length.isdigit() else None,
                         False, now)
        self.unrouted = False  # no node runs the service: counted under service ""
        self.rid = requestid.find(headers)  # the caller's x-request-id: the node's lines about this call name it
        self.caller = caller
        self.call_id = call.id
        self.service_name = call.service
        self.path = urllib.parse.unquote(path) if "%" in path else path
        self.root_path = root_path
        self.here = node
        self.header_bytes = len(path) + len(call.query) + sum(len(k) + len(v) for k, v in headers)
        self.on_finished = on_finished
        self.body_done = not call.more
        self.credited = len(call.body)  # the first chunk travels outside the caller's window
        if call.body:
            self.feed_body(call.body)

    # The call's budget bounds whatever deadline its service would give it (placement sets it).
    @property
    def deadline(self) -> float:
        return self._deadline

    @deadline.setter
    def deadline(self, value: float) -> None:
        self._deadline = min(value, self.budget_end) if value else value

    # -- the request body, from the caller --------------------------------------------------
    def _pump(self) -> None:
        super()._pump()
        n = self.body_forwarded - self.credited
        if n > 0 and not self.conn.closed:
            self.credited += n
            self.caller.send(wire.CallCredit(self.call_id, n))

    def from_caller(self, frame: wire.Frame) -> None:
        kind = type(frame)
        if kind is wire.CallBody:
            if frame.data:  # type: ignore[union-attr]
                self.feed_body(frame.data)  # type: ignore[union-attr]
            if not frame.more:  # type: ignore[union-attr]
                self.end_body()
        elif kind is wire.CallCredit:  # the caller took response bytes: the callee may send more
            if self.worker is not None:
                self.worker.send(wire.Credit(self.id, frame.n))  # type: ignore[union-attr]
        elif kind is wire.CallCancel:
            self.cancel()

    def cancel(self) -> None:
        """The caller gave up, or its worker is gone: cancel like a client that left."""
        self.conn.closed = True
        self.on_finished(self)
        if self.service is not None:
            self.service.client_gone(self)
        elif self.worker is not None and not self.response_complete:  # on a peer, for a service not run here
            self.worker.send(wire.Cancel(self.id))

    # -- the response, from the callee's worker (or the peer that runs it) ------------------
    def on_frame(self, frame: wire.Frame) -> None:
        kind = type(frame)
        if kind is wire.Credit:
            self.credit += frame.n  # type: ignore[union-attr]
            self._pump()
        elif kind is wire.Resp:
            if self.state in STARTED:
                return
            self.response_started = True
            self.status = frame.status  # type: ignore[union-attr]
            headers = [*frame.headers, (b"anycore-release", self.release.encode()),  # type: ignore[union-attr]
                       (b"anycore-node", (self.node or self.here).encode())]
            self._forward(wire.CallResp(self.call_id, frame.status, headers, frame.body, frame.more),  # type: ignore[union-attr]
                          frame.more)  # type: ignore[union-attr]
        elif kind is wire.Body:
            self._forward(wire.CallBody(self.call_id, frame.data, frame.more), frame.more)  # type: ignore[union-attr]

    def _forward(self, frame: wire.Frame, more: bool) -> None:
        if self.response_complete:
            return
        if not self.conn.closed:
            self.caller.send(frame)
        if not more:
            self.response_complete = True
            self.on_finished(self)

    def fail(self, status: int, error: str, detail: str, retry_after: int | None = None) -> None:
        if self.response_complete:
            return
        if self.response_started:  # the caller sees its response cut
            self.response_complete = True
            if not self.conn.closed:
                self.caller.send(wire.CallEnd(self.call_id, f"{error}: {detail}"))
            self.on_finished(self)
            return
        self.response_started = True
        self.status = status
        headers = [(b"content-type", b"application/json"), (b"anycore-node", self.here.encode())]
        if retry_after is not None:
            headers.append((b"retry-after", str(retry_after).encode()))
        body = json.dumps({"error": error, "detail": detail, "status": status}).encode()
        self._forward(wire.CallResp(self.call_id, status, headers, body, False), False)


class Calls:
    """The node's call router: frames from calling workers to their calls' exchanges."""

    def __init__(self, node_id: str, services: Mapping[str, "ServiceRuntime"], clock: Callable[[], float],
                 stats: "RequestStats | None" = None) -> None:
        self.node_id = node_id
        self.stats = stats  # calls are counted with their service's requests (/metrics, top)
        self.services = services
        self.clock = clock
        self.calls: dict[tuple[int, int], CallExchange] = {}  # (calling worker id, call id) -> its exchange
        self.cluster: Any = None  # the cluster agent (set by the node): calls to services only peers run
        self.started = 0

    def port(self, runtime: "ServiceRuntime") -> Callable[[Any, wire.Frame | None], None]:
        """What a service's workers call with their call frames (``WorkerHandle.on_call``)."""
        return lambda worker, frame: self.on_frame(runtime.name, worker, frame)

    def on_frame(self, caller_service: str, worker: Any, frame: wire.Frame | None) -> None:
        if frame is None:  # the calling worker is gone: nobody reads its calls' answers
            for key in [k for k in self.calls if k[0] == worker.id]:
                self.calls[key].cancel()
            return
        if type(frame) is wire.CallReq:
            self.start(caller_service, worker, frame)
            return
        exchange = self.calls.get((worker.id, frame.id))  # type: ignore[union-attr]
        if exchange is not None:
            exchange.from_caller(frame)

    def start(self, caller_service: str, worker: Any, call: wire.CallReq) -> CallExchange:
        """Make the exchange of a new call and submit it to its service (or answer at once)."""
        chain = [s for s in _chain_of(call.headers) if s]
        chain.append(caller_service)
        runtime = self.services.get(call.service)
        path, root = call.path, ""
        routes = runtime.config.routes if runtime is not None else \
            self.cluster.routes_elsewhere(call.service) if self.cluster is not None else None
        if routes is not None:
            prefix = _mount(tuple(routes))
            if prefix != "/":  # the service's own paths: its mount is the root path, as through the gateway
                path, root = prefix + path, prefix
        headers = [(k, v) for k, v in call.headers if k != CHAIN and k != b"host"]
        headers.append((b"host", call.service.encode()))
        headers.append((CHAIN, ",".join(chain).encode()))
        key = (worker.id, call.id)

        def finished(exchange: CallExchange) -> None:
            if self.calls.get(key) is exchange:
                del self.calls[key]
            if self.stats is not None and exchange.response_complete:
                created = exchange.created
                # A name no node runs is counted under service "" (as the gateway's no-route
                # answers): a typo or a generated name must not add a metric series per name.
                self.stats.record(exchange.service_name if not exchange.unrouted else "", exchange.release,
                                  exchange.status, self.clock() - created,
                                  exchange.dispatched_at - created if exchange.dispatched_at else None)

        exchange = CallExchange(worker, call, path, root, headers, self.clock(), self.node_id, finished)
        self.calls[key] = exchange
        self.started += 1
        if runtime is None and routes is not None and len(chain) <= MAX_DEPTH:
            self._elsewhere(exchange, call)
        elif runtime is None:
            known = ", ".join(sorted(self.services)) or "none"
            exchange.unrouted = True
            if self.stats is not None:
                self.stats.reject("", "no_route")
            exchange.fail(404, "unknown service", f"no service named {call.service!r} on node {self.node_id} "
                          f"(running here: {known}) — check the name, or deploy it")
        elif len(chain) > MAX_DEPTH:
            exchange.fail(508, "loop detected", f"call chain {' -> '.join(chain)} -> {call.service} is deeper than "
                          f"{MAX_DEPTH} calls; a service probably calls itself without end")
        elif call.service in chain and runtime.release is not None and not runtime.router.can_place():
            exchange.fail(503, "call cycle", f"call chain {' -> '.join(chain)} -> {call.service} comes back to "
                          f"{call.service}, which has no free slot now: queueing would wait on itself; retry",
                          CYCLE_RETRY_AFTER)
        else:
            runtime.submit(exchange, exchange.path)
        return exchange

    def _elsewhere(self, exchange: CallExchange, call: wire.CallReq) -> None:
        """The service runs only on peers: claim one's free slot (no queue here to wait in)."""
        exchange.admit()
        exchange.deadline = exchange.created + (call.timeout if call.timeout > 0 else ELSEWHERE_TIMEOUT)

        def refused() -> None:
            if not exchange.conn.closed:
                exchange.fail(503, "no free slot", f"service {call.service} does not run on node {self.node_id} "
                              "and no node running it has a free slot now; retry", CYCLE_RETRY_AFTER)

        self.cluster.call_elsewhere(call.service, exchange, refused)

    def info(self) -> dict[str, int]:
        return {"inflight": len(self.calls), "started": self.started}

    # -- `anycore call` (the CLI, over the node's control subject) -------------------------------
    async def from_cli(self, args: dict[str, Any]) -> dict[str, Any]:
        """Run one call for the CLI, placed like any call; the whole answer (body base64,
        cut at ``CLI_BODY`` bytes: a NATS reply is bounded)."""
        service, method, path = args.get("service"), args.get("method"), args.get("path")
        if not all(isinstance(v, str) and v for v in (service, method, path)) or not str(path).startswith("/"):
            return {"ok": False, "error": "give SERVICE METHOD PATH, with PATH starting with '/'"}
        try:
            body = base64.b64decode(args.get("body") or "")
            headers = [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in args.get("headers") or []]
            timeout = float(args.get("deadline") or 0)
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            return {"ok": False, "error": f"bad call arguments: {exc}"}
        if body:
            headers.append((b"content-length", str(len(body)).encode()))
        target, _, query = str(path).partition("?")
        try:
            raw_query = query.encode("ascii")
        except UnicodeEncodeError:
            return {"ok": False, "error": f"the query {query!r} is not ASCII: percent-encode it (e.g. %E2%82%AC for €)"}
        cli = CliCaller()
        call = wire.CallReq(next(_cli_ids), str(service), str(method).upper(), target, raw_query,
                            headers, b"", bool(body), timeout)
        self.start("", cli, call)
        exchange = cli.exchange = self.calls.get((cli.id, call.id))
        if exchange is not None and body:
            for i in range(0, len(body), wire.CHUNK):
                exchange.from_caller(wire.CallBody(call.id, body[i:i + wire.CHUNK], i + wire.CHUNK < len(body)))
        try:
            await asyncio.wait_for(asyncio.shield(cli.done), timeout + 1.0 if timeout > 0 else None)
        except asyncio.TimeoutError:
            if exchange is not None:
                exchange.cancel()
            return {"ok": False, "error": f"no answer within {timeout}s; the call was cancelled"}
        data = b"".join(cli.body)
        return {"ok": True, "status": cli.status, "headers": [[k.decode("latin-1"), v.decode("latin-1")] for k, v in cli.headers],
                "body": base64.b64encode(data[:CLI_BODY]).decode(), "truncated": len(data) > CLI_BODY,
                "error": cli.error}


CLI_BODY = 512 * 1024
_cli_ids = itertools.count(1)


class CliCaller:
    """The caller of an `anycore call`: collects the answer instead of a worker."""

    id = -1  # no worker has it

    def __init__(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body: list[bytes] = []
        self.error = ""
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.size = 0
        self.exchange: CallExchange | None = None

    def send(self, frame: wire.Frame) -> None:
        kind = type(frame)
        if kind is wire.CallResp:
            self.status, self.headers = frame.status, frame.headers  # type: ignore[union-attr]
            self._take(frame.body, frame.more)  # type: ignore[union-attr]
        elif kind is wire.CallBody:
            self._take(frame.data, frame.more)  # type: ignore[union-attr]
        elif kind is wire.CallEnd:
            self.error = frame.error  # type: ignore[union-attr]
            self._finish()

    def _take(self, data: bytes, more: bool) -> None:
        if self.size <= CLI_BODY:
            self.body.append(data)
        self.size += len(data)
        if not more:
            self._finish()
        elif data and self.exchange is not None:  # taken: the callee may send more
            self.exchange.from_caller(wire.CallCredit(self.exchange.call_id, len(data)))

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


@functools.lru_cache(maxsize=256)
def _mount(routes: tuple[str, ...]) -> str:
    """The path prefix a call's path goes under: the service's first host-less route's."""
    return next((p for h, p in map(parse_route, routes) if h is None), "/")


def _chain_of(headers: list[tuple[bytes, bytes]]) -> list[str]:
    for name, value in headers:
        if name == CHAIN:
            return value.decode("latin-1").split(",")
    return []
