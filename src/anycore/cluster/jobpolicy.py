"""L0 — what happens to a job after it ran: acknowledge, retry later, or dead-letter. Pure.

A job is a request stored in a JetStream work-queue stream (``cluster.jobs``). A node
pulls it when a slot of its service is free, runs it like a request (``node.jobs``) and
then asks ``decide`` what to tell JetStream. The rules:

- a 2xx answer acknowledges it: it leaves the stream and never runs again;
- any other answer (a 4xx, a 500 from an exception, a 502 because its worker died, a 504
  past ``job_timeout``) is a failed attempt. Delivery ``n`` (JetStream counts deliveries,
  so a node lost mid-job counts too: its redelivery is delivery ``n + 1``) is retried
  after ``backoff[n - 1]`` seconds (the last entry repeats) while ``n < attempts``;
- the failure of delivery ``attempts`` (or later) dead-letters it, with its last error and
  the number of deliveries.

A running job also tells JetStream it is alive: an in-progress ack every
``progress_every`` seconds of ``JobRun``'s clock, so the stream's ack wait does not
redeliver a job that still runs. Each run of a delivery on a node is a ``JobRun`` whose
state moves along ``TRANSITIONS``: RUNNING to exactly one of ACKED, RETRYING, DEAD.

Nothing here reads a clock or does I/O: ``now`` is passed in, so the unit tests drive it
with a fake clock (tests/unit/cluster/test_jobpolicy.py).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from anycore.errors import IllegalTransition

DEFAULT_ATTEMPTS = 3
DEFAULT_BACKOFF = (1.0, 5.0, 30.0)


class JobState(enum.Enum):
    RUNNING = "running"  # pulled, placed on a slot (or in the service's queue for a moment)
    ACKED = "acked"  # answered 2xx: removed from the stream
    RETRYING = "retrying"  # failed; nak'ed with a delay: JetStream redelivers it later
    DEAD = "dead"  # failed its last attempt: copied to the dead-letter stream, removed


TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.RUNNING: frozenset({JobState.ACKED, JobState.RETRYING, JobState.DEAD}),
    JobState.ACKED: frozenset(),
    JobState.RETRYING: frozenset(),
    JobState.DEAD: frozenset(),
}


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = DEFAULT_ATTEMPTS  # deliveries before the job is dead-lettered (job_attempts)
    backoff: tuple[float, ...] = DEFAULT_BACKOFF  # seconds before retry n (job_backoff); the last repeats

    def delay(self, delivered: int) -> float:
        """Seconds before the retry that follows failed delivery ``delivered`` (1-based)."""
        if not self.backoff:
            return 0.0
        return self.backoff[min(max(delivered, 1), len(self.backoff)) - 1]


@dataclass(frozen=True)
class Ack:
    pass


@dataclass(frozen=True)
class Retry:
    delay: float


@dataclass(frozen=True)
class DeadLetter:
    error: str
    attempts: int


Action = Ack | Retry | DeadLetter


def succeeded(status: int) -> bool:
    return 200 <= status < 300


def decide(policy: RetryPolicy, delivered: int, status: int, error: str) -> Action:
    """The verdict on delivery ``delivered`` (1-based, JetStream's count) that answered
    ``status`` (``error``: what went wrong, for the dead letter)."""
    if succeeded(status):
        return Ack()
    if delivered >= policy.attempts:
        return DeadLetter(error or f"answered {status}", delivered)
    return Retry(policy.delay(delivered))


def describe(status: int, body: bytes) -> str:
    """A failed attempt in one line: the status and the start of what the job answered."""
    text = body[:300].decode("utf-8", "replace").strip().replace("\n", " ")
    return f"{status}: {text}" if text else f"answered {status}"


@dataclass
class JobRun:
    """One delivery of a job running on this node."""

    job: str  # the job id (its JetStream message id)
    delivered: int  # JetStream's delivery count: 1 on the first run
    started: float
    progress_every: float
    state: JobState = JobState.RUNNING
    progress_at: float = field(init=False)  # when the next in-progress ack is due

    def __post_init__(self) -> None:
        self.progress_at = self.started + self.progress_every

    def to(self, target: JobState) -> None:
        if target not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"job {self.job} (delivery {self.delivered})", self.state.value, target.value)
        self.state = target

    def progress_due(self, now: float) -> bool:
        """True (once per period) when the stream must hear that this job still runs."""
        if self.state is not JobState.RUNNING or now < self.progress_at:
            return False
        self.progress_at = now + self.progress_every
        return True

    def finish(self, action: Action) -> None:
        self.to(JobState.ACKED if isinstance(action, Ack) else
                JobState.RETRYING if isinstance(action, Retry) else JobState.DEAD)
