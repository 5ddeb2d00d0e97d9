"""L1 — deploy across the cluster: every node prepares, then all shift together (two-phase).

How it works. The node that receives ``anycore deploy`` (any node: the CLI picks one) is
the *coordinator* of that deploy. It starts the deploy on itself and sends ``prepare`` to
every live peer (``anycore.node.<peer>.prepare``). Each node runs the phases up to the
shift (fetch, env, import, warm; the migration hook runs on the coordinator only, so once per
cluster) and then waits at a *gate* instead of shifting; reaching the gate is its vote
``READY``, a failure before it is ``FAILED`` with the reason, and a node where the release
is live already votes ``NOOP`` (nothing to shift, nothing wrong). ``decide`` (pure) turns
the votes into COMMIT (every node ready or noop), ABORT (any failed or did not answer
within the prepare timeout) or WAIT, and names the nodes the decision goes to (every node
but the noop ones). On COMMIT the coordinator opens every gate at once
(``anycore.node.<peer>.commit``): each node shifts in one loop step and answers with the
wall-clock instant of its shift, so the deploy output reports the window during which
nodes served different releases. On ABORT every gate raises: the new release's processes
stop on every node and the old release keeps serving everywhere.

A node that missed the deploy (it joined later, or was cut off from NATS) catches up from
the KV record of live releases (``follow``): the agent checks it every few heartbeats.

The rollout sees the node through ``ports.NodeView`` and its deployer through
``ports.Deployments``; the live peers come from a callable (the cluster agent's). Every
task it starts (a coordination, a prepare) belongs to its ``TaskGroup``.
"""

from __future__ import annotations

import asyncio
import enum
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

from anycore.errors import ReleaseFailed
from anycore.ports import Deployments, NodeView
from anycore.release.deploy import Deploy, Phase
from anycore.release.store import ReleaseRecord
from anycore.tasks import TaskGroup

PREPARE_MARGIN = 30.0  # on top of the release's startup_timeout
ENV_MARGIN = 120.0  # a prepare may build the release's environment first (the env phase)
COMMIT_TIMEOUT = 10.0


class Vote(enum.Enum):
    READY = "ready"    # prepared, waiting at its gate
    FAILED = "failed"  # failed before the gate (the reason goes with the vote)
    NOOP = "noop"      # the release is live there already: nothing to shift, nothing wrong


class Outcome(enum.Enum):
    WAIT = "wait"
    COMMIT = "commit"
    ABORT = "abort"


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: str = ""
    targets: frozenset[str] = frozenset()  # the nodes the commit (or abort) goes to: not the noop ones


def decide(nodes: set[str], votes: dict[str, tuple[Vote, str]], timed_out: bool) -> Decision:
    """Commit only when every node voted ready or noop; abort at the first failure or on
    timeout. A noop node neither blocks the commit nor receives it (it has nothing to
    shift); a node that did not vote still gets the abort (it may reach its gate late)."""
    targets = frozenset(n for n in nodes if votes.get(n, (None, ""))[0] is not Vote.NOOP)
    failed = sorted(n for n, (vote, _) in votes.items() if vote is Vote.FAILED)
    if failed:
        return Decision(Outcome.ABORT, "; ".join(f"node {n}: {votes[n][1]}" for n in failed), targets)
    missing = sorted(nodes - set(votes))
    if not missing:
        return Decision(Outcome.COMMIT, "", targets)
    if timed_out:
        return Decision(Outcome.ABORT, f"no answer from node(s) {', '.join(missing)} within the prepare timeout", targets)
    return Decision(Outcome.WAIT, "", targets)


def prepare_subject(node: str) -> str:
    return f"anycore.node.{node}.prepare"


def commit_subject(node: str) -> str:
    return f"anycore.node.{node}.commit"


