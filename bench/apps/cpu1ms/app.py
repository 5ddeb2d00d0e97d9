"""An ASGI handler that does a fixed amount of pure-Python work, about 1 ms of CPU.

The amount is a fixed iteration count (not "loop until 1 ms passed"), so a server that
loses the CPU to its neighbours pays for it in throughput, as a real handler would. The
bench calibrates the count once and passes it to both servers in BENCH_CPU_ITERS.
"""

import os

ITERS = int(os.environ.get("BENCH_CPU_ITERS", "20000"))


def work(iters: int) -> int:
    acc = 0
    for i in range(iters):
        acc = (acc + i * i) % 1000003
    return acc


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"{ITERS} {work(ITERS)}".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
