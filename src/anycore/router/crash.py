"""L0 — what happens to a request whose worker (or peer node) died under it: one rule.

Every caller asks this one function: the service runtime when a local worker dies, the
cluster agent when a peer that ran the request is lost. Keeping the rule in one place is
the point: it used to be written three times, and the copies drifted.

The rule:
- a request already answered, or whose client is gone, needs nothing (``DONE``);
- blame is shared among the requests the dead worker was running (``share`` = 1/n): a
  request alone on two crashed workers is the likely cause, a bystander is not. Past two
  workers' worth of blame it is ``QUARANTINE``d: answered 502, and identical requests are
  refused for a while, so one poison request cannot take down the fleet;
- otherwise it is ``RETRY``d once, at the head of the queue, when that is safe: a safe
  method (GET/HEAD/OPTIONS), nothing of the response sent, no body byte consumed, first
  attempt;
- otherwise ``FAIL``: 502, saying the request may or may not have taken effect.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
QUARANTINE_AT = 2.0  # workers' worth of blame
MAX_ATTEMPTS = 2


class Outcome(enum.Enum):
    DONE = "done"
    RETRY = "retry"
    QUARANTINE = "quarantine"
    FAIL = "fail"


@dataclass(frozen=True)
class Crashed:
    """What the rule needs to know of a request whose worker died."""
    method: str
    answered: bool          # the response is complete, or the client is gone
    response_started: bool
    body_forwarded: int     # request body bytes already handed to a worker
    attempts: int           # times it was started on a worker
    blame: float            # its share of the blame so far, this death included


def retryable(method: str, response_started: bool, body_forwarded: int, attempts: int) -> bool:
    return method in SAFE_METHODS and not response_started and body_forwarded == 0 and attempts < MAX_ATTEMPTS


def outcome(request: Crashed) -> Outcome:
    if request.answered:
        return Outcome.DONE
    if request.blame >= QUARANTINE_AT - 1e-9:
        return Outcome.QUARANTINE
    if retryable(request.method, request.response_started, request.body_forwarded, request.attempts):
        return Outcome.RETRY
    return Outcome.FAIL


def why_not_retried(response_started: bool) -> str:
    """The 502's detail for ``FAIL``."""
    return "response already started" if response_started else "unsafe to retry: not GET/HEAD/OPTIONS or body consumed"
