"""Load generators: wrk for throughput, an asyncio client for timelines, a WebSocket echo client.

wrk is the fastest client here, but it only gives totals. The swap and crash scenarios need
to know *when* each error happened and which code answered each request, so they use
`Timeline`: C keep-alive connections in one uvloop process, each sending GETs back to back
and recording (time answered, outcome). A connection that fails records one error, waits
20 ms (so a refused port is not hammered) and reconnects. It is slower than wrk, equally
for every system, and the scenarios that use it measure events, not peak throughput.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from dataclasses import dataclass, field

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, duration: float) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "5s",
                          "--latency", url], capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    lat = {p: float(v) * _UNITS[u] for p, v, u in re.findall(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    if not rps or not total:
        raise RuntimeError(f"cannot parse wrk output:\n{out}")
    if not float(total.group(1)):  # nothing answered within the run: no latency to speak of
        lat = {}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"rps": float(rps.group(1)), "requests": float(total.group(1)),
            **{f"p{p}": lat.get(p, float("nan")) for p in ("50", "75", "90", "99")},
            "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "sockerr": float(sum(map(int, sock.groups()))) if sock else 0.0}


OK, ERR = "ok", "err"


@dataclass
class Timeline:
    """(seconds since start, outcome, what) of every request: ("ok", body) for a 2xx, else ("err", "HTTP 502",
    "ConnectionResetError", "TimeoutError"...)."""

    t0: float = 0.0
    duration: float = 0.0  # the load's length: answers that complete after it (in flight at the stop) are not counted
    events: list[tuple[float, str, bytes]] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)

    def mark(self, name: str) -> float:
        self.marks[name] = time.monotonic() - self.t0
        return self.marks[name]

    def error_kinds(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for _, outcome, what in self.events:
            if outcome == ERR:
                kinds[what.decode()] = kinds.get(what.decode(), 0) + 1
        return kinds

    def counted(self) -> list[tuple[float, str, bytes]]:
        return [e for e in self.events if e[0] < self.duration]

    def buckets(self, width: float = 0.25) -> list[dict[str, float]]:
        """Answers and errors per second in consecutive `width` s buckets covering [0, duration)."""
        out = [{"t": i * width, "ok": 0.0, "err": 0.0} for i in range(int(self.duration / width))]
        for t, outcome, _ in self.counted():
            if int(t / width) < len(out):
                out[int(t / width)][outcome] += 1 / width
        return out


async def _body(reader: asyncio.StreamReader, head: bytes) -> bytes:
    length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    if length is not None:
        return await reader.readexactly(int(length.group(1)))
    if not re.search(rb"(?i)\r\ntransfer-encoding:\s*chunked", head):
        raise ConnectionError("neither content-length nor chunked")
    chunks = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers from these servers
            return b"".join(chunks)
        chunks.append((await reader.readexactly(size + 2))[:-2])


async def _client(host: str, port: int, path: str, tl: Timeline, stop: float) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
    reader = writer = None
    while time.monotonic() < stop:
        try:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
            assert reader is not None
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            status = int(head.split(b" ", 2)[1])
            body = await asyncio.wait_for(_body(reader, head), 5)
            ok = 200 <= status < 300
            tl.events.append((time.monotonic() - tl.t0, OK if ok else ERR, body if ok else f"HTTP {status}".encode()))
            if re.search(rb"(?i)\r\nconnection:\s*close", head):
                writer.close()
                writer = None
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                IndexError) as exc:
            tl.events.append((time.monotonic() - tl.t0, ERR, type(exc).__name__.encode()))
            if writer is not None:
                writer.close()
            writer = None
            await asyncio.sleep(0.02)
    if writer is not None:
        writer.close()


async def run_timeline(url: str, connections: int, duration: float, actions: list[tuple[float, object]]) -> Timeline:
    """Load `url` for `duration` s; at each (t, fn) call fn(timeline) in a thread (it may block)."""
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    tl = Timeline(t0=time.monotonic(), duration=duration)
    stop = tl.t0 + duration

    async def act(at: float, fn: object) -> None:
        await asyncio.sleep(max(0.0, tl.t0 + at - time.monotonic()))
        await asyncio.to_thread(fn, tl)  # type: ignore[arg-type]

    await asyncio.gather(*(_client(host, int(port), "/", tl, stop) for _ in range(connections)),
                         *(act(at, fn) for at, fn in actions))
    return tl


async def ws_echo(url: str, connections: int, duration: float, window: int = 8, size: int = 64) -> dict[str, float]:
    """Echoes per second over `connections` WebSockets, each keeping `window` messages in flight.

    Counting starts 1 s after the call (time to open every connection) and lasts `duration`."""
    from websockets.asyncio.client import connect

    payload = "x" * size
    counts = [0] * connections
    errors = 0
    begin = time.monotonic() + 1.0
    end = begin + duration

    async def one(i: int) -> None:
        nonlocal errors
        try:
            async with connect(url, compression=None, open_timeout=10, max_queue=None) as ws:
                for _ in range(window):
                    await ws.send(payload)
                while time.monotonic() < end:
                    if await ws.recv() != payload:
                        raise RuntimeError("the echo differs from the message")
                    if time.monotonic() >= begin:
                        counts[i] += 1
                    await ws.send(payload)
        except Exception:  # noqa: BLE001 - any failure is counted and reported
            errors += 1

    await asyncio.gather(*(one(i) for i in range(connections)))
    return {"msgs_per_s": sum(counts) / duration, "errors": float(errors), "connections": float(connections),
            "window": float(window)}


async def ws_pinger(url: str, clients: int, until: asyncio.Event, every: float = 0.02) -> dict[str, object]:
    """`clients` WebSockets, each sending a numbered message every `every` s and timing its echo.

    Returns the (send time, round trip) of every echo and how many connections were lost."""
    from websockets.asyncio.client import connect

    samples: list[tuple[float, float]] = []
    dropped = 0

    async def one(i: int) -> None:
        nonlocal dropped
        try:
            async with connect(url, compression=None, open_timeout=10) as ws:
                n = 0
                while not until.is_set():
                    n += 1
                    t = time.monotonic()
                    await ws.send(f"{i}:{n}")
                    reply = await asyncio.wait_for(ws.recv(), 30)
                    if reply != f"{i}:{n}":
                        raise RuntimeError(f"echo {reply!r} for {i}:{n}")
                    samples.append((t, time.monotonic() - t))
                    await asyncio.sleep(every)
        except Exception:  # noqa: BLE001 - closed, reset, timed out or wrong echo: the connection is lost
            dropped += 1

    await asyncio.gather(*(one(i) for i in range(clients)))
    return {"samples": samples, "dropped": dropped}
