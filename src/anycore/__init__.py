"""anycore: run Python services on any free core.

A node (``anycore up``) owns the client connections (gateway), places every request on a
free worker slot or in a bounded queue (router), and keeps workers forked from a warm
zygote alive (supervisor). The control plane is NATS, embedded by default.

Inside a service: ``await anycore.call("shop", "GET", "/items/7")`` calls another
service through the node (``anycore.stream``, ``anycore.call_sync`` for threads,
``anycore.transport()`` for httpx; see ``anycore.worker.calls``).
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anycore.worker.calls import Response, call, call_sync, stream, time_left
    from anycore.worker.jobs import enqueue, enqueue_sync
    from anycore.worker.session import Session
    from anycore.worker.transport import sync_transport, transport

__all__ = ["Response", "Session", "__version__", "call", "call_sync", "enqueue", "enqueue_sync", "stream",
           "sync_transport", "time_left", "transport"]

_CALLS = ("Response", "call", "call_sync", "stream", "time_left")


def __getattr__(name: str) -> Any:
    # ``from anycore import Session`` without making every ``import anycore`` (the CLI) load the worker runtime.
    if name == "Session":
        from anycore.worker.session import Session

        return Session
    if name in _CALLS:
        from anycore.worker import calls

        return getattr(calls, name)
    if name in ("transport", "sync_transport"):
        from anycore.worker import transport

        return getattr(transport, name)
    if name in ("enqueue", "enqueue_sync"):  # durable jobs (anycore.worker.jobs)
        from anycore.worker import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module 'anycore' has no attribute {name!r}")
