"""``anycore top``'s picture, pure: frames as /api/state sends them, rendered with rich."""

from __future__ import annotations

from typing import Any

import pytest
from rich.console import Console

from anycore.cli.top import AdminUnreachable, Picture, admin_url, render, sparkline


def state(seq: int, full: bool, rps: float, events: list[dict[str, Any]]) -> dict[str, Any]:
    worker = {"id": 4, "pid": 99, "release": "shop@b", "state": "ready", "inflight": 1, "slots": 4, "served": 10,
              "rss_mib": 20.5, "uptime": 12.0, "cpu": 0.37}
    old = {"id": 1, "pid": 98, "release": "shop@a", "state": "ready", "inflight": 1, "slots": 4, "served": 10,
           "rss_mib": 20.5, "uptime": 99.0}
    return {"seq": seq, "full": full, "t": 1.7e9, "series": [{"service": "shop", "release": "shop@b",
                                                            "points": [[seq, 1.7e9, rps, 0.0, 0.002, 0.01]]}],
            "rates": [{"service": "shop", "release": "shop@b", "rps": rps, "eps": 0.0, "p50": 0.002, "p99": 0.01}],
            "events": events, "load": [],
            "snapshot": {"node": "n1", "gateway": "http://127.0.0.1:8000", "connections": 2, "cluster": None,
                         "services": [{"name": "shop", "state": "running", "release": "shop@b", "queued": 0, "inflight": 2,
                                       "served": 20, "rejected": 0, "live": {"workers": [worker]},
                                       "draining": [{"workers": [old]}]}]}}


def text(picture: Picture) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(render(picture))
    return console.export_text()


def test_picture_accumulates_rates_and_events_and_renders_services_workers_events() -> None:
    picture = Picture()
    picture.update(state(5, True, 10.0, [{"t": 1.7e9, "event": "service.shifted", "kind": "deploy", "service": "shop",
                                          "fields": {"release": "shop@b"}}]))
    picture.update(state(6, False, 20.0, []))
    assert list(picture.rps[("shop", "shop@b")]) == [10.0, 20.0] and picture.seq == 6 and len(picture.events) == 1
    out = text(picture)
    assert "shop@b" in out and "#4" in out and "#1" in out and "draining" in out
    assert "37%" in out  # worker 4's CPU: 0.37 of a core
    assert "service.shifted" in out and "20.0" in out and "10.0 ms" in out  # p99 of the live release
    picture.state["snapshot"]["cluster"] = {"peers": {"n2": {"gateway": "http://h:1", "seen_s_ago": 0.5, "free": {"shop": 1},
                                                             "services": {"shop": {"release": "shop@b", "workers": 1, "slots": 4,
                                                                                   "free": 1, "inflight": 3, "queued": 2}}}}}
    assert "shop 3/4 +2 queued" in text(picture) and "n2" in text(picture)
    picture.update(state(1, True, 1.0, []))  # the node restarted: all again
    assert list(picture.rps[("shop", "shop@b")]) == [1.0] and not picture.events


def test_sparkline_scales_to_its_largest_value() -> None:
    assert sparkline([0.0, 5.0, 10.0]) == "▁▄█"  # half of the largest: half height
    assert sparkline([0.0, 0.0]) == "▁▁"


def test_admin_address_from_the_option_or_node_json(tmp_path, monkeypatch) -> None:
    assert admin_url("127.0.0.1:9790") == "http://127.0.0.1:9790"
    assert admin_url("http://h:1/") == "http://h:1"
    monkeypatch.setenv("ANYCORE_HOME", str(tmp_path))
    (tmp_path / "node.json").write_text('{"admin": null}')
    with pytest.raises(AdminUnreachable, match="--admin"):
        admin_url(None)
    (tmp_path / "node.json").write_text('{"admin": "http://127.0.0.1:9791"}')
    assert admin_url(None) == "http://127.0.0.1:9791"
