"""EmbeddedNats.restart() against a real nats-server, in the interleaving that broke it: the
supervisor starts the new server and settles the restart before ``_terminate`` has seen the
old one go (``_terminate`` polls every 20 ms; a restart takes ~30 ms). ``restart`` then
awaited ``shield(None)``, a TypeError, and the storage healer's ``recover`` failed with
"An asyncio.Future, a coroutine or an awaitable is required" (seen in a full-suite run of
tests/e2e/test_node_storage.py). The test forces that order instead of hoping for it."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from anycore.cluster import embedded
from anycore.cluster.embedded import EmbeddedNats, NatsState


def test_restart_returns_when_the_supervisor_settles_it_before_the_old_server_is_seen_gone(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_terminate = embedded._terminate

    async def go() -> None:
        nats = EmbeddedNats(tmp_path / "home")
        (tmp_path / "home").mkdir()
        await nats.start()
        try:
            first = nats.process.pid if nats.process else 0

            async def terminate_then_lag(pid: int, timeout: float, process: object = None) -> None:
                await real_terminate(pid, timeout, process)  # type: ignore[arg-type]
                # Return only once the supervisor has started the new server and settled the restart.
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 10
                while nats._restart_wanted is not None and loop.time() < deadline:
                    await asyncio.sleep(0.005)

            monkeypatch.setattr(embedded, "_terminate", terminate_then_lag)
            await asyncio.wait_for(nats.restart(), 15)
            assert nats.state is NatsState.RUNNING and nats.process is not None and nats.process.pid != first
        finally:
            monkeypatch.setattr(embedded, "_terminate", real_terminate)
            await nats.stop()

    asyncio.run(go())
