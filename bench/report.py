"""Renders a run's JSON (see run.py) as the Markdown report: headline ratios first, then each scenario.

Every figure is a median over the run's rounds unless said otherwise; ratios are taken
against uvicorn, the reference every other system is put next to. Nothing is hidden: a system
that failed or could not run shows up with its error text, and the load on the machine is
given for every measured run.
"""

from __future__ import annotations

import math
from typing import Any

from common import median

ORDER = ["anycore", "uvicorn", "gunicorn", "ray"]
LABEL = {"anycore": "anycore", "uvicorn": "uvicorn", "gunicorn": "gunicorn", "ray": "Ray Serve"}
DESCR = {
    "anycore": "`anycore up --gateway python`, `workers = 2` (node + embedded nats-server + zygote template + zygote + 2 workers)",
    "uvicorn": "`uvicorn --workers 2 --loop uvloop --http httptools`",
    "gunicorn": "`gunicorn -k uvicorn.workers.UvicornWorker -w 2`",
    "ray": "2 replicas (`num_cpus=0`) of a deployment that calls the same ASGI app, behind Serve's HTTP proxy on 127.0.0.1",
}


def f(x: Any, digits: int = 2, unit: str = "") -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}{unit}"


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or not b or math.isnan(a) or math.isnan(b):
        return "–"
    r = a / b
    return f"{r:.2f}×" if r >= 0.1 or r == 0 else f"{r:.2g}×"


def systems_in(rows: list[dict[str, Any]]) -> list[str]:
    present = {r["system"] for r in rows}
    return [s for s in ORDER if s in present]


def med(rows: list[dict[str, Any]], key: str, **where: Any) -> float | None:
    xs = [r[key] for r in rows if all(r.get(k) == v for k, v in where.items()) and r.get(key) is not None]
    return median(xs) if xs else None


def rng(rows: list[dict[str, Any]], key: str, scale: float = 1.0, digits: int = 2, **where: Any) -> str:
    xs = [r[key] * scale for r in rows if all(r.get(k) == v for k, v in where.items()) and r.get(key) is not None]
    if len(xs) < 2:
        return ""
    return f" ({min(xs):.{digits}f}–{max(xs):.{digits}f})"


def render(data: dict[str, Any], stem: str, pngs: list[str]) -> str:
    meta, sc = data["meta"], data["scenarios"]
    out: list[str] = []
    out += header(meta, sc)
    out += headline(sc)
    sections = [("throughput", throughput), ("swap", swap), ("crash", crash), ("cold", cold), ("memory", memory),
                ("websocket", websocket), ("wsswap", wsswap), ("wsgi", wsgi), ("native", native)]
    for name, fn in sections:
        if name in sc:
            out += fn(sc[name])
            out += [f"![{name}]({stem}/{p})" for p in pngs if p.startswith(name)] + [""]
            out += failures(sc[name])
    out += raw(sc)
    return "\n".join(out) + "\n"


