"""Redoes the analysis of a stored run from its raw timelines (`run.py --render NAME`).

The JSON keeps each timeline as 0.25 s buckets; the crash scenario's figures derived from
them (capacity back, lowest rate) are recomputed with the current scenarios/crash.py, and
buckets past the end of the load (answers in flight at its stop) are dropped. Nothing is
measured again: what changes is only how the same data is read.
"""

from __future__ import annotations

from typing import Any

from scenarios import crash


def reanalyse(data: dict[str, Any]) -> dict[str, Any]:
    mode = data["meta"]["mode"]
    for name in ("swap", "crash"):
        for row in data["scenarios"].get(name, {}).get("rows", []):
            duration = mode["ray_timeline_s"] if row["system"] == "ray" else mode["timeline_s"]
            row["timeline"] = [b for b in row["timeline"] if b["t"] + 0.25 <= duration + 1e-9]
            if name == "crash":
                row.update(crash.capacity(row["timeline"], row["kill_at"]))
    if "crash" in data["scenarios"]:
        data["scenarios"]["crash"]["back_threshold"] = crash.BACK
    data["meta"]["rerendered"] = True
    return data
