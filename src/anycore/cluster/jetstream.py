"""L1 — JetStream buckets that survive the loss of a NATS server when there is a cluster of them.

A bucket (KV or Object Store) is a stream; with one replica it lives on one server of a
NATS cluster, and losing that server loses the cluster's desired state until it returns.
So buckets are created with ``REPLICAS`` replicas (RAFT; a quorum of 2 of 3 keeps them
writable), and with one when the server says it is not clustered (error 10074), which is
the embedded single-server case. An existing bucket is used as it is.
"""

from __future__ import annotations

from typing import Awaitable, Callable, TypeVar

from nats.js.errors import ServerError

T = TypeVar("T")
REPLICAS = 3
NOT_CLUSTERED = 10074  # "replicas > 1 not supported in non-clustered mode"
INSUFFICIENT_RESOURCES = 10023  # a cluster smaller than REPLICAS servers


async def create_replicated(create: Callable[[int], Awaitable[T]]) -> T:
    """``create(replicas)`` with REPLICAS replicas if the NATS deployment has room, else one."""
    try:
        return await create(REPLICAS)
    except ServerError as exc:
        if exc.err_code not in (NOT_CLUSTERED, INSUFFICIENT_RESOURCES):
            raise
    return await create(1)
