"""anycore: run Python services on any free core.

A node (``anycore up``) owns the client connections (gateway), places every request on a
free worker slot or in a bounded queue (router), and keeps workers forked from a warm
zygote alive (supervisor). The control plane is NATS, embedded by default.
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from anycore.worker.jobs import enqueue, enqueue_sync
    from anycore.worker.session import Session

__all__ = ["Session", "__version__", "enqueue", "enqueue_sync"]


def __getattr__(name: str) -> Any:
    # ``from anycore import Session`` without making every ``import anycore`` (the CLI) load the worker runtime.
    if name == "Session":
        from anycore.worker.session import Session

        return Session
    if name in ("enqueue", "enqueue_sync"):  # durable jobs (anycore.worker.jobs)
        from anycore.worker import jobs

        return getattr(jobs, name)
    raise AttributeError(f"module 'anycore' has no attribute {name!r}")
