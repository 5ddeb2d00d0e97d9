"""L1 (shared base) — every background task has an owner (trio's nursery idea, long-lived).

A ``TaskGroup`` is owned by one object (a release supervisor, the session placer, the
cluster agent, ...). ``spawn`` starts a task in it; the group keeps a strong reference
until the task ends (asyncio keeps only a weak one, so an unowned task can vanish
mid-flight), logs a task that fails instead of leaving "Task exception was never
retrieved" to the garbage collector, and ``close`` cancels what is left and waits for it,
bounded. Unlike ``asyncio.TaskGroup``, one failing task does not cancel its siblings: a
server's background work (pumping one worker's output, draining one worker) is
independent, and one failure must not stop the rest.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable, Coroutine


class TaskGroup:
    def __init__(self, name: str, on_error: Callable[[str, BaseException], None] | None = None) -> None:
        self.name = name
        self.tasks: set[asyncio.Task[Any]] = set()
        self._on_error = on_error
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any]:
        if self.closed:
            coro.close()  # never started: no "coroutine was never awaited" warning either
            raise RuntimeError(f"task group {self.name} is closed")
        task = asyncio.ensure_future(coro)
        if name:
            task.set_name(f"{self.name}: {name}")
        self.tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def offer(self, coro: Coroutine[Any, Any, Any], name: str | None = None) -> asyncio.Task[Any] | None:
        """``spawn``, or drop ``coro`` (never started) once the group is closed: for work
        that only makes sense while its owner lives (a publish, a restart)."""
        if self.closed:
            coro.close()
            return None
        return self.spawn(coro, name)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None and self._on_error is not None:
            self._on_error(task.get_name(), exc)

    def __len__(self) -> int:
        return len(self.tasks)

    def cancel(self) -> None:
        """Cancel every task now (the group stays usable)."""
        for task in list(self.tasks):
            task.cancel()

    async def close(self, timeout: float = 2.0) -> None:
        """No new tasks; cancel the running ones and wait for them, at most ``timeout``."""
        self.closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
