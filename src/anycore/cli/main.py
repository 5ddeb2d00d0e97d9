"""L3 — the ``anycore`` command line. Every command but ``up`` talks to a node over NATS only.

Exit codes: 0 done; 1 the operation ran and failed (a deploy or an initial release did not
start; the old release serves as before); 2 it could not be done as asked (bad input, no
node, NATS refused, a node already running, a port in use, a disk error), with one line
saying what to do; 70 a bug in anycore (one line; ``ANYCORE_DEBUG=1`` shows the
traceback); 130 interrupted (Ctrl-C). No user error ever prints a traceback.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Awaitable, Callable, TypeVar

import click

from anycore.cli.edge import Edge, edge_options
from anycore.cli.jobs import jobs_command
from anycore.cli.follow import Interrupt, Interrupted, follow, interrupted_before_sending
from anycore.cli.top import top as top_command
from anycore.cluster.control import ControlClient, home_dir, local_node, logs_subject
from anycore.config import load_service
from anycore.node.lock import held as lock_held
from anycore.errors import AnycoreError, ControlError, StorageError

T = TypeVar("T")
EXIT_FAILED, EXIT_USAGE, EXIT_BUG, EXIT_INTERRUPTED = 1, 2, 70, 130


def _run(coro: Awaitable[T]) -> T:
    import uvloop

    return uvloop.run(coro)  # type: ignore[arg-type]  # errors end in main(), said in one line


# What --gateway is when neither the flag nor $ANYCORE_GATEWAY says: the native gateway
# when its binary is built (`pip install -e .` with cargo), else the Python one.
GATEWAY_DEFAULT = "auto"


def gateway_option(f: Callable[..., Any]) -> Callable[..., Any]:
    """``--gateway python|native|auto`` and ``--gateway-threads``. --gateway's default is
    $ANYCORE_GATEWAY, else GATEWAY_DEFAULT. ``auto``: the native gateway when its binary is found, else the Python one (`up` prints which)."""
    return click.option("--gateway", type=click.Choice(["python", "native", "auto"]), envvar="ANYCORE_GATEWAY",
                        default=GATEWAY_DEFAULT, show_default=True, show_envvar=True,
                        help="Data plane: the in-process Python gateway, anycore-gateway (Rust; see README, "
                             "Native gateway), or auto: native when it is built, else python.")(
        click.option("--gateway-threads", type=click.IntRange(min=1), default=None,
                     help="Threads of the native gateway (default: half the cores it may use, at least one).")(f))


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:8000; port 0 picks a free one)")
    return host.strip("[]") or "127.0.0.1", int(port)


def _admin(value: str | None) -> tuple[tuple[str, int] | None, bool]:
    """``--admin``: (address or None for off, whether a taken port may move: only the default's)."""
    from anycore.admin.server import DEFAULT

    if value is None:
        return DEFAULT, True
    if value.lower() == "off":
        return None, False
    return _listen(value), False


admin_option = click.option(
    "--admin", "admin", default=None, metavar="HOST:PORT|off",
    help="Admin listener: /metrics and the dashboard (default 127.0.0.1:9790; a non-loopback address needs the "
         "node's token as a Bearer header; off: none).")


nats_options = [
    click.option("--nats", "nats_url", envvar="ANYCORE_NATS", help="NATS URL of the cluster (default: the local node's)."),
    click.option("--token", envvar="ANYCORE_TOKEN", help="NATS token (default: $ANYCORE_HOME/token)."),
    click.option("--creds", type=click.Path(exists=True, dir_okay=False), help="NATS credentials file."),
]


def with_nats(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(nats_options):
        fn = option(fn)
    return fn


env_options = [
    click.option("--user", "service_user", envvar="ANYCORE_USER", default="",
                 help="When the node runs as root: the user services run as (a service's `user` key wins). "
                      "Default: nobody, or root (said at deploy) where nobody cannot reach the interpreter or the home."),
    click.option("--index-url", envvar="ANYCORE_INDEX_URL", default="",
                 help="Package index for release environments (default: uv's, i.e. PyPI). Prefer the env var for credentials."),
    click.option("--extra-index-url", "extra_index_urls", envvar="ANYCORE_EXTRA_INDEX_URL", multiple=True,
                 help="Another package index (repeatable)."),
    click.option("--find-links", envvar="ANYCORE_FIND_LINKS", multiple=True,
                 help="A wheelhouse directory or URL for release environments (repeatable)."),
    click.option("--no-index", is_flag=True, envvar="ANYCORE_NO_INDEX", help="Use only --find-links (offline)."),
]


def with_env_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(env_options):
        fn = option(fn)
    return fn


class _AccessFormat(click.Choice):
    """``--access-log`` alone means logfmt; a word after it that is no format (``up
    --access-log ./app``) gets a message saying how to write it."""

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value not in self.choices:
            self.fail(f"{value!r} is not an access-log format ({', '.join(map(str, self.choices))}); "
                      "put service paths before --access-log, or write --access-log=logfmt", param, ctx)
        return value


log_options = [
    click.option("--access-log", type=_AccessFormat(["logfmt", "json", "combined"]), is_flag=False,
                 flag_value="logfmt", default=None,
                 help="One line per request, with its request id and time spent queued: logfmt (the default "
                      "when given alone), json, or combined (the Apache/nginx format)."),
    click.option("--log-format", type=click.Choice(["logfmt", "json"]), default="logfmt", show_default=True,
                 help="Node events and worker output: logfmt lines or one JSON object per line."),
]


def with_log_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(log_options):
        fn = option(fn)
    return fn


def _index(index_url: str, extra_index_urls: tuple[str, ...], find_links: tuple[str, ...], no_index: bool) -> Any:
    from anycore.release.env import IndexSettings

    return IndexSettings(index_url, tuple(extra_index_urls), tuple(str(_abspath(f)) for f in find_links), no_index)


def _abspath(location: str) -> str:
    import os

    return location if "://" in location else os.path.abspath(location)


@click.group()
@click.version_option(package_name="anycore")
def cli() -> None:
    """anycore: run Python services on any free core, replace their code while they serve."""


@cli.command()
@click.argument("paths", nargs=-1)
@click.option("--listen", default="127.0.0.1:8000", show_default=True, help="Gateway HOST:PORT (port 0: any free port).")
@with_log_options
@click.option("--header-timeout", type=float, default=10.0, show_default=True, help="Seconds to receive request headers.")
@click.option("--keepalive-timeout", type=float, default=5.0, show_default=True, help="Seconds an idle connection stays open.")
@click.option("--max-connections", type=int, default=10000, show_default=True)
@click.option("--max-header-bytes", type=int, default=65536, show_default=True)
@click.option("--ws-ping-interval", type=float, default=20.0, show_default=True,
              help="Ping a WebSocket silent this many seconds; close it (1011) if the pong takes as long again.")
@gateway_option
@admin_option
@with_nats
@with_env_options
@edge_options
def up(paths: tuple[str, ...], listen: str, access_log: str | None, log_format: str, header_timeout: float, keepalive_timeout: float,
       max_connections: int, max_header_bytes: int, ws_ping_interval: float, gateway: str, gateway_threads: int | None,
       admin: str | None, nats_url: str | None,
       token: str | None, creds: str | None, service_user: str, index_url: str, extra_index_urls: tuple[str, ...],
       find_links: tuple[str, ...], no_index: bool, edge: Edge) -> None:
    """Start a node in the foreground, serving each PATH (a directory, or module:attr)."""
    from anycore.gateway.http import Limits
    from anycore.node.node import Node

    services = [load_service(p) for p in paths]
    if nats_url and not (token or creds):
        click.echo("anycore: --nats needs --token or --creds: the control plane is always authenticated", err=True)
        sys.exit(2)
    limits = Limits(max_header_bytes=max_header_bytes, header_timeout=header_timeout,
                    keepalive_timeout=keepalive_timeout, max_connections=max_connections, ws_ping_interval=ws_ping_interval,
                    **edge.limits(gateway))
    admin_address, admin_fallback = _admin(admin)
    node = Node(home_dir(), _listen(listen), nats_url, token, creds, access_log, limits,
                index=_index(index_url, extra_index_urls, find_links, no_index), service_user=service_user,
                log_format=log_format, admin=admin_address, admin_fallback=admin_fallback, gateway=gateway,
                gateway_threads=gateway_threads or 0)
    sys.exit(_run(node.run(services)))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--cluster", "whole", is_flag=True, help="Every node of the cluster, from their heartbeats.")
@with_nats
def ps(as_json: bool, whole: bool, nats_url: str | None, token: str | None, creds: str | None) -> None:
    """Services, releases and workers of the node (or, with --cluster, load per node)."""
    import msgspec

    async def go() -> dict[str, Any]:
        async with ControlClient(nats_url, token, creds) as client:
            if whole:
                return {"ok": True, "nodes": [msgspec.to_builtins(h) for h in await client.cluster()]}
            return await client.call("ps")

    reply = _run(go())
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return
    from anycore.cli.render import render_cluster, render_ps

    render_cluster(reply) if whole else render_ps(reply)


def _simple(command: str, timeout: float = 60.0) -> Callable[..., None]:
    @with_nats
    def run(service: str, nats_url: str | None, token: str | None, creds: str | None) -> None:
        async def go() -> dict[str, Any]:
            async with ControlClient(nats_url, token, creds) as client:
                return await client.call(command, timeout=timeout, service=service)

        click.echo(_run(go())["message"])

    return run


cli.command("stop", help="Drain SERVICE and stop it; it answers 503 with Retry-After until started.")(
    click.argument("service")(_simple("stop", timeout=120.0)))
cli.command("start", help="Turn SERVICE back on.")(click.argument("service")(_simple("start", timeout=120.0)))


@cli.command()
@click.argument("service", required=False)
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines.")
@click.option("-n", "--lines", type=int, default=200, show_default=True)
@with_nats
def logs(service: str | None, follow: bool, lines: int, nats_url: str | None, token: str | None, creds: str | None) -> None:
    """Worker output (tagged by release and worker) and node events."""

    async def go() -> None:
        async with ControlClient(nats_url, token, creds) as client:
            reply = await client.call("logs", service=service, lines=lines)
            for line in reply["lines"]:
                click.echo(line)
            if not follow:
                return
            assert client.nc is not None

            async def on_line(msg: Any) -> None:
                click.echo(msg.data.decode())

            # Ctrl-C ends the follow as a normal return (then a bounded close), not as a
            # KeyboardInterrupt or cancellation somewhere inside the NATS client.
            with Interrupt() as interrupt:
                await client.nc.subscribe(logs_subject(client.node_id, service or ""), cb=on_line)
                await interrupt.event.wait()

    try:
        _run(go())
    except KeyboardInterrupt:
        pass


@cli.command()
@with_nats
def down(nats_url: str | None, token: str | None, creds: str | None) -> None:
    """Stop the node: stop accepting, drain (bounded), stop workers and the embedded NATS."""

    async def go() -> tuple[dict[str, Any], str]:
        async with ControlClient(nats_url, token, creds) as client:
            return await client.call("down"), client.node_id

    home = home_dir()
    record = _local_record()
    reply, target = _run(go())
    click.echo(reply["message"])
    # The node of this home (also when reached through --nats / ANYCORE_NATS): its lock is
    # free exactly when its process is gone, so `down` returning means down. A remote
    # node's process cannot be watched from here.
    if record.get("node_id") != target or not lock_held(home):
        return
    pid = int(record.get("pid", 0))
    deadline = time.monotonic() + DOWN_BOUND
    while (lock_held(home) or (pid and _running(pid))) and time.monotonic() < deadline:
        time.sleep(0.02)
    if lock_held(home):
        click.echo(f"anycore: the node (pid {pid}) is still shutting down after {DOWN_BOUND:.0f}s; "
                   f"see `anycore logs` or stop it with `kill {pid}`", err=True)
        sys.exit(EXIT_FAILED)
    click.echo("node stopped")


def _local_record() -> dict[str, Any]:
    try:
        return local_node()
    except AnycoreError:
        return {}


DOWN_BOUND = 60.0


def _running(pid: int) -> bool:
    """True while ``pid`` runs; a zombie (exited, not yet reaped by its parent) is not running."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


# -- releases -----------------------------------------------------------------------------

def _report(event: dict[str, Any]) -> None:
    if event["phase"] == "done":
        click.echo(f"{event['release']} is live on every serving worker ({event['elapsed']:.2f}s)")
    elif event["phase"] == "noop":
        click.echo(f"no change: {event['detail']}")
    else:
        click.echo(f"anycore: deploy of {event['release']} failed in phase {_failed_phase(event)}: {event['error']}", err=True)
        if event.get("traceback"):
            click.echo(event["traceback"].rstrip(), err=True)
        click.echo(f"anycore: {event['previous'] or 'nothing'} keeps serving as before", err=True)
        sys.exit(1)


def _failed_phase(event: dict[str, Any]) -> str:
    return list(event["timings"])[-1] if event["timings"] else "fetch"


@cli.command()
@click.argument("path")
@click.option("--name", help="Service name (default: anycore.toml's name, else the directory name).")
@click.option("--detach", is_flag=True, help="Return once the node accepted the deploy; see `anycore releases`.")
@with_nats
def deploy(path: str, name: str | None, detach: bool, nats_url: str | None, token: str | None, creds: str | None) -> None:
    """Upload PATH as a release and swap it in while the service serves."""
    import msgspec

    from anycore.release.bundle import pack, release_id
    from anycore.release.store import CodeStore, ReleaseRecord, now

    service = load_service(path)
    config = msgspec.structs.replace(service.config, name=name) if name else service.config
    data = pack(service.directory)
    record = ReleaseRecord(id=release_id(service.directory, config), service=config.name, config=config,
                           source=service.directory, created_at=now())

    async def upload(store: CodeStore) -> None:
        await store.put_bundle(record.id, data)
        existing = await store.get_release(record.id)
        if existing is not None:
            record.migrated, record.deployed_at = existing.migrated, existing.deployed_at
        await store.put_release(record)

    async def go() -> dict[str, Any]:
        with Interrupt() as interrupt:
            try:
                client = await interrupt.race(ControlClient(nats_url, token, creds, reconnect=True).__aenter__())
            except Interrupted:
                interrupted_before_sending()
            try:
                assert client.nc is not None
                try:
                    store = await interrupt.race(CodeStore(client.nc.jetstream(), None).open())
                    try:
                        await interrupt.race(upload(store))
                    except StorageError as exc:
                        # JetStream keeps a stream's write error until its server restarts: if the
                        # disk takes writes again, the node restarts it; then one more try.
                        try:
                            await interrupt.race(client.call("recover", timeout=30))
                        except ControlError:
                            raise exc from None
                        await interrupt.race(upload(store))
                except Interrupted:
                    interrupted_before_sending()
                return await follow(client, interrupt, "deploy", release=record.id, source=service.directory,
                                    detach=detach)
            finally:
                await client.__aexit__()

    event = _run(go())
    if detach:
        click.echo(f"deploy {event['id']} of {event['release']} started; follow it with `anycore releases {config.name}`")
        return
    _report(event)


@cli.command()
@click.argument("service")
@click.option("--to", "to", help="Release id to go back to (default: the previous one).")
@with_nats
def rollback(service: str, to: str | None, nats_url: str | None, token: str | None, creds: str | None) -> None:
    """Go back to a kept release of SERVICE, from cache."""

    async def go() -> dict[str, Any]:
        async with ControlClient(nats_url, token, creds) as client:
            with Interrupt() as interrupt:
                return await follow(client, interrupt, "rollback", service=service, to=to)

    _report(_run(go()))


@cli.command()
@click.argument("service")
@click.option("--min", "low", type=int, help="Fewest workers (0: scale to zero).")
@click.option("--max", "high", type=int, help="Most workers.")
@with_nats
def scale(service: str, low: int | None, high: int | None, nats_url: str | None, token: str | None, creds: str | None) -> None:
    """Change SERVICE's worker limits at run time (no restart, not a deploy)."""
    if low is None and high is None:
        raise click.UsageError("give --min, --max or both")

    async def go() -> dict[str, Any]:
        async with ControlClient(nats_url, token, creds) as client:
            return await client.call("scale", service=service, min=low, max=high)

    click.echo(_run(go())["message"])


def _query(command: str, as_json: bool, nats_url: str | None, token: str | None, creds: str | None,
           **args: Any) -> dict[str, Any] | None:
    """The node's answer to ``command``; with ``--json`` it is printed here and None returned."""

    async def go() -> dict[str, Any]:
        async with ControlClient(nats_url, token, creds) as client:
            return await client.call(command, **args)

    reply = _run(go())
    if as_json:
        click.echo(json.dumps(reply, indent=2))
        return None
    return reply


@cli.command()
@click.argument("service", required=False)
@click.option("--json", "as_json", is_flag=True)
@with_nats
def releases(service: str | None, as_json: bool, nats_url: str | None, token: str | None, creds: str | None) -> None:
    """Kept releases of SERVICE (live one marked), deploys in progress, failed releases."""
    reply = _query("releases", as_json, nats_url, token, creds, service=service)
    if reply is None:
        return
    from anycore.cli.render import render_releases

    render_releases(reply)


@cli.command("env")
@click.argument("service")
@click.option("--json", "as_json", is_flag=True)
@with_nats
def env_command(service: str, as_json: bool, nats_url: str | None, token: str | None, creds: str | None) -> None:
    """The Python environment of SERVICE's live release: interpreter and packages."""
    reply = _query("env", as_json, nats_url, token, creds, service=service)
    if reply is None:
        return
    if not reply["env"]:
        click.echo(f"{reply['release']} declares no dependencies: it runs on the node's environment ({reply['python']})")
        return
    click.echo(f"{reply['release']} runs on environment {reply['env']} ({reply['python']}, "
               f"{len(reply['packages'])} packages, {reply['size_mib']} MiB; runtime {', '.join(reply['runtime'])})")
    for package in reply["packages"]:
        click.echo(f"  {package}")


@cli.command()
@click.argument("path")
@click.option("--listen", default="127.0.0.1:8000", show_default=True)
@with_log_options
@gateway_option
@admin_option
@with_env_options
@edge_options
def dev(path: str, listen: str, access_log: str | None, log_format: str, gateway: str, gateway_threads: int | None,
        admin: str | None, service_user: str,
        index_url: str, extra_index_urls: tuple[str, ...], find_links: tuple[str, ...], no_index: bool, edge: Edge) -> None:
    """Serve PATH and deploy a new release on every saved change (hot swap, no restart)."""
    from anycore.gateway.http import Limits
    from anycore.node.node import Node

    service = load_service(path)  # a ConfigError becomes one line and exit 2 in main()
    limits = Limits(**edge.limits(gateway))
    admin_address, admin_fallback = _admin(admin)
    node = Node(home_dir(), _listen(listen), access_log=access_log, watch=path, limits=limits,
                index=_index(index_url, extra_index_urls, find_links, no_index), service_user=service_user,
                log_format=log_format, admin=admin_address, admin_fallback=admin_fallback, gateway=gateway,
                gateway_threads=gateway_threads or 0)
    sys.exit(_run(node.run([service])))


from anycore.cli.call import register as _register_call  # noqa: E402
_register_call(cli, with_nats, _run)
cli.add_command(jobs_command(with_nats, _query))  # `anycore jobs` (cli/jobs.py)


def main() -> None:
    """Run the CLI; every error ends here as one line and an exit code (see the module doc)."""
    import os

    try:
        cli(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("anycore: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        click.echo("anycore: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except AnycoreError as exc:
        click.echo(f"anycore: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except OSError as exc:
        click.echo(f"anycore: {StorageError.from_os('the command', exc)}", err=True)
        sys.exit(EXIT_USAGE)
    except Exception as exc:  # a bug: still one line, the traceback on demand
        if os.environ.get("ANYCORE_DEBUG"):
            raise
        click.echo(f"anycore: internal error: {exc!r} — please report it (ANYCORE_DEBUG=1 shows the traceback)", err=True)
        sys.exit(EXIT_BUG)


cli.add_command(top_command)  # anycore top (cli/top.py)


if __name__ == "__main__":
    main()
