"""The cluster deploy's decision: commit only when every node is ready."""

from __future__ import annotations

from anycore.cluster.rollout import Outcome, Vote, decide

NODES = {"a", "b", "c"}


def test_waits_until_every_node_voted():
    assert decide(NODES, {"a": (Vote.READY, "")}, timed_out=False).outcome is Outcome.WAIT


def test_commits_when_all_are_ready():
    votes = {n: (Vote.READY, "") for n in NODES}
    assert decide(NODES, votes, timed_out=False).outcome is Outcome.COMMIT


def test_one_failure_aborts_at_once_and_names_the_node():
    decision = decide(NODES, {"b": (Vote.FAILED, "lifespan startup failed")}, timed_out=False)
    assert decision.outcome is Outcome.ABORT and decision.reason == "node b: lifespan startup failed"


def test_silence_past_the_timeout_aborts_naming_the_missing_nodes():
    decision = decide(NODES, {"a": (Vote.READY, "")}, timed_out=True)
    assert decision.outcome is Outcome.ABORT and "b, c" in decision.reason


def test_a_failure_wins_over_a_timeout():
    decision = decide(NODES, {"a": (Vote.READY, ""), "c": (Vote.FAILED, "x")}, timed_out=True)
    assert decision.outcome is Outcome.ABORT and decision.reason == "node c: x"


def _deploy():
    from anycore.release.deploy import Deploy

    return Deploy("d1", "shop", "shop@2", "shop@1", "test")


def test_the_gate_lets_a_commit_through_and_turns_an_abort_into_a_failed_release():
    import asyncio

    import pytest

    from anycore.cluster.rollout import Decision, Gate
    from anycore.errors import ReleaseFailed

    async def run() -> None:
        gate = Gate()
        gate.open(Decision(Outcome.COMMIT))
        await gate.wait(_deploy())
        assert gate.reached.done()
        aborted = Gate()
        aborted.open(Decision(Outcome.ABORT, "node b: import error"))
        with pytest.raises(ReleaseFailed, match="the cluster aborted the deploy: node b: import error"):
            await aborted.wait(_deploy())
        silent = Gate(timeout=0)  # the coordinator never answers: the participant gives up
        with pytest.raises(ReleaseFailed, match="no commit from the coordinator"):
            await silent.wait(_deploy())

    asyncio.run(run())