class Gate:
    """Where a prepared deploy waits for the cluster's decision (the deployer calls ``wait``
    before its shift and ``shifted`` right after it)."""

    def __init__(self, coordinating: bool = False, timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        self.coordinating = coordinating
        self.timeout = timeout  # a participant does not hold its service's deploy lock forever
        self.reached: asyncio.Future[None] = loop.create_future()
        self.decision: asyncio.Future[Decision] = loop.create_future()
        self.shifted_at: asyncio.Future[float] = loop.create_future()
        self.report: asyncio.Future[str] = loop.create_future()  # coordinator: the shift window, for the output

    async def wait(self, deploy: Deploy) -> None:
        if not self.reached.done():
            self.reached.set_result(None)
        try:
            decision = await asyncio.wait_for(asyncio.shield(self.decision), self.timeout)
        except asyncio.TimeoutError:
            # The coordinator went away between prepare and commit. Abort here; if it had
            # committed, the catch-up from KV (``ClusterAgent._follow``) deploys it again.
            decision = Decision(Outcome.ABORT, f"no commit from the coordinator within {self.timeout:.0f}s")
            self.open(decision)
        if decision.outcome is not Outcome.COMMIT:
            raise ReleaseFailed(deploy.release, f"the cluster aborted the deploy: {decision.reason}")
        deploy.listeners.append(self._on_event)

    async def shifted(self, deploy: Deploy) -> None:
        if self.coordinating:
            try:
                deploy.note(await asyncio.wait_for(asyncio.shield(self.report), COMMIT_TIMEOUT + 1))
            except asyncio.TimeoutError:
                deploy.note("the cluster's shift window is unknown: peers did not confirm in time")

    def _on_event(self, event: dict[str, Any]) -> None:
        if event["phase"] == Phase.SHIFT.value and not self.shifted_at.done():
            self.shifted_at.set_result(time.time())

    def open(self, decision: Decision) -> None:
        if not self.decision.done():
            self.decision.set_result(decision)


class Rollout:
    def __init__(self, node: NodeView, deployer: Deployments, peers: Callable[[], list[str]]) -> None:
        self.node = node
        self.deployer = deployer
        self.peers = peers  # the live peers now (the cluster agent's table)
        self.gates: dict[str, Gate] = {}  # deploy id -> gate, on this node
        self.tasks = TaskGroup("rollout", on_error=self._task_failed)

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.node.log.event("cluster.task_failed", task=name, error=repr(exc)[:300])

    async def start(self) -> None:
        nc = self.node.nc
        await nc.subscribe(prepare_subject(self.node.node_id), cb=self._on_prepare)
        await nc.subscribe(commit_subject(self.node.node_id), cb=self._on_commit)

    async def close(self, timeout: float = 2.0) -> None:
        """Cancel the coordinations and prepares still running (bounded)."""
        await self.tasks.close(timeout)

    # -- coordinator --------------------------------------------------------------------
    def deploy(self, record: ReleaseRecord, source: str, deploy_id: str | None,
               start: Callable[..., Deploy]) -> Deploy:
        """Deploy ``record`` on every live node; ``start`` is the local deployer's start."""
        peers = self.peers()
        if not peers:
            return start(record, source, deploy_id)
        gate = Gate(coordinating=True)
        deploy = start(record, source, deploy_id, gate=gate)
        self.gates[deploy.id] = gate
        self.tasks.spawn(self._coordinate(deploy, record, source, peers, gate), f"coordinate {deploy.id}")
        return deploy

    async def _coordinate(self, deploy: Deploy, record: ReleaseRecord, source: str, peers: list[str], gate: Gate) -> None:
        nc = self.node.nc
        me = self.node.node_id
        nodes = set(peers) | {me}
        votes: dict[str, tuple[Vote, str]] = {}
        timeout = record.config.startup_timeout + PREPARE_MARGIN + ENV_MARGIN
        body = json.dumps({"release": record.id, "deploy_id": deploy.id, "source": source}).encode()

        async def ask(peer: str) -> None:
            try:
                msg = await nc.request(prepare_subject(peer), body, timeout=timeout)
                reply = json.loads(msg.data)
                if reply.get("noop"):
                    votes[peer] = (Vote.NOOP, "")
                elif reply.get("ok"):
                    votes[peer] = (Vote.READY, "")
                else:
                    votes[peer] = (Vote.FAILED, reply.get("error", "failed"))
            except Exception as exc:  # timeout, no responders: the node cannot vote ready
                votes[peer] = (Vote.FAILED, f"no answer to prepare ({type(exc).__name__})")

        async def mine() -> None:
            await asyncio.wait([gate.reached, deploy.task], return_when=asyncio.FIRST_COMPLETED)
            if gate.reached.done():
                votes[me] = (Vote.READY, "")
            elif deploy.phase is Phase.NOOP:
                votes[me] = (Vote.NOOP, "")
            else:
                votes[me] = (Vote.FAILED, deploy.error or deploy.phase.value)

        asks = TaskGroup(f"votes {deploy.id}")
        waiting = [asks.spawn(ask(p), f"prepare {p}") for p in peers] + [asks.spawn(mine(), "prepare here")]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        decision = Decision(Outcome.WAIT)
        try:
            while decision.outcome is Outcome.WAIT:
                pending = [t for t in waiting if not t.done()]
                if pending:
                    await asyncio.wait(pending, timeout=max(0.0, deadline - loop.time()), return_when=asyncio.FIRST_COMPLETED)
                decision = decide(nodes, dict(votes), timed_out=loop.time() >= deadline or not pending)
        finally:
            await asks.close()
        targets = [p for p in peers if p in decision.targets]
        if decision.outcome is Outcome.ABORT:
            self.node.log.event("deploy.cluster_abort", record.service, release=record.id, reason=decision.reason)
            gate.open(decision)
            await asyncio.gather(*(self._commit(p, deploy.id, decision) for p in targets), return_exceptions=True)
            self.gates.pop(deploy.id, None)
            return
        sent = time.time()
        gate.open(decision)
        replies = await asyncio.gather(*(self._commit(p, deploy.id, decision) for p in targets), return_exceptions=True)
        acked = time.time()
        shifts = [r for r in replies if isinstance(r, float) and r > 0]
        if me in decision.targets:
            shifts.append(await gate.shifted_at)
        self.gates.pop(deploy.id, None)
        missing = len(decision.targets) - len(shifts)
        window = (max(shifts) - min(shifts)) * 1000 if shifts else 0.0
        detail = (f"{len(shifts)} nodes shifted within {window:.1f} ms (wall clocks); "
                  f"commit to last ack {(acked - sent) * 1000:.1f} ms" + (f"; {missing} node(s) did not confirm" if missing else ""))
        self.node.log.event("deploy.cluster_shift", record.service, release=record.id, nodes=len(shifts),
                            window_ms=round(window, 2), acks_ms=round((acked - sent) * 1000, 2))
        if not gate.report.done():
            gate.report.set_result(detail)

    async def _commit(self, peer: str, deploy_id: str, decision: Decision) -> float:
        body = json.dumps({"deploy_id": deploy_id, "commit": decision.outcome is Outcome.COMMIT,
                           "reason": decision.reason}).encode()
        msg = await self.node.nc.request(commit_subject(peer), body, timeout=COMMIT_TIMEOUT)
        return float(json.loads(msg.data).get("shifted_at", 0.0))

    # -- participant ----------------------------------------------------------------------
    async def _on_prepare(self, msg: Any) -> None:
        # A prepare lasts as long as a warm: run it beside the subscription, so prepares
        # of other services (and their commits) are not queued behind it.
        self.tasks.offer(self._prepare(msg), "prepare")

    async def _prepare(self, msg: Any) -> None:
        args = json.loads(msg.data)
        deployer = self.deployer
        record = await deployer.store.get_release(args["release"])
        if record is None:
            await msg.respond(json.dumps({"ok": False, "error": f"release {args['release']} is not in the code store"}).encode())
            return
        gate = Gate(timeout=record.config.startup_timeout + PREPARE_MARGIN + 2 * COMMIT_TIMEOUT)
        self.gates[args["deploy_id"]] = gate
        # Its own deploy id: the CLI follows the coordinator's deploy events only.
        deploy = deployer.start(record, f"{args['source']} (cluster deploy {args['deploy_id']})",
                                f"{args['deploy_id']}-{self.node.node_id}", gate=gate, migrate=False)
        await asyncio.wait([gate.reached, deploy.task], return_when=asyncio.FIRST_COMPLETED)
        if gate.reached.done():
            reply = {"ok": True}
        else:
            self.gates.pop(args["deploy_id"], None)
            noop = deploy.phase is Phase.NOOP
            reply = {"ok": noop, "noop": noop, "error": deploy.error or deploy.phase.value}
        await msg.respond(json.dumps(reply).encode())

    async def _on_commit(self, msg: Any) -> None:
        args = json.loads(msg.data)
        gate = self.gates.pop(args["deploy_id"], None)
        if gate is None:
            await msg.respond(json.dumps({"ok": False}).encode())
            return
        gate.open(Decision(Outcome.COMMIT if args["commit"] else Outcome.ABORT, args.get("reason", "")))
        shifted = 0.0
        if args["commit"]:
            try:
                shifted = await asyncio.wait_for(asyncio.shield(gate.shifted_at), COMMIT_TIMEOUT)
            except asyncio.TimeoutError:
                pass
        await msg.respond(json.dumps({"ok": True, "shifted_at": shifted}).encode())

