"""The gateway's per-request Python cost, in memory: one GET parsed by the real HttpConnection,
placed on a fake worker, its Req frame encoded, answered and written to a fake transport.

    PYTHONPATH=$PWD/src:$PWD python3 bench/gateway_path.py LABEL

Prints process-time µs per request (min and median of 150 blocks of 2000 requests). Process
time, not wall time: on a shared machine it is the figure least moved by other load. For an
A/B, run it alternately against two source trees (PYTHONPATH) and compare the medians.
"""

from __future__ import annotations

import sys
import time

from anycore import wire
from tests.unit.gateway.fakes import FakeChannel, connect, gateway

REQUEST = b"GET / HTTP/1.1\r\nHost: example\r\nUser-Agent: wrk\r\nAccept: */*\r\n\r\n"
HEADERS = [(b"content-type", b"text/plain")]
BLOCK, BLOCKS = 2000, 150


class _Drop(list):  # type: ignore[type-arg]
    def append(self, item: object) -> None:
        pass


def main() -> None:
    gw, sink = gateway()
    conn, transport, _ = connect(gw)
    worker = FakeChannel()
    worker.frames = _Drop()

    def one() -> None:
        conn.data_received(REQUEST)
        exchange = sink.submitted.pop()
        wire.encode(exchange.request_frame(exchange.path, None))
        exchange.on_dispatched(worker, 0.0)  # type: ignore[arg-type]
        exchange.on_frame(wire.Resp(exchange.id, 200, HEADERS, b"Hello, world!", False))
        transport.written.clear()

    times = []
    for _ in range(BLOCKS):
        start = time.process_time()
        for _ in range(BLOCK):
            one()
        times.append((time.process_time() - start) / BLOCK * 1e6)
    times.sort()
    print(f"{sys.argv[1] if len(sys.argv) > 1 else 'gateway'}: min {times[0]:.2f} us, "
          f"median {times[len(times) // 2]:.2f} us per request")


if __name__ == "__main__":
    main()
