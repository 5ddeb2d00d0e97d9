"""L1: a child process's stdout/stderr, read from its output socket into the node's log."""

from __future__ import annotations

import asyncio
import socket

from anycore.log import NodeLog


async def pump_output(sock: socket.socket, log: NodeLog, service: str, tag: str) -> None:
    """Read one process's output socket until EOF, a tagged log line per line of text."""
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    pending = b""
    try:
        while True:
            data = await loop.sock_recv(sock, 65536)
            if not data:
                break
            pending += data
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                text = raw.decode("utf-8", "replace")
                log.output(service, tag, text)
            if len(pending) > 65536:
                log.output(service, tag, pending.decode("utf-8", "replace"))
                pending = b""
    except OSError:
        pass
    finally:
        if pending:
            log.output(service, tag, pending.decode("utf-8", "replace"))
        sock.close()
