"""L3 — following a deploy from the CLI, and what Ctrl-C means while doing so.

``anycore deploy`` / ``rollback`` subscribe to the deploy's progress subject (the deploy id
is chosen here, so no event is missed), ask the node for it, and print each phase. A
Ctrl-C (SIGINT) is taken by the loop, not by a KeyboardInterrupt in the middle of an
await, and means:

- before anything was asked of the node (packing, uploading): nothing changed; say so.
- before the shift: ask the node to ``abort`` the deploy by id; the node stops the new
  release's processes and the old release keeps serving. This holds even when the
  interrupt came before the node's reply to the deploy request: the id is already known.
- at or after the shift: the swap cannot be taken back by stopping; the deploy goes on
  (drain, retire), and the message says how to follow it and how to undo it.

Either way the command exits 130. A second Ctrl-C while the abort is under way is an
ordinary KeyboardInterrupt (the handler is removed after the first).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
from typing import Any, Awaitable, TypeVar

import click

from anycore.cluster.control import ControlClient, deploy_subject

T = TypeVar("T")
PHASE_DONE = {"done", "failed", "noop"}
EXIT_INTERRUPTED = 130


class Interrupted(Exception):
    """SIGINT arrived while a step was awaited (the step was cancelled)."""


class Interrupt:
    """Turns SIGINT into an event the awaited steps race against (``with Interrupt() as i``)."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.loop = asyncio.get_running_loop()

    def __enter__(self) -> "Interrupt":
        self.loop.add_signal_handler(signal.SIGINT, self._fire)
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.remove_signal_handler(signal.SIGINT)

    def _fire(self) -> None:
        self.loop.remove_signal_handler(signal.SIGINT)  # a second Ctrl-C is a plain interrupt
        self.event.set()

    async def race(self, step: Awaitable[T]) -> T:
        """Await ``step``; raise Interrupted (cancelling it) if SIGINT comes first."""
        if self.event.is_set():
            raise Interrupted()
        task = asyncio.ensure_future(step)
        stop = asyncio.ensure_future(self.event.wait())
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        raise Interrupted()


async def follow(client: ControlClient, interrupt: Interrupt, command: str, **args: Any) -> dict[str, Any]:
    """Send a deploying command and print its phases live until it ends; returns the last event."""
    assert client.nc is not None
    deploy_id = secrets.token_hex(6)
    events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def on_event(msg: Any) -> None:
        events.put_nowait(json.loads(msg.data))

    sub = await client.nc.subscribe(deploy_subject(deploy_id), cb=on_event)
    event: dict[str, Any] = {}
    try:
        reply = await interrupt.race(client.call(command, timeout=30, deploy_id=deploy_id, **args))
        event = reply["deploy"]
        if args.get("detach"):
            return event
        click.echo(f"deploying {event['release']} (was {event['previous'] or 'not running'})")
        last_phase = ""
        while event["phase"] not in PHASE_DONE:
            event = await interrupt.race(events.get())
            if last_phase and last_phase in event["timings"]:
                click.echo(f"  {last_phase:<8} {event['timings'][last_phase] * 1000:8.1f} ms")
            last_phase = event["phase"]
            if event["phase"] not in PHASE_DONE and event["detail"]:
                click.echo(f"  {event['phase']:<8} ... {event['detail']}")
    except Interrupted:
        await abort(client, deploy_id, event)
    await sub.unsubscribe()
    return event


async def abort(client: ControlClient, deploy_id: str, last: dict[str, Any]) -> None:
    """Ctrl-C during a deploy: abort it if it has not shifted, else say it goes on. Exits 130."""
    reply = await client.call("abort", timeout=60, deploy_id=deploy_id)
    service, release = reply.get("service") or last.get("service", ""), reply.get("release") or last.get("release", "")
    if reply.get("aborted"):
        click.echo(f"anycore: aborted: {release} was stopped before the shift; "
                   f"{reply.get('previous') or 'nothing'} keeps serving as before", err=True)
    elif reply.get("phase") in ("failed", "noop"):
        click.echo(f"anycore: interrupted; the deploy of {release} had already ended ({reply.get('phase')}): "
                   f"nothing changed", err=True)
    else:
        click.echo(f"anycore: interrupted after the shift: {release} is live and the deploy goes on "
                   f"({reply.get('phase')}). Follow it with `anycore releases {service}` or `anycore logs {service} -f`; "
                   f"undo it with `anycore rollback {service}`", err=True)
    sys.exit(EXIT_INTERRUPTED)


def interrupted_before_sending() -> None:
    click.echo("anycore: interrupted before the deploy was sent to the node: nothing changed", err=True)
    sys.exit(EXIT_INTERRUPTED)
