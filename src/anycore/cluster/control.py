"""L1 — the control plane over NATS: what the CLI asks a node, and how.

Every CLI command is a NATS request to ``anycore.node.<node_id>.<command>`` with a JSON
body; the node turns it into a ``Command`` on its single command queue (the same objects
its signal handlers enqueue) and replies ``{"ok": true, ...}`` or ``{"ok": false,
"error": "..."}``. ``anycore logs -f`` subscribes to ``anycore.logs.<node_id>.<service>``.
``Command`` itself is L0 (``anycore/commands.py``); the CLI finds live nodes in the
registry (``cluster/registry.py``), not through the node's agent.
The connection is authenticated (token or creds file); NATS refuses anything else, and
the CLI says so in words.
"""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nats.errors import NoServersError, TimeoutError as NatsTimeout
from nats.errors import NoRespondersError

from anycore.cluster.registry import read_nodes
from anycore.errors import ControlError, NodeNotFound, NotAuthorized

CONNECT_BOUND = 5.0


def home_dir() -> Path:
    return Path(os.environ.get("ANYCORE_HOME") or Path.home() / ".anycore")

CLOSE_TIMEOUT = 2.0  # seconds the CLI waits for its NATS connection to close


def control_subject(node_id: str, command: str) -> str:
    return f"anycore.node.{node_id}.{command}"


def deploy_subject(deploy_id: str) -> str:
    return f"anycore.deploy.{deploy_id}"


def logs_subject(node_id: str, service: str) -> str:
    return f"anycore.logs.{node_id}.{service or '_'}"


@dataclass
class NatsAuth:
    url: str
    token: str | None = None
    creds: str | None = None

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"servers": [u.strip() for u in self.url.split(",") if u.strip()]}  # a cluster: URL,URL,...
        if self.token:
            kwargs["token"] = self.token
        if self.creds:
            kwargs["user_credentials"] = self.creds
        return kwargs


async def connect(auth: NatsAuth, name: str, **extra: Any) -> nats.NATS:
    """Connect or raise a ControlError that says what to do."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    reconnect = extra.pop("allow_reconnect", False)
    try:
        # nats-py retries a first connection that is refused (or, reconnecting, one that is
        # not authorized) again and again: check the URL and credentials once, bounded.
        probe = await asyncio.wait_for(nats.connect(**auth.connect_kwargs(), name=name, error_cb=on_error,
                                                    allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0),
                                       CONNECT_BOUND)
        if not reconnect:
            return probe
        await probe.close()
        return await nats.connect(**auth.connect_kwargs(), name=name, error_cb=on_error,
                                  allow_reconnect=reconnect, connect_timeout=3,
                                  max_reconnect_attempts=extra.pop("max_reconnect_attempts", 0), **extra)
    except Exception as exc:  # nats-py raises several unrelated types here
        text = " ".join(str(e) for e in [exc, *errors]).lower()
        if "authorization" in text or "authentication" in text:
            raise NotAuthorized(
                f"NATS at {auth.url} refused the credentials (authorization violation) — use the token in "
                f"{home_dir() / 'token'}, or pass --token / --creds for a remote cluster"
            ) from None
        if isinstance(exc, (NoServersError, OSError, asyncio.TimeoutError)) or "connect" in text:
            raise ControlError(f"cannot reach NATS at {auth.url} — is the node running (`anycore up`)?") from None
        raise ControlError(f"cannot connect to NATS at {auth.url}: {exc}") from None


def local_node() -> dict[str, Any]:
    path = home_dir() / "node.json"
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise NodeNotFound(f"no node is running under {home_dir()} — start one with `anycore up`, "
                           "or set ANYCORE_HOME / pass --nats") from None


def _local_node_or_none() -> dict[str, Any]:
    try:
        return local_node()
    except NodeNotFound:
        return {}


class ControlClient:
    """The CLI's side: find the node, connect with credentials, send commands."""

    def __init__(self, nats_url: str | None, token: str | None, creds: str | None, reconnect: bool = False) -> None:
        self.reconnect = reconnect  # ride out a restart of the node's NATS (a deploy's storage recovery)
        self.nats_url = nats_url
        self.token = token
        self.creds = creds
        self.nc: nats.NATS | None = None
        self.node_id = ""

    async def __aenter__(self) -> "ControlClient":
        # Without --nats: the local node, from $ANYCORE_HOME/node.json. With --nats: the node
        # named by $ANYCORE_NODE, else the local node if it is in that cluster, else any live
        # node from the heartbeats (every node can deploy for the whole cluster).
        node = local_node() if not self.nats_url else _local_node_or_none()
        url = self.nats_url or node.get("nats_url", "")
        token = self.token
        if token is None and not self.creds:
            token = os.environ.get("ANYCORE_TOKEN")
            if token is None:
                token_file = home_dir() / "token"
                token = token_file.read_text().strip() if token_file.exists() else None
        extra = {"allow_reconnect": True, "max_reconnect_attempts": 40, "reconnect_time_wait": 0.25} if self.reconnect else {}
        self.nc = await connect(NatsAuth(url, token, self.creds), "anycore-cli", **extra)
        self.node_id = os.environ.get("ANYCORE_NODE") or ""
        if not self.node_id and self.nats_url:
            live = [h.node for h in await self.cluster()]
            mine = node.get("node_id", "")
            self.node_id = mine if mine in live else (live[0] if live else "")
            if not self.node_id:
                await self.nc.close()
                raise NodeNotFound(f"no anycore node is heartbeating on NATS at {url} — start one with "
                                   f"`anycore up --nats {url} ...`")
        elif not self.node_id:
            self.node_id = node.get("node_id", "")
        return self

    async def cluster(self) -> list[Any]:
        """Every node whose heartbeat has not expired (``Heartbeat`` records), by node id."""
        assert self.nc is not None
        return await read_nodes(self.nc.jetstream())

    async def __aexit__(self, *exc: object) -> None:
        if self.nc is not None:
            try:  # bounded: a CLI that was asked to stop must not hang on its way out
                await asyncio.wait_for(self.nc.close(), CLOSE_TIMEOUT)
            except (asyncio.TimeoutError, OSError):
                pass

    async def call(self, command: str, timeout: float = 10.0, **args: Any) -> dict[str, Any]:
        assert self.nc is not None
        try:
            msg = await self.nc.request(control_subject(self.node_id, command), json.dumps(args).encode(), timeout=timeout)
        except NoRespondersError:
            raise ControlError(f"node {self.node_id} does not answer on NATS — is it running?") from None
        except NatsTimeout:
            raise ControlError(f"node {self.node_id} did not answer `{command}` within {timeout:.0f}s") from None
        reply: dict[str, Any] = json.loads(msg.data)
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "the node refused the command"))
        return reply
