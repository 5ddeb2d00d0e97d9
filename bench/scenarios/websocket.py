"""Scenario 6: WebSocket echo, messages per second: anycore (plain ASGI app) vs uvicorn + websockets.

Both run apps/wsecho with 2 workers; the client opens 32 WebSockets (no compression), each
with one 32-byte text message in flight, and counts echoes over the measured window. The
client is one Python process, like the one a real service would face: it takes a share of
the 2 cores, equally for both.
TODO: anycore `Session` variant (a class with on_message), once Session lands on main.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common import APPS, Ctx, load1
from load import ws_echo

SYSTEMS = ["anycore", "uvicorn"]
CONNECTIONS = 32


def run(ctx: Ctx) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": [], "errors": {}, "connections": CONNECTIONS}
    for r in range(ctx.mode.rounds):
        for name in ctx.order(SYSTEMS, r):
            system = ctx.systems[name]
            with ctx.attempt(result, name) as ok:
                if not ok:
                    continue
                system.start(APPS / "wsecho", ctx.env)
                ws_url = system.url.replace("http://", "ws://")
                asyncio.run(ws_echo(ws_url, CONNECTIONS, ctx.mode.warmup))
                load_before = load1()
                m = asyncio.run(ws_echo(ws_url, CONNECTIONS, ctx.mode.duration))
                m.update(system=name, variant="ASGI websocket", round=r, load_before=load_before, load_after=load1())
                result["rows"].append(m)
                ctx.log(f"websocket r{r} {name}: {m['msgs_per_s']:.0f} msg/s, {m['errors']:.0f} failed connections")
    return result