def header(meta: dict[str, Any], sc: dict[str, Any]) -> list[str]:
    v = meta["versions"]
    mode = meta["mode"]
    loads = [r["load_before"] for s in sc.values() for r in s.get("rows", []) if "load_before" in r]
    ls, le = meta["load_start"], meta["load_end"]
    out = [
        f"# anycore vs uvicorn, gunicorn and Ray Serve — {meta['started']}",
        "",
        f"`python3 bench/run.py{' --quick' if mode['name'] == 'quick' else ''}`, {mode['name']} mode: "
        f"{mode['rounds']} round(s) per scenario with the systems taking turns (ABAB: each round reverses the "
        f"order), {mode['duration']:g} s per measured run after {mode['warmup']:g} s of warm-up, wrk at "
        f"c={', '.join(str(c) for c in data_connections(sc))}; "
        f"took {meta['duration_s'] / 60:.1f} min{' (interrupted: partial)' if meta.get('interrupted') else ''}."
        + (" The report was rendered again from the stored figures (`run.py --render`, nothing re-measured)."
           if meta.get("rerendered") else ""),
        "",
        f"Machine: {meta['cpus']} cores, {meta['mem_total_mib'] / 1024:.1f} GiB, {meta['machine']}, Python {meta['python']}. "
        "Versions (each system's venv): " + "; ".join(
            f"{LABEL[n]}: " + ", ".join(f"{k} {ver}" for k, ver in v[n].items()) for n in ORDER if v.get(n)) + ".",
        "",
        "Systems: " + "; ".join(f"{LABEL[n]}: {DESCR[n]}" for n in ORDER if n in meta["systems"]) + ".",
        "",
        "**Noise.** This machine is shared: other agents ran test suites during the run. Load average "
        f"(1/5/15 min) at the start {ls[0]:.2f}/{ls[1]:.2f}/{ls[2]:.2f}, at the end {le[0]:.2f}/{le[1]:.2f}/{le[2]:.2f}"
        + (f"; before each measured run {min(loads):.2f}–{max(loads):.2f} (median {median(loads):.2f})" if loads else "")
        + f". On {meta['cpus']} cores the system under test plus its client alone make a load of about 2, so anything "
        "above ~2.5 is someone else's work taking CPU from the run. " + spread(sc) + " Compare systems only within "
        "this report (they shared the same noise, in alternating order), and read ratios, not absolute figures.",
        "",
    ]
    ray = meta.get("ray", {})
    if ray.get("error"):
        out += ["**Ray Serve could not run here**, so its columns are empty. The error:", "", "```",
                ray["error"].strip()[-2500:], "```", ""]
    elif ray.get("ready"):
        out += [f"Ray {ray.get('ray', '')} started in {ray.get('wall_s', 0):.1f} s (bounded at {ray.get('start_timeout', 180):g} s). One Ray instance "
                "serves every Ray turn of the run; between its turns its app is deleted and only its daemons stay: "
                f"idle, they used {ray.get('idle_cpu_share', 0) * 100:.0f} % of a core and "
                f"{ray.get('idle_pss_mib', 0):.0f} MiB (PSS), a small extra load on the other systems' turns. "
                "Ray is stopped (serve.shutdown, ray.shutdown, then any process left of its tree) at the end.", ""]
    return out


def data_connections(sc: dict[str, Any]) -> list[int]:
    return sc.get("throughput", {}).get("connections", [])


def spread(sc: dict[str, Any]) -> str:
    rows = sc.get("throughput", {}).get("rows", [])
    spreads = []
    for key in {(r["app"], r["c"], r["system"]) for r in rows}:
        xs = [r["rps"] for r in rows if (r["app"], r["c"], r["system"]) == key]
        if len(xs) >= 2 and median(xs):
            spreads.append((max(xs) - min(xs)) / median(xs))
    if not spreads:
        return "With one round per system there is no round-to-round spread to show (quick mode)."
    return (f"Round-to-round spread of one system's req/s at one setting, (max − min) / median: median "
            f"{median(spreads) * 100:.0f} %, worst {max(spreads) * 100:.0f} %.")


