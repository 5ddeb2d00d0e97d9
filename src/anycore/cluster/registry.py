"""L1 — the cluster's node registry: the ``anycore_nodes`` KV bucket of heartbeats.

Each node's cluster agent (``cluster/agent.py``) puts its latest heartbeat under its node
id, with the bucket's TTL, so an entry disappears by itself a little after its node stops
heartbeating. The CLI (``cluster/control.py``) reads the bucket to find a live node to talk
to and to print ``anycore ps --cluster``. Both sides meet here, not in each other: the
agent is the node's executor, the control client the CLI's, and neither imports the other.
"""

from __future__ import annotations

from typing import Any

import msgspec
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, NoKeysError, NotFoundError

from anycore.cluster.jetstream import create_replicated
from anycore.cluster.membership import NODES_TTL, Heartbeat
from anycore.errors import ControlError

NODES_BUCKET = "anycore_nodes"
READ_ATTEMPTS = 3

heartbeat_encoder = msgspec.json.Encoder()
heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


async def open_nodes_bucket(js: Any) -> Any:
    try:
        return await js.key_value(NODES_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        return await create_replicated(lambda n: js.create_key_value(KeyValueConfig(
            bucket=NODES_BUCKET, history=1, ttl=NODES_TTL, replicas=n, description="anycore node heartbeats (expire)")))


async def read_nodes(js: Any) -> list[Heartbeat]:
    """The nodes whose heartbeat has not expired, as the CLI sees them."""
    kv = await open_nodes_bucket(js)
    for attempt in range(READ_ATTEMPTS):
        try:
            keys = await kv.keys()
            break
        except NoKeysError:  # an empty bucket
            return []
        except Exception as exc:  # a slow server (its watch timed out): never "no nodes" for that
            if attempt == READ_ATTEMPTS - 1:
                raise ControlError(f"could not read the cluster's nodes from NATS ({exc!r}) — try again") from None
    found = []
    for key in keys:
        try:
            entry = await kv.get(key)
        except Exception:  # expired between keys() and get()
            continue
        if entry.value:
            found.append(heartbeat_decoder.decode(entry.value))
    return sorted(found, key=lambda h: h.node)
