"""L3 — human output for ``anycore ps``, ``ps --cluster`` and ``releases``."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def _scaler(info: dict[str, Any] | None) -> str:
    if not info:
        return ""
    text = f"{info['actual']}→{info['desired']} [{info['min']}..{info['max']}]"
    if info.get("reason"):
        text += (f" {info['reason']} (demand {info['demand']}, busy {info.get('busy', 0)} cores, "
                 f"need {info['stable_need']}/{info['panic_need']})")
    return text


def render_ps(reply: dict[str, Any]) -> None:
    console = Console(width=None if Console().is_terminal else 160)
    console.print(f"node [bold]{reply['node']}[/] (pid {reply['pid']}) gateway {reply['gateway']}, "
                  f"{reply['connections']} connections")
    services = Table("service", "state", "release", "workers", "inflight", "queued", "served", "rejected", "quarantined",
                     "scaler", "health")
    workers = Table("service", "worker", "pid", "release", "env", "state", "inflight", "websockets", "served", "restarts",
                    "cpu", "rss MiB", "uptime s")
    for svc in reply["services"]:
        live = svc["live"] or {}
        health = "crashlooping" if live.get("crashlooping") else ("failed: " + live["failure"] if live.get("failure") else "ok")
        if live.get("last_exit"):
            health += f" (last exit: {live['last_exit']})"
        services.add_row(svc["name"], svc["state"], svc["release"], str(len(live.get("workers", []))),
                         str(svc["inflight"]), str(svc["queued"]), str(svc["served"]), str(svc["rejected"]),
                         str(svc["quarantined"]), _scaler(live.get("scaler")), health)
        for release in [live, *svc.get("draining", [])]:
            for w in release.get("workers", []):
                workers.add_row(svc["name"], str(w["id"]), str(w["pid"]), w["release"], w.get("env", "node"),
                                w["state"], f"{w['inflight']}/{w['slots']}",
                                str(w.get("websockets", 0)), str(w["served"]), str(release.get("restarts", 0)),
                                f"{w.get('cpu', 0.0) * 100:.0f}%", str(w["rss_mib"]), str(w["uptime"]))
    cluster = reply.get("cluster")
    if cluster and cluster["peers"]:
        console.print(f"cluster: {len(cluster['peers'])} peer(s) {', '.join(sorted(cluster['peers']))}; "
                      f"spilled to peers {cluster['spilled']}, run for peers {cluster['accepted']}")
    console.print(services)
    console.print(workers)
    for svc in reply["services"]:
        moved, recovered = svc.get("sessions_moved", 0), svc.get("sessions_recovered", 0)
        if svc.get("websockets") or moved or recovered:
            console.print(f"{svc['name']}: {svc.get('websockets', 0)} WebSockets open; sessions moved {moved}, "
                          f"recovered after a crash {recovered}")
        for failure in svc.get("failed", []):
            console.print(f"[red]failed release[/] {failure['release']}: {failure['reason']}")
        if svc.get("rolled_back"):
            console.print(f"[yellow]rolled back[/] {svc['rolled_back']}")


def render_cluster(reply: dict[str, Any]) -> None:
    import time

    console = Console(width=None if Console().is_terminal else 160)
    table = Table("node", "gateway", "service", "release", "workers", "free/slots", "inflight", "queued", "heartbeat")
    for node in reply["nodes"]:
        age = f"{max(0.0, time.time() - node['sent_at']):.1f}s ago" + (" (leaving)" if node["leaving"] else "")
        services = node["services"] or {"-": None}
        for name, load in services.items():
            if load is None:
                table.add_row(node["node"], node["gateway"], "-", "", "", "", "", "", age)
                continue
            table.add_row(node["node"], node["gateway"], name, load["release"] or "stopped", str(load["workers"]),
                          f"{load['free']}/{load['slots']}", str(load["inflight"]), str(load["queued"]), age)
    console.print(f"{len(reply['nodes'])} node(s)")
    console.print(table)


def render_releases(reply: dict[str, Any]) -> None:
    import time

    console = Console(width=None if Console().is_terminal else 160)
    table = Table("release", "live", "deployed", "from", "cached", "env (hash, packages, size)")
    for r in reply["releases"]:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["deployed_at"])) if r["deployed_at"] else "-"
        env = r.get("env")
        env_text = f"{env['hash']}, {env['packages']} pkgs, {env['size_mib']} MiB" if env else "node"
        table.add_row(r["id"], "*" if r["live"] else "", when, r["source"], "yes" if r["cached"] else "no", env_text)
    console.print(table)
    for d in reply["deploys"]:
        if d["phase"] not in ("done", "noop"):
            console.print(f"deploy {d['id']} of {d['release']}: {d['phase']} {d['detail']} {d['error']}".rstrip())
    for f in reply["failed"]:
        console.print(f"failed: {f['release']}: {f['reason']}")
    if reply.get("rolled_back"):
        console.print(f"auto-rollback: {reply['rolled_back']}")
