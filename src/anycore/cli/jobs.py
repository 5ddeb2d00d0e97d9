"""L3 — ``anycore jobs [SERVICE]``: the durable job queues, cluster-wide, as one node reads them.

Per service: jobs stored and waiting for a free slot (pending), delivered and not yet
acknowledged (in progress: running somewhere, or waiting out a retry's backoff), delivered
more than once (redelivered: a failed attempt, or a lost node), dead-lettered (failed every
attempt) with the newest dead letters and their last error, and what this node ran.
"""

from __future__ import annotations

import json
from typing import Any, Callable

import click

SHOWN_DEAD = 5  # dead letters printed per service (--json has them all)


def jobs_command(with_nats: Callable[..., Any], query: Callable[..., dict[str, Any] | None]) -> click.Command:
    """The command, built with cli.main's NATS options and query (registered there in one line)."""

    @click.command("jobs")
    @click.argument("service", required=False)
    @click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
    @with_nats
    def jobs(service: str | None, as_json: bool, nats_url: str | None, token: str | None, creds: str | None) -> None:
        """Pending, in-progress, redelivered and dead-lettered jobs (of SERVICE, or of every service)."""
        reply = query("jobs", as_json, nats_url, token, creds, service=service)
        if reply is not None:
            render_jobs(reply)

    return jobs


def render_jobs(reply: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if Console().is_terminal else 160)
    rows = reply["services"]
    if not rows:
        console.print("no jobs: nothing was enqueued yet (anycore.enqueue from a service)")
        return
    table = Table("service", "pending", "in progress", "redelivered", "dead", "running here", "done here", "retried here")
    for row in rows:
        here = row["here"]
        table.add_row(row["service"], str(row["pending"]), str(row["in_progress"]), str(row["redelivered"]),
                      str(row["dead"]), str(row["running_here"]), str(here["succeeded"]), str(here["retried"]))
    console.print(table)
    for row in rows:
        for dead in row["dead_letters"][-SHOWN_DEAD:]:
            console.print(f"dead {row['service']} job {dead['job']} {dead['method']} {dead['path']} after "
                          f"{dead['attempts']} attempts ({dead['ago_s']}s ago, on {dead['node']}): "
                          f"{json.dumps(dead['error'])[1:-1]}", markup=False, highlight=False)
