import time


def burn(seconds: float = 0.001) -> int:
    """About 1 ms of pure-Python CPU work."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    n = burn()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(n).encode()})