def headline(sc: dict[str, Any]) -> list[str]:
    peers = ["anycore", "gunicorn", "ray"]
    out = ["## Headline: ratios to uvicorn", "",
           "Each cell is the system's median divided by uvicorn's median in the same run. req/s and msg/s: higher is "
           "better; latency, time and memory: lower is better.", "",
           "| scenario | figure | " + " | ".join(LABEL[p] for p in peers) + " | uvicorn |", "|---|---|" + "---|" * (len(peers) + 1)]

    def line(scenario: str, figure: str, values: dict[str, float | None], unit: str, digits: int) -> None:
        u = values.get("uvicorn")
        out.append(f"| {scenario} | {figure} | " + " | ".join(ratio(values.get(p), u) for p in peers)
                   + f" | {f(u, digits, unit)} |")

    t = sc.get("throughput", {})
    for app in t.get("apps", []):
        for c in t.get("connections", []):
            rows = [r for r in t["rows"] if r["app"] == app and r["c"] == c]
            line("throughput", f"{app} c={c} req/s", {s: med(rows, "rps", system=s) for s in ORDER}, " req/s", 0)
            line("latency", f"{app} c={c} p99", {s: med(rows, "p99", system=s) for s in ORDER}, " ms", 2)
    rows = sc.get("cold", {}).get("rows", [])
    if rows:
        line("cold", "first answer from zero (uvicorn: a new process)",
             {s: (None if (m := med(rows, "cold_s", system=s)) is None else m * 1000) for s in ORDER}, " ms", 1)
    rows = sc.get("memory", {}).get("rows", [])
    if rows:
        uss = {r["system"]: median([w["uss"] for w in r["workers"]]) if r["workers"] else None for r in rows}
        line("memory", "USS per worker (FastAPI)", uss, " MiB", 1)
        line("memory", "PSS of all processes", {r["system"]: r["total"]["pss"] for r in rows}, " MiB", 0)
    rows = sc.get("websocket", {}).get("rows", [])
    if rows:
        u = med(rows, "msgs_per_s", system="uvicorn")
        for variant in ("ASGI websocket", "Session"):
            line("websocket", f"echo msg/s, anycore {variant}", {"anycore": med(rows, "msgs_per_s", system="anycore", variant=variant),
                                                               "uvicorn": u}, " msg/s", 0)
    out += ["", "Events, in absolute figures (errors are counts: zero is the goal; a ratio of two small times says "
            "little). Median over rounds, the worst round in brackets:", "",
            "| event | figure | " + " | ".join(LABEL[s] for s in ORDER) + " |", "|---|---|" + "---|" * len(ORDER)]
    for name, key, event, figure, digits, unit in [
        ("swap", "errors", "code swap under load", "errors seen by clients", 0, ""),
        ("swap", "new_code_s", "code swap under load", "time until 100 % of answers come from the new code", 2, " s"),
        ("crash", "errors", "kill -9 of a worker under load", "errors seen by clients", 0, ""),
        ("crash", "replaced_s", "kill -9 of a worker under load", "replacement process started after", 3, " s"),
        ("crash", "capacity_back_s", "kill -9 of a worker under load", "capacity back after (see section 3)", 2, " s"),
    ]:
        rows = sc.get(name, {}).get("rows", [])
        if rows:
            cells = []
            for s in ORDER:
                xs = [r[key] for r in rows if r["system"] == s]
                if not xs:
                    cells.append("–")
                    continue
                known = [x for x in xs if x is not None]
                worst = "never" if len(known) < len(xs) else f"{max(known):.{digits}f}"
                cells.append(f"{median(known):.{digits}f}{unit} ({worst})" if known else "never")
            out.append(f"| {event} | {figure} | " + " | ".join(cells) + " |")
    rows = sc.get("wsswap", {}).get("rows", [])
    if rows:
        by = {r["system"]: r for r in rows}
        cells = [f"{by[s]['dropped']} of {sc['wsswap'].get('clients', 50)}" if s in by else "–" for s in ORDER]
        out.append("| open WebSockets through a code swap | connections lost (anycore: Sessions, several deploys) | "
                   + " | ".join(cells) + " |")
    return out + [""]


