"""The gateway owns its one background task, the sweeper: ``start`` spawns it in the
gateway's TaskGroup, ``stop`` cancels it and waits; a sweeper that fails is logged.

One real listening socket on 127.0.0.1 (``start`` opens it); no traffic is sent.
"""

from __future__ import annotations

import asyncio
import io

from anycore.gateway.http import Limits
from anycore.gateway.server import Gateway
from anycore.log import NodeLog


class Swept:
    """Stands in for a connection in ``Gateway.connections``: counts the sweeper's checks."""

    def __init__(self, fail: bool = False) -> None:
        self.checks = 0
        self.fail = fail

    def check_due(self, now: float) -> None:
        self.checks += 1
        if self.fail:
            raise RuntimeError("broken connection")

    def shutdown(self) -> None:
        pass

    def abort(self) -> None:
        pass


async def wait_until(predicate, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_the_sweeper_runs_while_the_gateway_listens_and_stops_with_it() -> None:
    async def go() -> None:
        gw = Gateway(NodeLog(stream=io.StringIO()), Limits())
        conn = Swept()
        gw.connections.add(conn)  # type: ignore[arg-type]
        await gw.start("127.0.0.1", 0)
        (sweeper,) = gw.tasks.tasks
        await wait_until(lambda: conn.checks >= 2)
        gw.connections.discard(conn)  # type: ignore[arg-type]
        await gw.stop(timeout=1.0)
        assert sweeper.cancelled() and not gw.tasks.tasks and gw.tasks.closed
    asyncio.run(go())


def test_a_sweeper_that_fails_is_logged_not_lost() -> None:
    async def go() -> None:
        stream = io.StringIO()
        gw = Gateway(NodeLog(stream=stream), Limits())
        gw.connections.add(Swept(fail=True))  # type: ignore[arg-type]
        await gw.start("127.0.0.1", 0)
        await wait_until(lambda: not gw.tasks.tasks)
        assert "event=gateway.task_failed" in stream.getvalue() and "broken connection" in stream.getvalue()
        gw.connections.clear()
        await gw.stop(timeout=1.0)
    asyncio.run(go())
