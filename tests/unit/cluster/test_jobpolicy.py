"""The retry core of durable jobs (anycore.cluster.jobpolicy): verdicts as a table, the
backoff schedule, the delivery's lifecycle table, and in-progress acks on a fake clock."""

from __future__ import annotations

import pytest

from anycore.cluster.jobpolicy import (TRANSITIONS, Ack, DeadLetter, JobRun, JobState, Retry, RetryPolicy, decide,
                                       describe)
from anycore.errors import IllegalTransition
from tests.unit.clock import FakeClock

POLICY = RetryPolicy(attempts=3, backoff=(1.0, 5.0))


@pytest.mark.parametrize("delivered, status, expected", [
    (1, 200, Ack()),
    (1, 204, Ack()),
    (3, 201, Ack()),  # a last attempt that succeeds is a success
    (1, 500, Retry(1.0)),
    (2, 502, Retry(5.0)),
    (1, 404, Retry(1.0)),  # a 4xx is a failure too: the job's answer decides, not its kind
    (1, 302, Retry(1.0)),
    (3, 500, DeadLetter("boom", 3)),
    (5, 504, DeadLetter("boom", 5)),  # delivered past the limit (node losses count): dead at once
])
def test_verdicts(delivered: int, status: int, expected: object) -> None:
    assert decide(POLICY, delivered, status, "boom") == expected


def test_the_last_backoff_repeats_and_an_empty_one_retries_at_once() -> None:
    policy = RetryPolicy(attempts=10, backoff=(0.5, 2.0))
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 2.0, 2.0, 2.0, 2.0]
    assert decide(RetryPolicy(attempts=2, backoff=()), 1, 500, "") == Retry(0.0)


def test_one_attempt_means_no_retry_and_a_dead_letter_says_what_failed() -> None:
    assert decide(RetryPolicy(attempts=1), 1, 503, "") == DeadLetter("answered 503", 1)
    assert describe(500, b"thumbnail broke:\nno such image") == "500: thumbnail broke: no such image"
    assert describe(502, b"") == "answered 502"


def test_a_delivery_ends_once_along_its_table() -> None:
    run = JobRun("j1", 1, 0.0, 2.0)
    run.finish(Retry(1.0))
    assert run.state is JobState.RETRYING
    with pytest.raises(IllegalTransition):
        run.finish(Ack())
    assert all(not TRANSITIONS[s] for s in (JobState.ACKED, JobState.RETRYING, JobState.DEAD))


def test_in_progress_acks_come_once_per_period_while_running_and_stop_after() -> None:
    clock = FakeClock(100.0)
    run = JobRun("j1", 1, clock(), progress_every=2.0)
    due = []
    for _ in range(20):  # 10 s in steps of 0.5 s
        clock.advance(0.5)
        if run.progress_due(clock()):
            due.append(clock.now - 100.0)
    assert due == [2.0, 4.0, 6.0, 8.0, 10.0]
    run.finish(Ack())
    clock.advance(5.0)
    assert not run.progress_due(clock())
