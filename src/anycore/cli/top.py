"""L3 — ``anycore top``: the dashboard's live picture in a terminal, for a machine without
a browser.

It reads the admin listener's ``/api/state`` (the address from ``$ANYCORE_HOME/node.json``
``admin``, or ``--admin URL``) once a second: the first read carries the history, later
ones ``?since=<seq>`` only what is new, so a long-running top costs the node the same as
a dashboard tab. ``Picture`` keeps what it was sent (bounded: a minute of req/s per
release for the sparklines, the last events) and ``render`` turns it into rich tables; both
are pure, the loop around them only fetches and prints. With ``--once`` it prints one
picture and exits (as do ``--iterations N`` after N); output that is not a terminal gets
plain successive pictures instead of a redrawn screen.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any

from typing import TYPE_CHECKING

import click

from anycore.errors import AnycoreError

if TYPE_CHECKING:
    from rich.console import Group
    from rich.text import Text

SPARK = " ▁▂▃▄▅▆▇█"
SPARK_POINTS = 60
EVENTS_SHOWN = 10
FETCH_BOUND = 5.0
STATE_COLOURS = {"ready": "green", "running": "green", "live": "green", "starting": "yellow", "draining": "bright_black",
                 "stopped": "red", "failed": "red", "hung": "red", "crashlooping": "red"}
KIND_COLOURS = {"deploy": "cyan", "crash": "red", "scale": "bright_cyan", "rollback": "dark_orange", "cluster": "magenta",
                "node": "white", "info": "bright_black"}


class AdminUnreachable(AnycoreError):
    pass


def admin_url(given: str | None) -> str:
    """The admin listener's base URL: ``--admin`` (``HOST:PORT`` or a URL), else node.json's."""
    if given:
        return given.rstrip("/") if "://" in given else f"http://{given}"
    from anycore.cluster.control import home_dir, local_node

    url = local_node().get("admin")
    if not url:
        raise AdminUnreachable(f"the node under {home_dir()} has no admin listener (started with --admin off?) — "
                               "restart it with --admin HOST:PORT, or pass `anycore top --admin URL`")
    return str(url).rstrip("/")


def fetch(url: str, since: int, token: str | None) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}/api/state?since={since}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=FETCH_BOUND) as answer:
            return json.loads(answer.read())  # type: ignore[no-any-return]
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise AdminUnreachable(f"{url} wants the node's token: pass --token (or set ANYCORE_TOKEN)") from None
        if exc.code == 404:
            raise AdminUnreachable(f"{url} has no dashboard state (/api/state): is it an anycore admin listener?") from None
        raise AdminUnreachable(f"{url}/api/state answered {exc.code}: {exc.read()[:200].decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(f"cannot read {url}/api/state: {reason} — is the node running? "
                               "(`anycore top --admin HOST:PORT` names its admin listener)") from None


class Picture:
    """What top has been told so far: the last state, a minute of req/s per release, the
    last events."""

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.seq = 0
        self.rps: dict[tuple[str, str], deque[float]] = {}
        self.events: deque[dict[str, Any]] = deque(maxlen=EVENTS_SHOWN)

    def update(self, state: dict[str, Any]) -> None:
        if state.get("full"):
            self.rps.clear()
            self.events.clear()
        self.state = state
        self.seq = int(state.get("seq", 0))
        for series in state.get("series", []):
            key = (series["service"], series["release"])
            points = self.rps.setdefault(key, deque(maxlen=SPARK_POINTS))
            points.extend(p[2] for p in series["points"])
        self.events.extend(state.get("events", []))


def sparkline(values: deque[float] | list[float]) -> str:
    top = max(values, default=0.0)
    if top <= 0:
        return SPARK[1] * len(values)
    return "".join(SPARK[max(1, round(v / top * (len(SPARK) - 1)))] if v > 0 else SPARK[1] for v in values)


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    return f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _styled(text: str) -> "Text":
    from rich.text import Text

    return Text(text, style=STATE_COLOURS.get(text, ""))


def render(picture: Picture) -> "Group":
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    state = picture.state
    snap = state.get("snapshot") or {}
    rates = {(r["service"], r["release"]): r for r in state.get("rates", [])}
    when = time.strftime("%H:%M:%S", time.localtime(state.get("t", time.time())))
    header = Text.assemble(("anycore top", "bold"), f"  node {snap.get('node', '?')}  gateway {snap.get('gateway', '?')}  ",
                           f"{snap.get('connections', 0)} connections  {when}")
    services = Table("service", "state", "release", "req/s", "5xx/s", "p50", "p99", "in flight", "queued", "served",
                     "rejected", "last minute (req/s)", title="services", title_justify="left")
    workers = Table("service", "worker", "release", "state", "in flight/slots", "served", "CPU", "RSS MiB", "uptime", "pid",
                    title="workers", title_justify="left")
    for svc in snap.get("services", []):
        name = svc["name"]
        mine = [key for key in rates if key[0] == name]
        rps = sum(rates[k]["rps"] for k in mine)
        eps = sum(rates[k]["eps"] for k in mine)
        live = rates.get((name, svc.get("release", "")), {})
        spark = picture.rps.get((name, svc.get("release", "")), deque())
        services.add_row(name, _styled(svc.get("state", "")), svc.get("release") or "-", f"{rps:.1f}",
                         Text(f"{eps:.1f}", style="red" if eps else ""), _ms(live.get("p50")), _ms(live.get("p99")),
                         str(svc.get("inflight", 0)), Text(str(svc.get("queued", 0)), style="yellow" if svc.get("queued") else ""),
                         str(svc.get("served", 0)), Text(str(svc.get("rejected", 0)), style="red" if svc.get("rejected") else ""),
                         Text(sparkline(spark), style="cyan"))
        releases = [(svc.get("live"), False), *((d, True) for d in svc.get("draining", []))]
        for release, draining in releases:
            for w in (release or {}).get("workers", []):
                state_text = "draining" if draining and w["state"] == "ready" else w["state"]
                workers.add_row(name, f"#{w['id']}", w["release"], _styled(state_text), f"{w['inflight']}/{w['slots']}",
                                str(w.get("served", 0)), f"{w.get('cpu', 0.0) * 100:.0f}%", f"{w.get('rss_mib', 0):.1f}",
                                f"{w.get('uptime', 0):.0f}s",
                                str(w.get("pid", "")))
    parts: list[Any] = [header, services, workers]
    cluster = snap.get("cluster")
    if cluster and cluster.get("peers"):
        peers = Table("peer", "gateway", "heartbeat", "load (in flight/slots, queued)", title="cluster", title_justify="left")
        for peer, info in sorted(cluster["peers"].items()):
            loads = info.get("services") or {s: {"free": n} for s, n in (info.get("free") or {}).items()}
            load = ", ".join(f"{s} {l['inflight']}/{l['slots']}" + (f" +{l['queued']} queued" if l.get("queued") else "")
                             if "slots" in l else f"{s} {l.get('free', 0)} free" for s, l in sorted(loads.items()))
            peers.add_row(peer, info.get("gateway", ""), f"{info.get('seen_s_ago', 0):.1f}s ago", load)
        parts.append(peers)
    events = Table("time", "service", "event", "", title="events", title_justify="left", show_header=False)
    for event in reversed(picture.events):
        fields = " ".join(f"{k}={v}" for k, v in event.get("fields", {}).items())
        events.add_row(time.strftime("%H:%M:%S", time.localtime(event["t"])), event.get("service", ""),
                       Text(event["event"], style=KIND_COLOURS.get(event.get("kind", ""), "")), fields)
    parts.append(events if picture.events else Text("no events yet", style="bright_black"))
    return Group(*parts)


@click.command()
@click.option("--admin", "admin", envvar="ANYCORE_ADMIN", metavar="URL",
              help="The node's admin listener (default: `admin` in $ANYCORE_HOME/node.json).")
@click.option("--token", envvar="ANYCORE_TOKEN", help="The node's token, for an admin listener off loopback.")
@click.option("--once", is_flag=True, help="Print the picture once and exit.")
@click.option("--iterations", "-n", type=click.IntRange(min=1), help="Exit after this many pictures.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=1.0, show_default=True, help="Seconds between pictures.")
def top(admin: str | None, token: str | None, once: bool, iterations: int | None, interval: float) -> None:
    """Services, releases, workers, rates and events of a node, live in the terminal."""
    from rich.console import Console

    url = admin_url(admin)
    if token is None and not admin:  # the local node's listener: its token is here, if it wants one
        from anycore.cluster.control import home_dir

        path = home_dir() / "token"
        token = path.read_text().strip() if path.exists() else None
    picture = Picture()
    console = Console(width=None if Console().is_terminal else 160)
    count = 1 if once else iterations
    shown = 0

    def step() -> "Group":
        nonlocal shown
        picture.update(fetch(url, picture.seq, token))
        shown += 1
        return render(picture)

    if count == 1 or not console.is_terminal:
        while count is None or shown < count:
            console.print(step())
            if count is None or shown < count:
                time.sleep(interval)
        return
    from rich.live import Live

    try:
        with Live(step(), console=console, screen=False, auto_refresh=False) as live:
            while count is None or shown < count:
                time.sleep(interval)
                live.update(step(), refresh=True)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how top ends
