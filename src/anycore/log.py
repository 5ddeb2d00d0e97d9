"""Structured node events and captured worker output.

Every node event is one logfmt line (``ts=... event=worker.exited service=hello ...``) on
the node's stderr. Worker and zygote stdout/stderr arrive through a socket per process
and are tagged ``[release worker N]``. Both kinds of line are kept in a bounded ring per
service for ``anycore logs`` and handed to subscribers (``anycore logs -f`` over NATS).
"""

from __future__ import annotations

import sys
import time
from collections import deque
from typing import Callable

RING = 2000


def _fmt(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class NodeLog:
    def __init__(self, stream: object = None) -> None:
        self.stream = stream or sys.stderr
        self.rings: dict[str, deque[str]] = {}
        self.all: deque[str] = deque(maxlen=RING)
        self.subscribers: list[Callable[[str, str], None]] = []
        # Structured: (unix time, event, service, fields) for every ``event`` — the
        # dashboard's timeline and other formats read these instead of parsing lines.
        self.watchers: list[Callable[[float, str, str, dict[str, object]], None]] = []

    def _emit(self, service: str, line: str) -> None:
        print(line, file=self.stream, flush=True)  # type: ignore[call-overload]
        self.rings.setdefault(service, deque(maxlen=RING)).append(line)
        self.all.append(line)
        for subscriber in self.subscribers:
            subscriber(service, line)

    def event(self, event: str, service: str = "", **fields: object) -> None:
        now = time.time()  # one reading: seconds and milliseconds of two readings can straddle a second
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
        parts = [f"ts={ts}", f"event={event}"]
        if service:
            parts.append(f"service={_fmt(service)}")
        parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
        self._emit(service, " ".join(parts))
        for watcher in self.watchers:
            watcher(now, event, service, fields)

    def output(self, service: str, tag: str, text: str) -> None:
        self._emit(service, f"[{tag}] {text}")

    def tail(self, service: str | None, n: int) -> list[str]:
        if service:
            return list(self.rings.get(service, ()))[-n:]
        return list(self.all)[-n:]
