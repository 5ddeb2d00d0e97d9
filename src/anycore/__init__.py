"""anycore: run Python services on any free core.

A node (``anycore up``) owns the client connections (gateway), places every request on a
free worker slot or in a bounded queue (router), and keeps workers forked from a warm
zygote alive (supervisor). The control plane is NATS, embedded by default.
"""

__version__ = "0.1.0"

from anycore.worker.session import Session

__all__ = ["Session", "__version__"]
