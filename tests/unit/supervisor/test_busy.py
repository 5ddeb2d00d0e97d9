"""A worker's busy cores (``WorkerHandle.sample_busy``), the scaler's CPU input, with a
fake CPU clock; and ``process_cpu_seconds`` against this very process."""

from __future__ import annotations

import asyncio
import os
import time

from anycore.supervisor.worker import WorkerHandle, process_cpu_seconds


def handle(cpu: list[float | None], reads: list[int]) -> WorkerHandle:
    def cpu_time(pid: int) -> float | None:
        reads.append(pid)
        return cpu[0]

    noop = lambda *a: None  # noqa: E731
    worker = WorkerHandle(1, "r1", 8, 0.0, noop, noop, noop, noop, clock=lambda: 0.0, cpu_time=cpu_time)
    worker.pid = 4242
    return worker


def test_busy_is_cpu_seconds_over_wall_seconds_measured_once_per_interval() -> None:
    async def main() -> None:
        cpu: list[float | None] = [10.0]
        reads: list[int] = []
        worker = handle(cpu, reads)
        assert worker.sample_busy(100.0, 1.0) == 0.0  # the first sample only marks: startup CPU never counts
        cpu[0] = 10.9
        assert worker.sample_busy(100.5, 1.0) == 0.0 and len(reads) == 1  # within the interval: not read again
        assert abs(worker.sample_busy(101.0, 1.0) - 0.9) < 1e-9
        cpu[0] = 11.4
        assert abs(worker.sample_busy(103.0, 1.0) - 0.25) < 1e-9  # 0.5 s of CPU over 2 s
        cpu[0] = None  # the process is gone: the last figure stays
        assert abs(worker.sample_busy(105.0, 1.0) - 0.25) < 1e-9
        assert worker.info(105.0, 0, 0)["cpu"] == 0.25  # `anycore ps` shows it
        assert reads == [4242] * 4  # at 100, 101, 103 and 105

    asyncio.run(main())


def test_process_cpu_seconds_reads_this_process_and_none_for_no_process() -> None:
    before = process_cpu_seconds(os.getpid())
    deadline = time.process_time() + 0.05
    while time.process_time() < deadline:
        pass
    after = process_cpu_seconds(os.getpid())
    assert before is not None and after is not None and after >= before + 0.02
    assert process_cpu_seconds(2**22 + 12345) is None
