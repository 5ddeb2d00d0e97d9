"""Vote.NOOP in the cluster deploy: a node where the release is live already neither blocks
the commit, nor fails it, nor is sent the commit (it has nothing to shift).

First the pure ``decide``, then the coordinator (``Rollout._coordinate``) driven through
fakes of its ports: a NodeView whose NATS client answers prepares and records commits,
and a local deploy that waits at its gate like the deployer's.
"""

from __future__ import annotations

import asyncio
import json
import time
from types import SimpleNamespace
from typing import Any

from anycore.cluster.rollout import Outcome, Rollout, Vote, commit_subject, decide, prepare_subject
from anycore.commands import Command
from anycore.log import NodeLog
from anycore.release.deploy import Deploy, Phase

NODES = {"a", "b", "c"}


def test_noop_votes_commit_like_ready_ones_and_are_not_shift_targets() -> None:
    votes = {"a": (Vote.READY, ""), "b": (Vote.NOOP, ""), "c": (Vote.READY, "")}
    decision = decide(NODES, votes, timed_out=False)
    assert decision.outcome is Outcome.COMMIT
    assert decision.targets == {"a", "c"}


def test_noop_is_not_a_failure_even_past_the_timeout() -> None:
    decision = decide(NODES, {"a": (Vote.NOOP, ""), "b": (Vote.NOOP, ""), "c": (Vote.NOOP, "")}, timed_out=True)
    assert decision.outcome is Outcome.COMMIT and decision.targets == frozenset() and decision.reason == ""


def test_noop_nodes_are_not_missing_and_get_no_abort() -> None:
    decision = decide(NODES, {"a": (Vote.NOOP, "")}, timed_out=False)
    assert decision.outcome is Outcome.WAIT
    decision = decide(NODES, {"a": (Vote.NOOP, ""), "b": (Vote.FAILED, "import error")}, timed_out=False)
    assert decision.outcome is Outcome.ABORT and decision.reason == "node b: import error"
    assert decision.targets == {"b", "c"}  # the failed and the silent ones get the abort; the noop one not
    decision = decide(NODES, {"a": (Vote.NOOP, ""), "b": (Vote.READY, "")}, timed_out=True)
    assert decision.outcome is Outcome.ABORT and "node(s) c " in decision.reason


class FakeNats:
    """Answers prepares as each peer would and records the commits sent."""

    def __init__(self, prepares: dict[str, dict[str, Any]]) -> None:
        self.prepares = prepares
        self.commits: list[str] = []
        self.is_connected = True

    async def request(self, subject: str, body: bytes, timeout: float) -> Any:
        for peer, reply in self.prepares.items():
            if subject == prepare_subject(peer):
                return SimpleNamespace(data=json.dumps(reply).encode())
            if subject == commit_subject(peer):
                self.commits.append(peer)
                return SimpleNamespace(data=json.dumps({"ok": True, "shifted_at": time.time()}).encode())
        raise AssertionError(f"unexpected request on {subject}")


class FakeNode:
    """ports.NodeView"""

    def __init__(self, nc: FakeNats) -> None:
        self.node_id = "me"
        self.log = NodeLog()
        self.nc = nc
        self.gateway_url = "http://127.0.0.1:1"
        self.services: dict[str, Any] = {}
        self.commands: list[Command] = []

    def command(self, command: Command) -> None:
        self.commands.append(command)


RECORD = SimpleNamespace(id="shop@2", service="shop", config=SimpleNamespace(startup_timeout=1.0))


details: list[str] = []


def local_start(live_here: bool) -> Any:
    """The local deployer's ``start``: no-op when the release is live here, else it waits at the gate and shifts."""

    def start(record: Any, source: str, deploy_id: str | None = None, gate: Any = None) -> Deploy:
        deploy = Deploy(deploy_id or "d1", record.service, record.id, "shop@1", source)
        deploy.listeners.append(lambda event: details.append(event["detail"]))

        async def run() -> None:
            if live_here:
                deploy.noop("already live")
                return
            deploy.enter(Phase.FETCH)
            await gate.wait(deploy)
            deploy.enter(Phase.SHIFT)
            await gate.shifted(deploy)
            deploy.enter(Phase.DONE)

        deploy.task = asyncio.ensure_future(run())
        return deploy

    return start


def coordinate(prepares: dict[str, dict[str, Any]], live_here: bool) -> tuple[Deploy, FakeNode]:
    async def run() -> tuple[Deploy, FakeNode]:
        node = FakeNode(FakeNats(prepares))
        rollout = Rollout(node, deployer=None, peers=lambda: sorted(prepares))  # type: ignore[arg-type]
        deploy = rollout.deploy(RECORD, "test", "d1", local_start(live_here))  # type: ignore[arg-type]
        await asyncio.wait_for(deploy.task, 5)
        await asyncio.wait_for(asyncio.gather(*rollout.tasks.tasks), 5)
        await rollout.close()
        return deploy, node

    return asyncio.run(run())


def test_the_coordinator_commits_to_the_ready_peers_only() -> None:
    details.clear()
    deploy, node = coordinate({"p1": {"ok": True}, "p2": {"ok": True, "noop": True, "error": "noop"}}, live_here=False)
    assert deploy.phase is Phase.DONE, deploy.error
    assert node.nc.commits == ["p1"]
    shifted = [d for d in details if "nodes shifted" in d]
    assert shifted and shifted[-1].startswith("2 nodes shifted") and "did not confirm" not in shifted[-1], details


def test_a_noop_coordinator_does_not_wait_for_its_own_shift() -> None:
    deploy, node = coordinate({"p1": {"ok": True}}, live_here=True)
    assert deploy.phase is Phase.NOOP
    assert node.nc.commits == ["p1"]
    assert not any("cluster_abort" in line for line in node.log.tail(None, 50))
