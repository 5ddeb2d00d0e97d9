"""Structured node events, access lines and captured worker output, in formats log tooling reads.

A node event is one line on the node's stderr in the node's ``--log-format``: ``logfmt``
(``ts=... event=worker.exited service=hello ...``) or ``json`` (one object per line: ``ts``,
``event``, ``service`` if any, then the event's fields at the top level; a field never
overrides those three). Worker and zygote stdout/stderr arrive through a socket per process;
each line gets the node's timestamp when it arrives and keeps its ``[release worker N]`` tag:
``ts=... [hello@3f9a worker 1] text`` in logfmt, ``{"ts":..., "event":"output",
"service":..., "tag":"hello@3f9a worker 1", "line":...}`` in json.

The access log (``--access-log``) has its own format, chosen apart from the events':
``logfmt`` or ``json`` (the ``request`` event, as above) or ``combined``, the Apache/nginx
combined format, byte for byte what ``LogFormat "%h %l %u %t \\"%r\\" %>s %b
\\"%{Referer}i\\" \\"%{User-agent}i\\"" combined`` writes, escaping included, so existing
tooling (goaccess, fail2ban, awstats, log shippers' nginx parsers) reads it.

Every kind of line is kept in a bounded ring per service for ``anycore logs`` and handed to
subscribers (``anycore logs -f`` over NATS); watchers get every event and access record as
structured fields, whatever the format. The formatters are pure functions of their inputs.
"""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from enum import Enum
from typing import Callable, Mapping

from anycore.errors import ConfigError

RING = 2000


class LogFormat(str, Enum):
    LOGFMT = "logfmt"
    JSON = "json"
    COMBINED = "combined"  # access lines only


EVENT_FORMATS = (LogFormat.LOGFMT, LogFormat.JSON)
ACCESS_FORMATS = (LogFormat.LOGFMT, LogFormat.JSON, LogFormat.COMBINED)


def parse_format(value: LogFormat | str, allowed: tuple[LogFormat, ...], what: str) -> LogFormat:
    try:
        fmt = LogFormat(value)
    except ValueError:
        fmt = None
    if fmt is None or fmt not in allowed:
        raise ConfigError(f"{what} {getattr(value, 'value', value)!r} is not a log format here; use one of: "
                          + ", ".join(f.value for f in allowed))
    return fmt


# -- pure formatters -------------------------------------------------------------------------
def timestamp(now: float) -> str:
    """ISO 8601 UTC with milliseconds, from one clock reading (two readings can straddle a second)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"


def _fmt(value: object) -> str:
    text = str(value)
    if not text or any(c in text for c in ' "=\n'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


def logfmt_line(now: float, event: str, service: str, fields: Mapping[str, object]) -> str:
    parts = [f"ts={timestamp(now)}", f"event={event}"]
    if service:
        parts.append(f"service={_fmt(service)}")
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    return " ".join(parts)


def json_line(now: float, event: str, service: str, fields: Mapping[str, object]) -> str:
    record: dict[str, object] = {"ts": timestamp(now), "event": event}
    if service:
        record["service"] = service
    for key, value in fields.items():
        if value is not None and key not in record:
            record[key] = value
    return json.dumps(record, default=str, separators=(",", ":"))


def output_line(fmt: LogFormat, now: float, service: str, tag: str, text: str) -> str:
    if fmt is LogFormat.JSON:
        return json.dumps({"ts": timestamp(now), "event": "output", "service": service, "tag": tag, "line": text},
                          separators=(",", ":"))
    return f"ts={timestamp(now)} [{tag}] {text}"


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
# mod_log_config's escaping of %r and %{...}i: '"' and '\' by a backslash, \n \t \r... in
# C notation, every other byte outside printable ASCII as \xhh.
_ESCAPES = {ord('"'): '\\"', ord("\\"): "\\\\", ord("\n"): "\\n", ord("\t"): "\\t", ord("\r"): "\\r",
            0x08: "\\b", 0x0B: "\\v", 0x0C: "\\f"}


def _escape(raw: bytes) -> str:
    text = raw.decode("latin-1")
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return "".join(_ESCAPES.get(b, chr(b) if 0x20 <= b < 0x7F else f"\\x{b:02x}") for b in raw)


def clf_time(when: float) -> str:
    """``%t``: ``[02/Dec/2026:03:48:35 +0000]`` in the node's local time zone, English months."""
    tm = time.localtime(when)
    offset = tm.tm_gmtoff or 0
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    return (f"[{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year}:{tm.tm_hour:02d}:{tm.tm_min:02d}:"
            f"{tm.tm_sec:02d} {sign}{hours:02d}{minutes:02d}]")


def combined_line(client: str | None, when: float, request_line: bytes, status: int, size: int,
                  referer: bytes | None, agent: bytes | None) -> str:
    """One Apache/nginx combined line; ``when`` is the time the request was received (``%t``)."""
    return (f'{client or "-"} - - {clf_time(when)} "{_escape(request_line)}" {status} {size or "-"} '
            f'"{"-" if referer is None else _escape(referer)}" "{"-" if agent is None else _escape(agent)}"')


# -- the node's log ---------------------------------------------------------------------------
Watcher = Callable[[float, str, str, dict[str, object]], None]


class NodeLog:
    def __init__(self, stream: object = None, format: LogFormat | str = LogFormat.LOGFMT) -> None:
        self.stream = stream or sys.stderr
        self.format = parse_format(format, EVENT_FORMATS, "--log-format")
        self._line = json_line if self.format is LogFormat.JSON else logfmt_line
        self.rings: dict[str, deque[str]] = {}
        self.all: deque[str] = deque(maxlen=RING)
        self.subscribers: list[Callable[[str, str], None]] = []
        # Structured: (unix time, event, service, fields) for every ``event`` and access
        # record — the dashboard's timeline and other readers use these, never the lines.
        self.watchers: list[Watcher] = []

    def _emit(self, service: str, line: str) -> None:
        print(line, file=self.stream, flush=True)  # type: ignore[call-overload]
        self.rings.setdefault(service, deque(maxlen=RING)).append(line)
        self.all.append(line)
        for subscriber in self.subscribers:
            subscriber(service, line)

    def event(self, event: str, service: str = "", **fields: object) -> None:
        now = time.time()
        self._emit(service, self._line(now, event, service, fields))
        for watcher in self.watchers:
            watcher(now, event, service, fields)

    def access(self, fmt: LogFormat, service: str, fields: dict[str, object], combined: str = "") -> None:
        """One finished request in the access log's own format (``combined``: the line, made
        by the gateway, which alone knows the request line and headers)."""
        now = time.time()
        if fmt is LogFormat.COMBINED:
            line = combined
        elif fmt is LogFormat.JSON:
            line = json_line(now, "request", service, fields)
        else:
            line = logfmt_line(now, "request", service, fields)
        self._emit(service, line)
        for watcher in self.watchers:
            watcher(now, "request", service, fields)

    def output(self, service: str, tag: str, text: str) -> None:
        self._emit(service, output_line(self.format, time.time(), service, tag, text))

    def tail(self, service: str | None, n: int) -> list[str]:
        if service:
            return list(self.rings.get(service, ()))[-n:]
        return list(self.all)[-n:]
