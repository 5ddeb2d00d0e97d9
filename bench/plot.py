"""Draws a run's plots from its JSON; runs in bench/.venvs/plot (matplotlib), apart from the suite.

    python plot.py RESULTS.json OUTDIR

throughput.png (req/s per system, log scale: Ray is two orders below), throughput-latency.png
(p50/p90/p99), swap.png and crash.png (timelines, one panel per system), cold.png,
memory.png, websocket.png. Medians over rounds, like the report.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ORDER = ["anycore", "uvicorn", "gunicorn", "ray"]
LABEL = {"anycore": "anycore", "uvicorn": "uvicorn", "gunicorn": "gunicorn", "ray": "Ray Serve"}
COLOR = {"anycore": "#1f77b4", "uvicorn": "#ff7f0e", "gunicorn": "#2ca02c", "ray": "#9467bd"}


def present(rows: list[dict]) -> list[str]:
    have = {r["system"] for r in rows}
    return [s for s in ORDER if s in have]


def med(rows: list[dict], key: str, **where: object) -> float:
    xs = [r[key] for r in rows if all(r.get(k) == v for k, v in where.items()) and r.get(key) is not None]
    return statistics.median(xs) if xs else float("nan")


def bars(ax, groups: list[str], series: dict[str, list[float]], ylabel: str, log: bool = False) -> None:  # type: ignore[no-untyped-def]
    n = len(series)
    width = 0.8 / max(n, 1)
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        rects = ax.bar(xs, values, width, label=LABEL.get(name, name), color=COLOR.get(name))
        ax.bar_label(rects, labels=[f"{v:.0f}" if v >= 10 else f"{v:.2g}" for v in values], fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    ax.grid(axis="y", alpha=0.3)


def throughput(s: dict, out: Path) -> None:
    rows = s["rows"]
    if not rows:
        return
    systems = present(rows)
    groups = [(a, c) for a in s["apps"] for c in s["connections"]]
    labels = [f"{a}\nc={c}" for a, c in groups]
    fig, ax = plt.subplots(figsize=(9, 4.5))
    bars(ax, labels, {n: [med(rows, "rps", system=n, app=a, c=c) for a, c in groups] for n in systems}, "req/s (log)", log=True)
    ax.set_title("Throughput, 2 workers, wrk -t1 (median over rounds; higher is better)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "throughput.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(groups), figsize=(3.2 * len(groups), 4), squeeze=False)
    for ax, (a, c) in zip(axes[0], groups):
        pcts = ["p50", "p90", "p99"]
        bars(ax, pcts, {n: [med(rows, p, system=n, app=a, c=c) for p in pcts] for n in systems}, "ms (log)", log=True)
        ax.set_title(f"{a} c={c}", fontsize=10)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("Latency percentiles (wrk; lower is better)")
    fig.tight_layout()
    fig.savefig(out / "throughput-latency.png", dpi=110)
    plt.close(fig)


def timelines(s: dict, out: Path, name: str) -> None:
    rows = s["rows"]
    if not rows:
        return
    systems = present(rows)
    fig, axes = plt.subplots(len(systems), 1, figsize=(9, 2.3 * len(systems)), squeeze=False)
    for ax, system in zip(axes[:, 0], systems):
        r = next(r for r in rows if r["system"] == system)  # the first round
        tl = r["timeline"]
        t = [b["t"] for b in tl]
        if name == "swap":
            ax.stackplot(t, [b["old"] for b in tl], [b["new"] for b in tl], labels=["old code (A)", "new code (B2)"],
                         colors=["#bbbbbb", COLOR[system]], step="post")
            ax.axvline(r["swap_at"], color="k", ls="--", lw=1)
            if r.get("new_code_s") is not None:
                ax.axvline(r["swap_at"] + r["new_code_s"], color="k", ls=":", lw=1)
            title = f"{LABEL[system]}: {r['errors']} errors, 100 % new code after " + (
                "never" if r.get("new_code_s") is None else f"{r['new_code_s']:.2f} s")
        else:
            ax.step(t, [b["ok"] for b in tl], where="post", color=COLOR[system], label="answers/s")
            ax.axvline(r["kill_at"], color="k", ls="--", lw=1)
            if r.get("replaced_s") is not None:
                ax.axvline(r["kill_at"] + r["replaced_s"], color="k", ls=":", lw=1)
            back = r.get("capacity_back_s")
            title = f"{LABEL[system]}: {r['errors']} errors, capacity back after " + ("—" if back is None else f"{back:.2f} s")
        ax.step(t, [b["err"] for b in tl], where="post", color="red", label="errors/s")
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("per s")
        ax.set_xlim(0, max(t) if t else 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[-1][0].set_xlabel("seconds since load start (0.25 s buckets)")
    fig.suptitle("Code swap under load" if name == "swap" else "kill -9 of one worker under load")
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)


def simple(s: dict, out: Path, name: str) -> None:
    rows = s["rows"]
    if not rows:
        return
    systems = present(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    if name == "cold":
        bars(ax, [LABEL[n] for n in systems], {"first answer": [med(rows, "cold_s", system=n) * 1000 for n in systems],
                                               "warm": [med(rows, "warm_s", system=n) * 1000 for n in systems]}, "ms (log)", log=True)
        ax.set_title("First answer from zero (lower is better)")
    elif name == "memory":
        by = {r["system"]: r for r in rows}
        bars(ax, [LABEL[n] for n in systems],
             {"RSS per worker": [statistics.median(w["rss"] for w in by[n]["workers"]) if by[n]["workers"] else 0 for n in systems],
              "USS per worker": [statistics.median(w["uss"] for w in by[n]["workers"]) if by[n]["workers"] else 0 for n in systems],
              "PSS, all processes": [by[n]["total"]["pss"] for n in systems]}, "MiB (log)", log=True)
        ax.set_title("Memory, FastAPI app, 2 workers (lower is better)")
    else:
        variants = [(n, v) for n in systems for v in ("Session", "ASGI websocket") if any(
            r["system"] == n and r["variant"] == v for r in rows)]
        bars(ax, [f"{LABEL[n]}\n{v}" for n, v in variants],
             {"echo msg/s": [med(rows, "msgs_per_s", system=n, variant=v) for n, v in variants]}, "msg/s")
        ax.set_title("WebSocket echo (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=110)
    plt.close(fig)


def wsswap(s: dict, out: Path) -> None:
    r = next((r for r in s["rows"] if r["system"] == "anycore"), None)
    if r is None or not r.get("max_rtt_timeline"):
        return
    fig, ax = plt.subplots(figsize=(9, 3))
    tl = r["max_rtt_timeline"]
    ax.step([b["t"] for b in tl], [b["max_ms"] for b in tl], where="post", color=COLOR["anycore"], label="worst round trip")
    for i, (start, end) in enumerate(r["windows"]):
        ax.axvspan(start, end, color="grey", alpha=0.25, label="anycore deploy" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("seconds (0.25 s buckets)")
    ax.set_ylabel("ms (log)")
    ax.set_title(f"{s.get('clients', 50)} echo Sessions through {r['deploys']} deploys: {r['dropped']} connections lost")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "wsswap.png", dpi=110)
    plt.close(fig)


def main() -> None:
    data = json.loads(Path(sys.argv[1]).read_text())
    out = Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    sc = data["scenarios"]
    if "throughput" in sc:
        throughput(sc["throughput"], out)
    for name in ("swap", "crash"):
        if name in sc:
            timelines(sc[name], out, name)
    if "wsswap" in sc:
        wsswap(sc["wsswap"], out)
    for name in ("cold", "memory", "websocket"):
        if name in sc:
            simple(sc[name], out, name)


if __name__ == "__main__":
    main()
