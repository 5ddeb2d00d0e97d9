"""L1 — following the cluster's desired state: what a node does when KV and it disagree.

Desired state (live release per service, stopped or not) lives in JetStream KV and is
normally changed through this node or by a cluster deploy that includes it. A node that
was cut off from NATS during a deploy, joined later, or a service stopped or started on
another node, leaves this node out of line; ``follow`` (run every few heartbeats by the
cluster agent, in cluster mode only) brings it back: it deploys the live release it
missed, and stops or starts a service by putting the same ``Command`` on the node's queue
that the CLI would (``NodeView.command``). It sees the node and its deployer through
``ports.NodeView`` and ``ports.Deployments``. Each (service, action, release) is tried once: a failed follow is not
retried until the desired state changes, so a broken release does not loop.
"""

from __future__ import annotations

import asyncio
from typing import Any

from anycore.commands import Command
from anycore.ports import Deployments, NodeView

FOLLOW_BOUND = 10.0  # seconds one check may take (reading every service record)


async def follow(node: NodeView, deployer: Deployments, failed: set[tuple[str, str, str]]) -> None:
    """Bring this node in line with KV's desired state: deploy the live release it missed
    (joined later, or cut off from NATS during a cluster deploy), and stop or start a
    service that was stopped or started on another node (the same ``Command`` the CLI
    sends, through the node's command queue). A follow that failed is not retried until
    the desired state changes."""
    try:
        kept = await asyncio.wait_for(deployer.store.all_services(), FOLLOW_BOUND)
    except Exception as exc:  # NATS slow or away: the next check retries
        node.log.event("cluster.follow_skipped", error=repr(exc)[:200])
        return
    for service in kept:
        runtime = node.services.get(service.name)
        if not service.live or any(d.service == service.name and not d.finished for d in deployer.deploys.values()):
            continue
        if runtime is not None and runtime.release_id == service.live:
            running = runtime.release is not None
            want = (service.name, "stop" if service.stopped else "start", service.live)
            if running != service.stopped:
                failed.discard(want)  # in line
            elif want not in failed:
                failed.add(want)  # once per desired state
                node.log.event("cluster.follow", service.name, command=want[1])
                node.command(Command(want[1], {"service": service.name}))
            continue
        if service.stopped or (service.name, "deploy", service.live) in failed:
            continue
        if runtime is not None and runtime.release is None:
            continue  # stopped here: `anycore start` brings back its last release, then this catches up
        record = await deployer.store.get_release(service.live)
        if record is None:
            continue
        node.log.event("cluster.follow", service.name, release=service.live,
                        was=runtime.release_id if runtime is not None else None)
        deploy = deployer.start(record, "follow (live release in cluster KV)")

        def done(_: Any, key: tuple[str, str, str] = (service.name, "deploy", service.live), deploy: Any = deploy) -> None:
            if deploy.error:
                failed.add(key)

        deploy.task.add_done_callback(done)
