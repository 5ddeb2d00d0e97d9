"""L0 (pure: no asyncio, no sockets) — the gateway's two lifecycles as data.

Each is a closed Enum and a table of legal transitions, in ``anycore.lifecycle``'s style;
the executor that holds the state (``Exchange``, ``WebSocketSession``) raises
``IllegalTransition`` on an edge the table does not have.

An exchange (one HTTP request/response, ``gateway.exchange``):

    RECEIVING --admit / a service takes it--> QUEUED --waiting=True--> WAITING --waiting=False--> QUEUED
    QUEUED --on_dispatched--> RUNNING --worker=None (retry, requeue)--> QUEUED
    RUNNING --Resp--> RESPONDING --last body byte--> COMPLETE
    QUEUED/WAITING/RUNNING --fail()--> RESPONDING --> COMPLETE (the node's answer, written whole)
    RESPONDING --fail()--> COMPLETE (the connection is aborted)
    QUEUED/WAITING/RUNNING --drop()--> COMPLETE (refused mid-body: no answer of its own)

A Session's move between workers (``gateway.websocket``, driven by ``node.sessions``):

    ATTACHED --hold--> HELD --detach--> DETACHED --reopen--> REOPENING --resume--> ATTACHED
    HELD/DETACHED --abandon--> CLOSED (no worker to go to: the client is closed 1011)

ATTACHED: not moving; the client's messages go to its worker (if it has one yet). HELD:
moving, the old worker may still be answering the snapshot; the client's messages (and its
close) are held. DETACHED: still moving, the old worker gone or given up. REOPENING: open
on the new worker, the held messages not yet sent (a key's group resumes together).
``moving`` is every state but ATTACHED and CLOSED. ``hold`` on a session already moving
changes nothing; another edge off the table raises ``IllegalTransition``.

Both are on hot paths: members hash by identity (Enum's own ``__hash__`` is a Python
function), and the executors read the states as the module globals below, never as
``ExchangeState.X`` (an Enum class attribute costs ~0.2 µs on Python 3.11).
"""

from __future__ import annotations

import enum


class ExchangeState(enum.Enum):
    RECEIVING = "receiving"    # head parsed; in its connection's pipeline, not yet handed on
    QUEUED = "queued"          # admitted: being routed and checked, or in its service's queue
    WAITING = "waiting"        # admitted; its body is buffered (a reservation) before it is placed
    RUNNING = "running"        # on a worker, or on a peer node's slot
    RESPONDING = "responding"  # the status line went out (the worker's answer or the node's)
    COMPLETE = "complete"      # the last byte went out, or the exchange was aborted or dropped

    # Members are singletons: identity hashing is exact, and C-fast (Enum's own __hash__
    # is a Python function, and a transition hashes twice).
    __hash__ = object.__hash__


RECEIVING, QUEUED, WAITING, RUNNING, RESPONDING, COMPLETE = ExchangeState  # what the executor reads
X = ExchangeState
TRANSITIONS: dict[ExchangeState, frozenset[ExchangeState]] = {
    X.RECEIVING: frozenset({X.QUEUED}),
    X.QUEUED: frozenset({X.WAITING, X.RUNNING, X.RESPONDING, X.COMPLETE}),
    X.WAITING: frozenset({X.QUEUED, X.RESPONDING, X.COMPLETE}),
    X.RUNNING: frozenset({X.QUEUED, X.RESPONDING, X.COMPLETE}),
    X.RESPONDING: frozenset({X.COMPLETE}),
    X.COMPLETE: frozenset(),
}
STARTED = frozenset({X.RESPONDING, X.COMPLETE})  # response_started


class MoveState(enum.Enum):
    ATTACHED = "attached"    # not moving: messages go to its worker
    HELD = "held"            # moving; messages held; the old worker may still snapshot it
    DETACHED = "detached"    # moving; the old worker is gone (or gave it up)
    REOPENING = "reopening"  # open on the new worker; the held messages wait for resume()
    CLOSED = "closed"        # the move was abandoned: no worker to go to

    __hash__ = object.__hash__  # singletons: identity hashing is exact and C-fast


ATTACHED, HELD, DETACHED, REOPENING, CLOSED = MoveState  # what the executor reads
M = MoveState
MOVES: dict[MoveState, frozenset[MoveState]] = {
    M.ATTACHED: frozenset({M.HELD}),
    M.HELD: frozenset({M.DETACHED, M.CLOSED}),
    M.DETACHED: frozenset({M.REOPENING, M.CLOSED}),
    M.REOPENING: frozenset({M.ATTACHED, M.DETACHED}),
    M.CLOSED: frozenset(),
}
MOVING = frozenset({M.HELD, M.DETACHED, M.REOPENING})  # WebSocketSession.moving
