"""L2 — a dead worker's requests: ``router.crash.outcome`` applied, and the quarantine it feeds.

When a worker dies, each request it was running is judged by the one crash rule
(``anycore.router.crash``): blame is shared among the requests that died together, then
each is ``DONE`` (answered already, or its client is gone), ``RETRY``d once at the head of
the queue, ``QUARANTINE``d or ``FAIL``ed with a 502 saying it may or may not have taken
effect. This module applies the verdicts; it decides nothing itself.

Quarantine: a request that crashed two workers is answered 502 and recorded, and identical
requests (method, raw path, query) are refused for ``QUARANTINE_TTL`` seconds, so one
poison request cannot take down the fleet. The table is kept here, read by ``refuses`` on
every submit; each refusal is counted (``rejected{reason="quarantined"}``), the 502 of the
request that crashed twice is not (it ran: it is a 502 in ``requests_total``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterable

from anycore.log import NodeLog
from anycore.router.crash import Crashed, Outcome, outcome, why_not_retried
from anycore.stats import RequestStats

if TYPE_CHECKING:
    from anycore.gateway.exchange import Exchange

QUARANTINE_TTL = 300.0

Key = tuple[str, bytes, bytes]


def _key(exchange: "Exchange") -> Key:
    return (exchange.method, exchange.raw_path, exchange.query)


def judge(lost: list["Exchange"]) -> list[tuple["Exchange", Outcome]]:
    """Share the blame for one dead worker among its requests; the rule's verdict for each."""
    verdicts = []
    for exchange in lost:
        exchange.crashes += 1 / len(lost)
        exchange.worker = None
        verdicts.append((exchange, outcome(Crashed(
            method=exchange.method, answered=exchange.response_complete or exchange.conn.closed,
            response_started=exchange.response_started, body_forwarded=exchange.body_forwarded,
            attempts=exchange.attempts, blame=exchange.crashes))))
    return verdicts


class Crashes:
    def __init__(self, name: str, log: NodeLog, release_id: Callable[[], str], stats: RequestStats | None = None) -> None:
        self.name = name
        self.stats = stats if stats is not None else RequestStats()
        self.log = log
        self._release_id = release_id
        self.quarantine: dict[Key, float] = {}  # request key -> refused until (clock time)
        self.quarantined = 0

    def refuses(self, exchange: "Exchange", now: float) -> bool:
        """Answer (502) and return True if an identical request is quarantined."""
        key = _key(exchange)
        until = self.quarantine.get(key)
        if until is None:
            return False
        if until <= now:
            del self.quarantine[key]
            return False
        self.stats.reject(self.name, "quarantined")
        exchange.fail(502, "quarantined",
                      f"an identical request crashed two workers of {self._release_id()}; it is refused for "
                      f"{QUARANTINE_TTL:.0f}s — fix the handler and deploy")
        return True

    def apply(self, worker_id: int, lost: Iterable["Exchange"], now: float,
              retry: Callable[["Exchange"], None]) -> None:
        """The verdicts for the requests ``worker_id`` was running when it died."""
        for exchange, verdict in judge(list(lost)):
            if verdict is Outcome.QUARANTINE:
                self.quarantined += 1
                self.quarantine[_key(exchange)] = now + QUARANTINE_TTL
                self.log.event("request.quarantined", self.name, method=exchange.method,
                               path=exchange.raw_path.decode("latin-1"), crashed_workers=round(exchange.crashes))
                exchange.fail(502, "quarantined", "this request crashed two workers; it will not be retried — "
                              "see `anycore logs` for the crash")
            elif verdict is Outcome.RETRY:
                self.log.event("request.retried", self.name, method=exchange.method,
                               path=exchange.raw_path.decode("latin-1"), dead_worker=worker_id)
                exchange.release = ""
                retry(exchange)
            elif verdict is Outcome.FAIL:
                exchange.fail(502, "worker died",
                              f"the worker running this {exchange.method} request died "
                              f"({why_not_retried(exchange.response_started)}); "
                              "the request may or may not have taken effect")
