"""anycore.tasks.TaskGroup: every task has an owner, failures are reported, close is bounded."""

from __future__ import annotations

import asyncio
import gc
import inspect

import pytest

from anycore.tasks import TaskGroup


def test_a_failing_task_is_reported_and_does_not_cancel_its_siblings() -> None:
    async def go() -> None:
        failures: list[tuple[str, BaseException]] = []
        group = TaskGroup("g", lambda name, exc: failures.append((name, exc)))
        sibling = group.spawn(asyncio.sleep(0.05, "done"), "sibling")

        async def boom() -> None:
            raise ValueError("boom")

        group.spawn(boom(), "boom")
        assert await sibling == "done"
        assert [(name, str(exc)) for name, exc in failures] == [("g: boom", "boom")]
        assert len(group) == 0  # finished tasks leave the group
    asyncio.run(go())


def test_the_group_holds_its_tasks_until_they_end() -> None:
    async def go() -> None:
        group = TaskGroup("g")
        started = asyncio.Event()

        async def work() -> str:
            started.set()
            await asyncio.sleep(0.02)
            return "ok"

        group.spawn(work())
        gc.collect()  # asyncio keeps only weak references: the group's is the strong one
        await started.wait()
        assert len(group) == 1
        await asyncio.wait(list(group.tasks))
        assert len(group) == 0
    asyncio.run(go())


def test_close_cancels_what_runs_within_its_bound_and_offer_then_drops_without_a_warning() -> None:
    async def go() -> None:
        group = TaskGroup("g")
        cancelled = asyncio.Event()

        async def forever() -> None:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                cancelled.set()
                raise

        task = group.spawn(forever())
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await group.close(timeout=1.0)
        assert task.cancelled() and cancelled.is_set() and loop.time() - start < 1.0
        late = asyncio.sleep(0)
        assert group.offer(late) is None
        # Closed, not merely dropped: no "coroutine ... was never awaited" at collection.
        assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED
        with pytest.raises(RuntimeError, match="closed"):
            group.spawn(asyncio.sleep(0))
    asyncio.run(go())
