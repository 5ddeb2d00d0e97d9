"""Scenario 6: WebSocket echo, messages per second: anycore Session, anycore plain ASGI, uvicorn + websockets.

anycore serves apps/wsession (an echo `Session` on /session and a plain ASGI echo on /),
uvicorn serves apps/wsecho (the same ASGI echo; `--ws websockets`), each with 2 workers. The
client opens 32 WebSockets (no compression), each keeping 8 64-byte text messages in flight,
and counts echoes over the measured window. It is one Python process sharing the 2 cores,
equally for every system.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common import APPS, Ctx, load1
from load import ws_echo

SYSTEMS = ["anycore", "uvicorn"]
CONNECTIONS = 32
WINDOW = 8
VARIANTS = {"anycore": [("Session", "session"), ("ASGI websocket", "")], "uvicorn": [("ASGI websocket", "")]}
APP = {"anycore": "wsession", "uvicorn": "wsecho"}


def run(ctx: Ctx) -> dict[str, Any]:
    result: dict[str, Any] = {"rows": [], "errors": {}, "connections": CONNECTIONS, "window": WINDOW}
    for r in range(ctx.mode.rounds):
        for name in ctx.order(SYSTEMS, r):
            system = ctx.systems[name]
            with ctx.attempt(result, name) as ok:
                if not ok:
                    continue
                system.start(APPS / APP[name], ctx.env)
                for variant, path in VARIANTS[name]:
                    ws_url = system.url.replace("http://", "ws://") + path
                    if ctx.mode.warmup:
                        asyncio.run(ws_echo(ws_url, CONNECTIONS, ctx.mode.warmup, WINDOW))
                    load_before = load1()
                    m = asyncio.run(ws_echo(ws_url, CONNECTIONS, ctx.mode.duration, WINDOW))
                    m.update(system=name, variant=variant, round=r, load_before=load_before, load_after=load1())
                    result["rows"].append(m)
                    ctx.log(f"websocket r{r} {name} {variant}: {m['msgs_per_s']:.0f} msg/s, "
                            f"{m['errors']:.0f} failed connections")
    return result
