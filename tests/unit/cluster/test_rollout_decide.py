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
