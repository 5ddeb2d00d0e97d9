"""L3 — ``anycore call SERVICE METHOD PATH``: one call to a service, from a terminal.

The call goes over the node's control connection (NATS, ``anycore.node.<id>.call``) and
the node runs it as a call from a worker would run (``node/calls.py``): placed on a free
slot here, on a peer, or queued, with the given deadline — not through the gateway's TCP
port, so it reaches a service by name whatever its routes (a host route included). The
response body is written to stdout as it came (bytes), the status line and headers to
stderr with ``-i``; the exit code is 0 for a 2xx/3xx answer, 1 otherwise.
"""

from __future__ import annotations

import base64
import sys
from typing import Any, Awaitable, Callable

import click

from anycore.cluster.control import ControlClient


def _header(value: str) -> tuple[str, str]:
    name, sep, text = value.partition(":")
    if not sep or not name.strip():
        raise click.BadParameter(f"{value!r} is not 'name: value'")
    return name.strip(), text.strip()


def register(cli: click.Group, with_nats: Callable[..., Any], run: Callable[[Awaitable[Any]], Any]) -> None:
    """Add ``call`` to the CLI group (main.py's helpers passed in: no import cycle with it)."""

    @cli.command("call")
    @click.argument("service")
    @click.argument("method")
    @click.argument("path")
    @click.option("-d", "--data", help="Request body; @FILE reads a file, @- stdin.")
    @click.option("-H", "--header", "headers", multiple=True, help="A request header 'name: value' (repeatable).")
    @click.option("-i", "--include", is_flag=True, help="Print the status and the response headers (to stderr).")
    @click.option("--timeout", type=float, default=30.0, show_default=True, help="The call's deadline in seconds.")
    @with_nats
    def call(service: str, method: str, path: str, data: str | None, headers: tuple[str, ...], include: bool,
             timeout: float, nats_url: str | None, token: str | None, creds: str | None) -> None:
        """Call METHOD PATH of SERVICE through the node, placed like a call between services."""
        if not path.startswith("/"):
            raise click.BadParameter(f"{path!r} must start with '/'", param_hint="PATH")
        if timeout <= 0:
            raise click.BadParameter("must be a positive number of seconds", param_hint="--timeout")
        body = b""
        if data is not None:
            if data == "@-":
                body = sys.stdin.buffer.read()
            elif data.startswith("@"):
                with open(data[1:], "rb") as f:
                    body = f.read()
            else:
                body = data.encode()
        pairs = [list(_header(h)) for h in headers]

        async def go() -> dict[str, Any]:
            async with ControlClient(nats_url, token, creds) as client:
                return await client.call("call", timeout=timeout + 5, service=service, method=method, path=path,
                                         headers=pairs, body=base64.b64encode(body).decode(), deadline=timeout)

        reply = run(go())
        if include:
            click.echo(f"{reply['status']}", err=True)
            for name, value in reply["headers"]:
                click.echo(f"{name}: {value}", err=True)
            click.echo("", err=True)
        sys.stdout.buffer.write(base64.b64decode(reply["body"]))
        sys.stdout.flush()
        if reply.get("truncated"):
            click.echo("anycore: the body was cut at 512 KiB (the control connection's limit)", err=True)
        if reply.get("error"):
            click.echo(f"anycore: the response was cut: {reply['error']}", err=True)
        sys.exit(0 if reply["status"] < 400 and not reply.get("error") else 1)