def throughput(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", [])
    out = ["## 1. Throughput and latency", "",
           f"Two apps, each with 2 workers: `hello` (bare ASGI hello world: measures the server) and `cpu1ms` (a fixed "
           f"{s.get('cpu_iters', '?')} iterations of pure-Python work, ~1 ms of CPU calibrated on this machine, same "
           "count for every system). Load: `wrk -t1 -cN --latency --timeout 5s` on 127.0.0.1. Server CPU per request "
           "counts every process of the system (Ray: its daemons too) in core-µs. Socket errors are mostly wrk "
           "timeouts (> 5 s), which wrk leaves out of its percentiles.", "",
           "| app | c | system | req/s | vs uvicorn | p50 ms | p90 ms | p99 ms | p99 vs uvicorn | CPU µs/req | socket errors | non-2xx |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for app in s.get("apps", []):
        for c in s.get("connections", []):
            sel = [r for r in rows if r["app"] == app and r["c"] == c]
            u_rps, u_p99 = med(sel, "rps", system="uvicorn"), med(sel, "p99", system="uvicorn")
            for name in systems_in(sel):
                rps, p99 = med(sel, "rps", system=name), med(sel, "p99", system=name)
                out.append(f"| {app} | {c} | {LABEL[name]} | {f(rps, 0)}{rng(sel, 'rps', digits=0, system=name)} | "
                           f"{ratio(rps, u_rps)} | {f(med(sel, 'p50', system=name))} | {f(med(sel, 'p90', system=name))} | "
                           f"{f(p99)} | {ratio(p99, u_p99)} | {f(med(sel, 'cpu_us_per_req', system=name), 0)} | "
                           f"{f(med(sel, 'sockerr', system=name), 0)} | {f(med(sel, 'non2xx', system=name), 0)} |")
    return out + [""]


def swap(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", [])
    out = ["## 2. Code swap under load", "",
           f"App `version` (answers \"A\") with 2 workers under {s.get('connections', 16)} keep-alive connections of the "
           "timeline client (asyncio, one process; it records when each answer came and which code gave it). 2 s in "
           "(quick mode: 1.5 s), "
           "app.py is rewritten to answer \"B2\" and the swap starts: `anycore deploy` (CLI start, upload, import, "
           "warm, shift, drain), `kill -HUP` to gunicorn's master and to uvicorn's supervisor, a Ray Serve `serve.run` "
           "with a new version. *Time to 100 % new code*: from the start of the swap until every answer is B2. "
           "*Command*: until the swap command returned (anycore: `deploy` exits 0 once every worker runs the new "
           "release; Ray: `serve.run` returned).", "",
           "| system | errors per swap | error kinds | time to 100 % new code (s) | command (s) | requests in the run |",
           "|---|---|---|---|---|---|"]
    for name in systems_in(rows):
        sel = [r for r in rows if r["system"] == name]
        kinds = merge_kinds(sel)
        out.append(f"| {LABEL[name]} | {f(med(sel, 'errors'), 0)}{rng(sel, 'errors', digits=0)} | {kinds} | "
                   f"{f(med(sel, 'new_code_s'))}{rng(sel, 'new_code_s')}"
                   f"{' (never, in some round)' if any(r['new_code_s'] is None for r in sel) else ''} | "
                   f"{f(med(sel, 'command_s'))} | {f(med(sel, 'requests'), 0)} |")
    return out + ["", "Timelines (one round per system): answers per second by code version, errors per second in "
                  "red; the dashed line is the start of the swap, the dotted one the moment 100 % of answers are new.", ""]


def merge_kinds(rows: list[dict[str, Any]]) -> str:
    kinds: dict[str, int] = {}
    for r in rows:
        for k, n in r.get("error_kinds", {}).items():
            kinds[k] = kinds.get(k, 0) + n
    return ", ".join(f"{k} ×{n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])) or "none"


def crash(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", [])
    out = ["## 3. Crash under load (kill -9 of one worker)", "",
           f"App `cpu1ms` with 2 workers (the server, not the client, is the limit) under {s.get('connections', 16)} "
           "connections of the timeline client; 2 s in (quick mode: 1.5 s), one worker gets SIGKILL. *Replacement*: until a new worker "
           "process exists (a new child of the killed one's parent; Ray: a process newly titled ServeReplica, which Serve "
           "starts once its controller sees the replica dead: its health check runs every 10 s by default). "
           "*Capacity back*: the end of the dip: from the kill until the first 1 s window after the lowest one (the "
           "lowest of those starting within 2 s of the kill, where a dip it causes begins) that "
           f"serves ≥ {s.get('back_threshold', 0.8) * 100:.0f} % of the median rate before the kill (0 when not even the "
           "lowest fell below that: the surviving worker alone can carry much of what 2 cores give, with the client "
           "on the same cores). *Lowest 1 s rate*: that lowest window, relative to before; with this "
           "much noise on the machine, read it with the timelines. A dip that comes later is in the timelines but not "
           "in these figures: Ray Serve's proxy sends everything to the surviving replica, so the kill itself hardly "
           "shows, but starting the replacement replica ~10 s later takes the CPU for a moment. The uvicorn and gunicorn workers each own the keep-alive connections they accepted: the killed "
           "worker's clients reconnect to the survivor, so their rate after the kill depends on how the kernel "
           "had spread the 16 connections before (it can go up).", "",
           "| system | errors per kill | error kinds | replacement process after (s) | capacity back after (s) | lowest 1 s rate vs before |",
           "|---|---|---|---|---|---|"]
    for name in systems_in(rows):
        sel = [r for r in rows if r["system"] == name]
        never = any(r["capacity_back_s"] is None for r in sel)
        out.append(f"| {LABEL[name]} | {f(med(sel, 'errors'), 0)}{rng(sel, 'errors', digits=0)} | {merge_kinds(sel)} | "
                   f"{f(med(sel, 'replaced_s'), 3)} | {f(med(sel, 'capacity_back_s'))}{rng(sel, 'capacity_back_s')}"
                   f"{' (not within the run, in some round)' if never else ''} | "
                   f"{f(med(sel, 'dip_ratio'))} |")
    return out + ["", "Timelines (one round per system): answers and errors per second; the dashed line is the kill, "
                  "the dotted one the replacement process.", ""]


def cold(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", [])
    what = {"anycore": "request to a service scaled to zero (`min_workers = 0`): fork from the warm zygote",
            "uvicorn": "exec of `uvicorn app:app` until its first answer (no scale-to-zero: a new process)",
            "ray": "request to a deployment scaled to zero (autoscaling `min_replicas = 0`): Serve starts a replica"}
    out = ["## 4. Cold start", "", "Time of the first answer, measured by the client (a new connection each time), "
           "then the median of 5 warm requests right after.", "",
           "| system | what | first answer (ms) | warm (ms) | vs uvicorn |", "|---|---|---|---|---|"]
    u = med(rows, "cold_s", system="uvicorn")
    for name in systems_in(rows):
        c = med(rows, "cold_s", system=name)
        out.append(f"| {LABEL[name]} | {what[name]} | {f(c * 1000 if c is not None else None, 1)}"
                   f"{rng(rows, 'cold_s', 1000, 1, system=name)} | {f((med(rows, 'warm_s', system=name) or 0) * 1000, 1)} | "
                   f"{ratio(c, u)} |")
    return out + [""]


def memory(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", [])
    out = ["## 5. Memory (FastAPI app, 2 workers)", "",
           f"After {s.get('requests', 200)} requests. Per worker, from /proc/<pid>/smaps_rollup: RSS, and USS = Private_Clean + Private_Dirty "
           "(what that worker alone costs). anycore's workers are forked from a zygote that imported the app and "
           "froze the GC, so most of their pages stay shared. *All processes*: the PSS sum of every process of the "
           "system (shared pages counted once): anycore's node, nats-server, zygote template and zygote, gunicorn's master, uvicorn's "
           "supervisor, Ray's daemons.", "",
           "| system | RSS per worker (MiB) | USS per worker (MiB) | USS vs uvicorn | all processes: PSS (MiB) | processes |",
           "|---|---|---|---|---|---|"]
    by = {r["system"]: r for r in rows}
    u = by.get("uvicorn")
    u_uss = median([w["uss"] for w in u["workers"]]) if u and u["workers"] else None
    for name in systems_in(rows):
        r = by[name]
        uss = median([w["uss"] for w in r["workers"]]) if r["workers"] else None
        out.append(f"| {LABEL[name]} | {', '.join(f(w['rss'], 1) for w in r['workers'])} | "
                   f"{', '.join(f(w['uss'], 1) for w in r['workers'])} | {ratio(uss, u_uss)} | "
                   f"{f(r['total']['pss'], 0)} | {r['processes']} |")
    return out + [""]


def websocket(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", [])
    out = ["## 6. WebSocket echo", "",
           f"2 workers; the client keeps {s.get('connections', 32)} WebSockets open, each with {s.get('window', 8)} "
           "64-byte text messages in flight, and counts echoes per second (one Python process sharing the 2 cores). "
           "anycore: an echo `Session` (`[sessions] \"/session\" = \"app:Echo\"`: the gateway holds the socket, the "
           "session object lives in a worker) and a plain ASGI WebSocket echo, on the same node; uvicorn: the same "
           "ASGI echo with `--ws websockets`.", "",
           "| system | variant | echo msg/s | vs uvicorn | failed connections |", "|---|---|---|---|---|"]
    u = med(rows, "msgs_per_s", system="uvicorn")
    for name in systems_in(rows):
        for variant in sorted({r["variant"] for r in rows if r["system"] == name}):
            sel = [r for r in rows if r["system"] == name and r["variant"] == variant]
            m = med(sel, "msgs_per_s")
            out.append(f"| {LABEL[name]} | {variant} | {f(m, 0)}{rng(sel, 'msgs_per_s', digits=0)} | {ratio(m, u)} | "
                       f"{f(med(sel, 'errors'), 0)} |")
    return out + [""]


def wsswap(s: dict[str, Any]) -> list[str]:
    rows = s.get("rows", [])
    by = {r["system"]: r for r in rows}
    n = s.get("clients", 50)
    out = ["## 7. Open WebSockets through a code swap", "",
           f"{n} clients each send a message every 20 ms and time its echo. anycore: echo Sessions through "
           "`anycore deploy`s 1 s apart (the gateway keeps each socket; the session moves to the new release). "
           "uvicorn `SIGHUP`, gunicorn `HUP`: the reload replaces the workers that own the sockets.", "",
           "| system | swaps | connections lost | round trip before: p50 / p99 (ms) | during the swaps: p99 / worst (ms) | deploy command (s) |",
           "|---|---|---|---|---|---|"]
    for name in systems_in(rows):
        r = by[name]
        if name == "anycore":
            out.append(f"| {LABEL[name]} Session | {r['deploys']} deploys | {r['dropped']} of {n} | "
                       f"{r['base_p50_ms']:.1f} / {r['base_p99_ms']:.1f} | {r['deploy_p99_ms']:.1f} / {r['deploy_max_ms']:.1f} | "
                       f"{median(r['deploy_s']):.2f} (median) |")
        else:
            out.append(f"| {LABEL[name]} | 1 reload | {r['dropped']} of {n} | – | – | – |")
    return out + [""]


WSGI_DESCR = {
    "anycore": "`anycore up`, `workers = 2`, default slots; the app runs on anycore's WSGI runner",
    "gunicorn-sync": "`gunicorn -w 2` (sync workers)",
    "gunicorn-gthread": "`gunicorn -w 2 -k gthread --threads 8`",
    "granian": "`granian --interface wsgi --workers 2`",
}


def wsgi(s: dict[str, Any]) -> list[str]:
    """Scenario 8: each system's req/s against gunicorn gthread and granian, p99 against gunicorn sync."""
    rows = s.get("rows", [])
    out = ["## 8. WSGI: Flask and Django", "",
           "A Flask route returning a small JSON object (`flaskjson`) and a Django view rendering a template of 20 "
           "rows (`djangorows`), 2 workers per system, `wrk -t1 -cN --latency`. Goals (issue 17): ≥ 1.5× gunicorn "
           "gthread and ≥ 1.0× granian in req/s on Flask, p99 ≤ gunicorn sync's. CPU µs/req counts every process of "
           "the system; *main* is the first process alone (anycore: the node; gunicorn: the arbiter; granian: its "
           "main process).", ""]
    out += [f"- **{name}**: {WSGI_DESCR.get(name, f'anycore with `slots = {name[9:]}`' if name.startswith('anycore-s') else name)}"
            for name in s.get("systems", [])] + [""]
    out += ["| app | c | system | req/s | vs gthread | vs granian | p50 ms | p99 ms | p99 vs sync | CPU µs/req | main µs/req | non-2xx |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for app in s.get("apps", []):
        for c in s.get("connections", []):
            sel = [r for r in rows if r["app"] == app and r["c"] == c]
            gthread, granian = med(sel, "rps", system="gunicorn-gthread"), med(sel, "rps", system="granian")
            sync_p99 = med(sel, "p99", system="gunicorn-sync")
            for name in [n for n in s.get("systems", []) if any(r["system"] == n for r in sel)]:
                rps, p99 = med(sel, "rps", system=name), med(sel, "p99", system=name)
                out.append(f"| {app} | {c} | {name} | {f(rps, 0)}{rng(sel, 'rps', digits=0, system=name)} | "
                           f"{ratio(rps, gthread)} | {ratio(rps, granian)} | {f(med(sel, 'p50', system=name))} | "
                           f"{f(p99)} | {ratio(p99, sync_p99)} | {f(med(sel, 'cpu_us_per_req', system=name), 0)} | "
                           f"{f(med(sel, 'main_us_per_req', system=name), 0)} | {f(med(sel, 'non2xx', system=name), 0)} |")
    loads = [r["load_before"] for r in rows]
    if loads:
        out += ["", f"1-minute load average before the measured runs: {min(loads):.1f}–{max(loads):.1f} "
                "(2 cores: ~2 is this system and wrk alone; more is other work on the machine)."]
    return out + [""]


def native(s: dict[str, Any]) -> list[str]:
    """Scenario 9: the native gateway (issue 15) against the Python one, uvicorn, granian and nginx + uvicorn."""
    rows = s.get("rows", [])
    out = ["## 9. Native gateway (issue 15)", "",
           "hello, 1 ms of CPU and FastAPI, 2 workers per system, `wrk -t1 -cN --latency`. CPU µs/req counts every process of the "
           "system; *gateway* µs/req the processes doing its HTTP gateway's work (anycore: the node; anycore-native: "
           "anycore-gateway; nginx-uvicorn: nginx). Stage-1 gate: anycore-gateway ≤ 10 core-µs per hello request and "
           "anycore-native ≥ 1.0× uvicorn on hello at c=32 and c=256.", "",
           "| app | c | system | req/s | vs uvicorn | vs granian | p99 ms | p99 vs uvicorn | CPU µs/req | gateway µs/req | non-2xx |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for app in s.get("apps", []):
        for c in s.get("connections", []):
            sel = [r for r in rows if r["app"] == app and r["c"] == c]
            uvicorn, granian = med(sel, "rps", system="uvicorn"), med(sel, "rps", system="granian-asgi")
            uvicorn_p99 = med(sel, "p99", system="uvicorn")
            for name in [n for n in s.get("systems", []) if any(r["system"] == n for r in sel)]:
                rps, p99 = med(sel, "rps", system=name), med(sel, "p99", system=name)
                out.append(f"| {app} | {c} | {name} | {f(rps, 0)}{rng(sel, 'rps', digits=0, system=name)} | "
                           f"{ratio(rps, uvicorn)} | {ratio(rps, granian)} | {f(p99)} | {ratio(p99, uvicorn_p99)} | "
                           f"{f(med(sel, 'cpu_us_per_req', system=name), 1)} | "
                           f"{f(med(sel, 'gateway_us_per_req', system=name), 1)} | {f(med(sel, 'non2xx', system=name), 0)} |")
    gateway_us = med([r for r in rows if r["app"] == "hello"], "gateway_us_per_req", system="anycore-native")
    if gateway_us == gateway_us and gateway_us:  # not NaN
        per_thread = 1e6 / gateway_us
        out += ["", f"The largest node throughput the native gateway allows, from its cost per hello request "
                    f"({gateway_us:.1f} core-µs, the median over c and rounds): {per_thread:,.0f} req/s per gateway "
                    f"thread; it runs on half the cores (`--gateway-threads`), so {per_thread * 8:,.0f} req/s on a "
                    f"16-core machine and {per_thread * 32:,.0f} on 64 cores if it scaled linearly (not measured "
                    f"here: this machine has 2 cores)."]
    loads = [r["load_before"] for r in rows]
    if loads:
        out += ["", f"1-minute load average before the measured runs: {min(loads):.1f}–{max(loads):.1f}."]
    return out + [""]


def failures(s: dict[str, Any]) -> list[str]:
    out = []
    if s.get("failed"):
        out += [f"**This scenario failed:** `{s['failed']}`", ""]
    for name, err in s.get("errors", {}).items():
        out += [f"**{LABEL.get(name, name)} failed or could not run here:**", "", "```", err.strip()[-2000:], "```", ""]
    return out


def raw(sc: dict[str, Any]) -> list[str]:
    rows = sc.get("throughput", {}).get("rows", [])
    if not rows:
        return []
    out = ["## Raw throughput runs", "", "In the order they ran. Load: 1-minute load average before / after the "
           "measured wrk run.", "",
           "| app | c | round | system | req/s | p50 ms | p99 ms | CPU µs/req | socket errors | non-2xx | load |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['app']} | {r['c']} | {r['round']} | {LABEL[r['system']]} | {r['rps']:.0f} | {f(r['p50'])} | "
                   f"{f(r['p99'])} | {f(r['cpu_us_per_req'], 0)} | {r['sockerr']:.0f} | {r['non2xx']:.0f} | "
                   f"{r['load_before']:.2f}/{r['load_after']:.2f} |")
    return out + [""]
