"""L0 — the node's commands: one thing the node is asked to do, from a signal, the CLI or a peer.

Everything that changes a node goes through its single queue of ``Command`` objects
(``node/node.py``): SIGTERM and SIGINT enqueue ``down``, the control plane
(``cluster/control.py``) turns each CLI request into a command and awaits its reply, and
the cluster's follow (``cluster/follow.py``) enqueues the same ``stop``/``start`` the CLI
would. So no two commands ever interleave their effects, whoever sent them.

This module is pure data: the reply is anything with ``done``/``set_result`` (the node
hands an ``asyncio.Future``), so the layer that defines commands needs no event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

# The commands the control plane accepts, one NATS subject each (anycore.node.<id>.<command>).
COMMANDS = ("ps", "stop", "start", "logs", "down", "deploy", "releases", "rollback", "scale", "abort", "recover", "env", "jobs")


class Reply(Protocol):
    """Where a command's result goes (an ``asyncio.Future`` in the node)."""

    def done(self) -> bool: ...

    def set_result(self, result: dict[str, Any]) -> None: ...


@dataclass
class Command:
    """One thing the node is asked to do, from a signal, the CLI or a peer."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    reply: Reply | None = None
