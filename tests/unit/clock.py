"""What every unit test of an executor shares: a clock the test moves, and a bounded wait."""

from __future__ import annotations

import asyncio
from typing import Callable


class FakeClock:
    """An injected clock (``clock()`` -> seconds) that moves only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


async def until(condition: Callable[[], object], what: str = "a condition", timeout: float = 5.0) -> None:
    """Let the loop run until ``condition()`` holds (deadline-bounded, on the loop's real
    clock; no fixed sleep)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.002)
