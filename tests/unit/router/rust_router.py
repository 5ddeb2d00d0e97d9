"""The Rust port of the router core (``native/src/router.rs``) behind the Python API of
``anycore.router.core.Router``, so test_router.py runs the same tests against both.

It drives ``anycore-gateway --router-model`` (one process per test module, reset by each
new router): one text operation per call, and the JSON state the Rust code returns after
it answers every read (workers, queue, counters, and the derived values the Rust code
computes itself). Items of any hashable type are mapped to integers for the binary.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Hashable

from anycore.router.core import Decision, Placed, Queued, Rejected

ROOT = Path(__file__).resolve().parents[3]
BINARY = Path(os.environ.get("ANYCORE_GATEWAY_BIN") or ROOT / "native" / "target" / "release" / "anycore-gateway")


def built() -> bool:
    return BINARY.is_file() and os.access(BINARY, os.X_OK)


class _Process:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([str(BINARY), "--router-model"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     text=True, bufsize=1)
        self.owner: object = None

    def call(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        reply = json.loads(self.proc.stdout.readline())
        if "error" in reply:
            raise ValueError(f"router model: {reply['error']} (operation {line!r})")
        return reply


_process: _Process | None = None


def _shared() -> _Process:
    global _process
    if _process is None or _process.proc.poll() is not None:
        _process = _Process()
    return _process


def _f(x: float) -> str:
    return repr(float(x))


@dataclass(frozen=True)
class PendingView:
    item: Any
    size: int
    deadline: float
    enqueued_at: float


class WorkerView:
    def __init__(self, router: "RustRouter", row: list[Any]) -> None:
        self._router = router
        self.id, self.slots, self._inflight, self.accepting, self.served = row

    @property
    def inflight(self) -> int:
        return self._inflight

    @inflight.setter
    def inflight(self, n: int) -> None:
        self._router._op(f"set_inflight {self.id} {n}")
        self._inflight = n

    @property
    def free(self) -> int:
        return self.slots - self._inflight if self.accepting else 0


class RustRouter:
    def __init__(self, max_queue: int, max_queue_bytes: int) -> None:
        self._p = _shared()
        self._p.owner = self
        self._ids: dict[Hashable, int] = {}
        self._items: list[Hashable] = []
        self._state: dict[str, Any] = {}
        self._op(f"new {max_queue} {max_queue_bytes}")

    def _op(self, line: str) -> Any:
        assert self._p.owner is self, "one RustRouter at a time (they share one process)"
        reply = self._p.call(line)
        self._state = reply["s"]
        return reply["r"]

    def _id(self, item: Hashable) -> int:
        if item not in self._ids:
            self._ids[item] = len(self._items)
            self._items.append(item)
        return self._ids[item]

    # -- workers
    def add_worker(self, worker_id: int, slots: int, accepting: bool = True) -> None:
        self._op(f"add {worker_id} {slots} {int(accepting)}")

    def set_accepting(self, worker_id: int, accepting: bool) -> None:
        self._op(f"accept {worker_id} {int(accepting)}")

    def stop_accepting(self, worker_id: int) -> None:
        self._op(f"stop {worker_id}")

    def remove_worker(self, worker_id: int) -> None:
        self._op(f"remove {worker_id}")

    def inflight_of(self, worker_id: int) -> int:
        return self._op(f"inflight_of {worker_id}")

    def served_by(self, worker_id: int) -> int:
        return self._op(f"served_by {worker_id}")

    @property
    def workers(self) -> dict[int, WorkerView]:
        return {row[0]: WorkerView(self, row) for row in self._state["workers"]}

    @property
    def queue(self) -> list[PendingView]:
        return [PendingView(self._items[i], size, d, at) for i, size, d, at in self._state["queue"]]

    def __getattr__(self, name: str) -> Any:
        if name in ("queued_bytes", "mean_service", "rejected", "expired", "served", "max_queue", "max_queue_bytes",
                    "capacity", "inflight", "free", "any_accepting"):
            return self.__dict__["_state"][name]
        raise AttributeError(name)

    def can_place(self) -> bool:
        return self._state["can_place"]

    def next_deadline(self) -> float | None:
        return self._state["next_deadline"]

    # -- requests
    def submit(self, item: Hashable, size: int, deadline: float, now: float, front: bool = False) -> Decision:
        kind, *rest = self._op(f"submit {self._id(item)} {size} {_f(deadline)} {_f(now)} {int(front)}")
        if kind == "placed":
            return Placed(rest[0])
        if kind == "queued":
            return Queued(rest[0])
        return Rejected(rest[0], rest[1])

    def release(self, worker_id: int, service_time: float | None = None) -> None:
        self._op(f"release {worker_id} {'none' if service_time is None else _f(service_time)}")

    def drain_queue(self) -> list[tuple[Any, int]]:
        return [(self._items[i], w) for i, w in self._op("drain")]

    def cancel(self, item: Hashable) -> bool:
        return self._op(f"cancel {self._id(item)}")

    def expire(self, now: float) -> list[Any]:
        return [self._items[i] for i in self._op(f"expire {_f(now)}")]
