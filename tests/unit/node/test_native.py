"""node/native.py against a fake gateway end: the SOCK_SEQPACKET socketpair the real
``anycore-gateway`` would hold, read and written by the test with ``anycore.dataplane``.

The service is a real ``ServiceRuntime`` (with the fake release of tests/unit/node/fakes)
and its workers real ``WorkerHandle``s with a real data socket each, so what is checked is
the sequence the node sends as it lives: the service, each ready worker with its data
socket's fd, the shift as one message, draining, removal; and what it does with the
gateway's Stats, WorkerIdle, WorkerLost and with the gateway's death."""

from __future__ import annotations

import asyncio
import io
import signal
import socket

import msgspec

from anycore import dataplane, wire
from anycore.config import ServiceConfig
from anycore.gateway.http import Limits
from anycore.lifecycle import WorkerState
from anycore.log import NodeLog
from anycore.node.native import NativeGateway
from anycore.node.service import ServiceRuntime
from anycore.stats import BUCKETS
from anycore.supervisor.worker import WorkerHandle
from tests.unit.node.fakes import FakeClock, FakeRelease, run, until


class Gateway:
    """The gateway's end of the control socket."""

    def __init__(self) -> None:
        self.sock, node_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.setblocking(False)
        self.node_end = node_end

    async def read(self) -> tuple[dataplane.ToGateway, list[int]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while True:
            try:
                data, fds, _, _ = socket.recv_fds(self.sock, 65536, 4)
                return dataplane.to_gateway.decode(data), fds
            except BlockingIOError:
                assert loop.time() < deadline, "no message from the node"
                await asyncio.sleep(0.002)

    async def expect(self, *messages: dataplane.ToGateway) -> list[list[int]]:
        fds = []
        for expected in messages:
            message, passed = await self.read()
            assert message == expected
            fds.append(passed)
        return fds

    def say(self, message: dataplane.FromGateway) -> None:
        self.sock.send(dataplane.encode(message))

    def nothing_more(self) -> None:
        try:
            extra = self.sock.recv(65536)
        except BlockingIOError:
            return
        raise AssertionError(f"unexpected message {dataplane.to_gateway.decode(extra)!r}")


class Recorder:
    """The worker's control socket as the node writes it (``WorkerHandle.proto``)."""

    def __init__(self) -> None:
        self.sent: list[wire.Frame] = []

    def send(self, frame: wire.Frame) -> None:
        self.sent.append(frame)


def worker(release: FakeRelease, worker_id: int, kills: list[tuple[int, int]]) -> tuple[WorkerHandle, socket.socket]:
    handle = WorkerHandle(worker_id, release.release, 4, 0.0, lambda w: None, lambda w, r: None, lambda w, e, x: None,
                          lambda w: None, kill=lambda pid, sig: kills.append((pid, sig)))
    handle.pid = 1000 + worker_id
    handle.proto = Recorder()  # type: ignore[assignment]
    handle.data, far = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    release.workers[worker_id] = handle  # type: ignore[assignment]
    return handle, far


def setup() -> tuple[NativeGateway, Gateway, ServiceRuntime, list[str]]:
    gone: list[str] = []
    native = NativeGateway(NodeLog(io.StringIO()), Limits(), "anycore-gateway", on_gone=gone.append)
    fake = Gateway()
    native.attach(fake.node_end)
    config = msgspec.convert({"name": "svc", "routes": ["/api"], "max_queue": 7, "timeout": 3.0}, ServiceConfig)
    runtime = ServiceRuntime("svc", "/srv", config, "", NodeLog(io.StringIO()), ("127.0.0.1", 8000), clock=FakeClock())
    runtime.dataplane = native  # as Node.create_service does, before the first release
    return native, fake, runtime, gone


def service(release: str, running: bool = True) -> dataplane.Service:
    return dataplane.Service("svc", ["/api"], release, running, 100 * 1024 * 1024, 7, 64 * 1024 * 1024, 3.0)


@run
async def test_a_first_deploy_tells_the_gateway_the_service_its_workers_with_their_data_sockets_and_the_shift():
    native, fake, runtime, _ = setup()
    assert runtime.data_sockets  # so the release supervisor gives each worker a data socket
    release = FakeRelease(runtime, "r1")
    kills: list[tuple[int, int]] = []
    first, far = worker(release, 1, kills)
    runtime.worker_ready(first)  # warm, before the shift: the gateway learns the service first
    (_, fds), = [await fake.expect(service("", running=False), dataplane.AddWorker("svc", "r1", 1, 4))]
    assert first.data is None  # handed over: the node's copy is closed
    data = socket.socket(fileno=fds[0])
    far.sendall(b"frames")
    assert data.recv(16) == b"frames"  # the fd passed is the worker's data socket
    runtime.shift(release, "/srv", runtime.config)  # type: ignore[arg-type]
    native.add_service(runtime)  # the deployer, right after the shift
    await fake.expect(dataplane.Shift("svc", "r1"), service("r1"), service("r1"))
    fake.nothing_more()


@run
async def test_a_deploy_shift_is_one_message_then_the_old_workers_drain_and_stop_only_once_idle():
    native, fake, runtime, _ = setup()
    kills: list[tuple[int, int]] = []
    old_release = FakeRelease(runtime, "r1")
    old, _ = worker(old_release, 1, kills)
    runtime.worker_ready(old)
    runtime.shift(old_release, "/srv", runtime.config)  # type: ignore[arg-type]
    native.add_service(runtime)
    await fake.expect(service("", False), dataplane.AddWorker("svc", "r1", 1, 4), dataplane.Shift("svc", "r1"),
                      service("r1"), service("r1"))
    new_release = FakeRelease(runtime, "r2")
    new, _ = worker(new_release, 2, kills)
    runtime.worker_ready(new)
    await fake.expect(dataplane.AddWorker("svc", "r2", 2, 4))
    runtime.shift(new_release, "/srv", runtime.config)  # type: ignore[arg-type]
    await fake.expect(dataplane.Shift("svc", "r2"), service("r2"), dataplane.Accepting(1, False))
    # The retire: the old worker drains. Its Stop waits for the gateway's WorkerIdle.
    runtime.worker_draining(old)
    old.stop()
    await asyncio.sleep(0.01)
    assert wire.Stop() not in old.proto.sent  # type: ignore[union-attr]
    fake.say(dataplane.WorkerIdle(1))
    await until(lambda: wire.Stop() in old.proto.sent, "the Stop after WorkerIdle")  # type: ignore[union-attr]
    old_release.workers.pop(1)
    runtime.worker_lost(old)  # its control socket's EOF
    await fake.expect(dataplane.RemoveWorker(1))
    fake.nothing_more()


@run
async def test_a_worker_already_idle_when_its_drain_begins_gets_its_stop_at_once():
    native, fake, runtime, _ = setup()
    release = FakeRelease(runtime, "r1")
    handle, _ = worker(release, 1, [])
    runtime.worker_ready(handle)
    await fake.expect(service("", False), dataplane.AddWorker("svc", "r1", 1, 4))
    native.stop_accepting(handle)  # as at a shift, for the old release's workers
    await fake.expect(dataplane.Accepting(1, False))
    fake.say(dataplane.WorkerIdle(1))
    await until(lambda: 1 in native.idle, "the WorkerIdle")
    runtime.worker_draining(handle)
    handle.stop()
    assert handle.proto.sent == [wire.Stop()]  # type: ignore[union-attr]
    fake.nothing_more()  # already idle: no second Accepting(false)


@run
async def test_stats_set_the_routers_counts_the_scaler_and_ps_read():
    native, fake, runtime, _ = setup()
    release = FakeRelease(runtime, "r1")
    a, _ = worker(release, 1, [])
    b, _ = worker(release, 2, [])
    runtime.worker_ready(a)
    runtime.worker_ready(b)
    runtime.shift(release, "/srv", runtime.config)  # type: ignore[arg-type]
    native.add_service(runtime)
    fake.say(dataplane.Stats("svc", 5, [(1, 3), (2, 1)], [(1, 10), (2, 4)], [("r1", 200, 13), ("r1", 503, 2)],
                             [("queue_full", 2)]))
    await until(lambda: runtime.router.served == 14, "the Stats")
    assert (runtime.inflight(1), runtime.inflight(2), runtime.router.inflight) == (3, 1, 4)
    assert (runtime.served_by(1), runtime.queued, runtime.router.rejected) == (10, 5, 2)
    assert native.errors == {503: 2}
    # Counts are cumulative: the next Stats replaces them; a worker absent has nothing in flight.
    fake.say(dataplane.Stats("svc", 0, [(2, 2)], [(1, 12), (2, 4)], [("r1", 200, 15), ("r1", 503, 2)], []))
    await until(lambda: runtime.router.served == 16, "the second Stats")
    assert (runtime.inflight(1), runtime.inflight(2), runtime.queued) == (0, 2, 0)
    assert runtime.info()["queued"] == 0 and runtime.info()["served"] == 16


@run
async def test_an_unknown_message_is_ignored_a_lost_worker_is_killed_and_the_gateways_death_is_reported_once():
    native, fake, runtime, gone = setup()
    release = FakeRelease(runtime, "r1")
    kills: list[tuple[int, int]] = []
    handle, _ = worker(release, 1, kills)
    runtime.worker_ready(handle)
    await fake.expect(service("", False), dataplane.AddWorker("svc", "r1", 1, 4))
    fake.sock.send(msgspec.msgpack.encode([99, "from a newer gateway"]))
    fake.say(dataplane.WorkerLost(1, 2))
    await until(lambda: kills, "the kill of the lost worker")
    assert kills == [(1001, signal.SIGKILL)]
    runtime.worker_draining(handle)  # a drain under way when the gateway dies...
    fake.sock.close()
    await until(lambda: gone, "the gateway's death")
    assert handle.stop_gate is not None and handle.stop_gate.done()  # ...lets its Stop go
    native.send(dataplane.RemoveWorker(1))  # nothing to send to: dropped, no error
    await asyncio.sleep(0.01)
    assert len(gone) == 1


@run
async def test_a_draining_worker_whose_data_socket_closes_as_it_exits_is_not_killed():
    # After Stop a worker closes its sockets on its way to exit(0); the gateway may report
    # its data socket lost first. Killing it then made a clean scale-down "killed by SIGKILL".
    native, fake, runtime, _ = setup()
    release = FakeRelease(runtime, "r1")
    kills: list[tuple[int, int]] = []
    draining, _ = worker(release, 1, kills)
    serving, _ = worker(release, 2, kills)
    for handle in (draining, serving):
        handle.life.to(WorkerState.STARTING)
        handle.life.to(WorkerState.READY)
        runtime.worker_ready(handle)
    await fake.expect(service("", False), dataplane.AddWorker("svc", "r1", 1, 4), dataplane.AddWorker("svc", "r1", 2, 4))
    draining.life.to(WorkerState.DRAINING)  # as ReleaseSupervisor.drain_worker does
    runtime.worker_draining(draining)
    fake.say(dataplane.WorkerLost(1, 0))
    fake.say(dataplane.WorkerLost(2, 0))  # a serving worker's lost data socket still kills it
    await until(lambda: kills, "the kill of the serving worker")
    await asyncio.sleep(0.01)
    assert kills == [(1002, signal.SIGKILL)]


@run
async def test_the_gateways_crash_verdicts_become_the_node_log_lines_of_the_python_gateway():
    log = io.StringIO()
    native, fake, runtime, _ = setup()
    native.log = NodeLog(log)
    native.add_service(runtime)
    fake.say(dataplane.RequestCrashed("svc", 3, "retry", "GET", "/hold", 1.0))
    fake.say(dataplane.RequestCrashed("svc", 4, "quarantine", "GET", "/poison", 2.0))
    fake.say(dataplane.RequestCrashed("svc", 5, "fail", "POST", "", 1.0))
    await until(lambda: log.getvalue().count("\n") >= 3, "three log lines")
    retried, quarantined, failed = log.getvalue().splitlines()
    assert "event=request.retried service=svc method=GET path=/hold dead_worker=3" in retried
    assert "event=request.quarantined service=svc method=GET path=/poison crashed_workers=2" in quarantined
    assert "event=request.failed" in failed and "method=POST" in failed and "status=502" in failed
    assert "path=" not in failed  # the gateway keeps no copy of an unsafe request
    assert runtime.quarantined == 1  # `anycore ps` shows it


def histogram(*at: tuple[int, int]) -> list[int]:
    counts = [0] * len(BUCKETS)
    for index, n in at:
        counts[index] = n
    return counts


@run
async def test_stats_feed_the_nodes_request_stats_by_release_what_metrics_reads():
    native, fake, runtime, _ = setup()
    native.add_service(runtime)
    fake.say(dataplane.Stats("svc", 0, [], [], [("r1", 200, 5), ("", 503, 1)], [("queue_full", 1)],
                             [("r1", histogram((3, 5)), 0.004, histogram((0, 5)), 0.0002), ("", histogram((0, 1)), 0.0, histogram(), 0.0)],
                             connections=2))
    await until(lambda: ("svc", "r1") in runtime.stats.releases, "the first Stats")
    r1 = runtime.stats.releases[("svc", "r1")]
    assert r1.statuses == {200: 5} and runtime.stats.releases[("svc", "")].statuses == {503: 1}
    assert (r1.duration.counts[3], r1.duration.count, r1.duration.total) == (5, 5, 0.004)
    assert (r1.queue_wait.counts[0], r1.queue_wait.count) == (5, 5)
    assert runtime.stats.rejected == {("svc", "queue_full"): 1}
    assert len(native.connections) == 2
    # Cumulative: only what is new is added (the node's own counts may have moved meanwhile).
    r1.statuses[200] += 1  # as if the node had counted one itself
    fake.say(dataplane.Stats("svc", 0, [], [], [("r1", 200, 7), ("", 503, 1)], [("queue_full", 1), ("deadline", 1)],
                             [("r1", histogram((3, 6), (10, 1)), 0.1, histogram((0, 7)), 0.0003)]))
    await until(lambda: r1.duration.count == 7, "the second Stats")
    assert r1.statuses == {200: 8} and (r1.duration.counts[3], r1.duration.counts[10]) == (6, 1)
    assert abs(r1.duration.total - 0.1) < 1e-9 and r1.queue_wait.count == 7
    assert runtime.stats.rejected == {("svc", "queue_full"): 1, ("svc", "deadline"): 1}
    # A new gateway counts from zero again: its counts are added whole.
    fake.say(dataplane.Stats("svc", 0, [], [], [("r1", 200, 1)], [], [("r1", histogram((3, 1)), 0.001, histogram((0, 1)), 0.0)]))
    await until(lambda: r1.duration.count == 8, "a new gateway's Stats")
    assert r1.statuses == {200: 9} and r1.duration.counts[3] == 7


async def everything(fake: Gateway) -> list[tuple[dataplane.ToGateway, list[int]]]:
    """Every message the node sent so far (read until the socket is empty for a moment)."""
    out = []
    while True:
        try:
            out.append(await asyncio.wait_for(fake.read(), 0.05))
        except (asyncio.TimeoutError, AssertionError):
            return out


@run
async def test_a_restarted_gateway_is_told_every_service_and_live_worker_again_with_a_dup_of_its_data_socket():
    native, fake, runtime, _ = setup()
    release = FakeRelease(runtime, "r1")
    a, far_a = worker(release, 1, [])
    b, _ = worker(release, 2, [])
    gone, _ = worker(release, 3, [])
    for handle in (a, b, gone):
        runtime.worker_ready(handle)
    runtime.shift(release, "/srv", runtime.config)  # type: ignore[arg-type]
    native.add_service(runtime)
    native.stop_accepting(b)  # draining when the gateway dies
    native.remove_worker(gone)
    await everything(fake)
    # The gateway dies; a new one is attached (as _restart does, after _spawn's Settings and Listen).
    fake.sock.close()
    await until(lambda: native._gone, "the death")
    new = Gateway()
    native.control, native._gone = None, False
    native.attach(new.node_end)
    native._replay()
    sent = await everything(new)
    assert [m for m, _ in sent] == [service("r1"), dataplane.AddWorker("svc", "r1", 1, 4),
                                    dataplane.AddWorker("svc", "r1", 2, 4), dataplane.Accepting(2, False)]
    data = socket.socket(fileno=sent[1][1][0])
    far_a.sendall(b"still there")
    assert data.recv(16) == b"still there"  # the same data socket: the worker was not restarted
    native.remove_worker(a)
    assert 1 not in native._data  # its dup closes with it


def test_settings_carry_the_first_request_id_of_a_gateway_generation():
    settings = dataplane.Settings("n", 10, 100, 1.0, 1.0, 2, 3 << 40)
    assert dataplane.to_gateway.decode(dataplane.encode(settings)) == settings
    assert dataplane.to_gateway.decode(msgspec.msgpack.encode([2, "n", 10, 100, 1.0, 1.0])).first_id == 0  # an older node
    assert wire.decoder.decode(wire.encode(wire.GatewayReset(1 << 40))[4:]) == wire.GatewayReset(1 << 40)


@run
async def test_the_unrouted_answers_count_under_service_empty_in_the_nodes_request_stats():
    native, fake, runtime, _ = setup()
    fake.say(dataplane.Stats("", 0, [], [], [("", 404, 3), ("", 503, 1)], [("no_route", 3), ("starting", 1)],
                             [("", histogram((0, 4)), 0.0, histogram(), 0.0)], connections=1))
    await until(lambda: ("", "") in native.stats.releases, "the Stats of service \"\"")
    assert native.stats.releases[("", "")].statuses == {404: 3, 503: 1}
    assert native.stats.rejected == {("", "no_route"): 3, ("", "starting"): 1}
    assert native.stats.releases[("", "")].duration.count == 4 and len(native.connections) == 1
    # The unrouted answers and the connections' own refusals are gateway errors, as the Python
    # gateway counts them (the dashboard's "gateway errors").
    assert native.errors == {404: 3, 503: 1}
    fake.say(dataplane.Stats("", 0, [], [], [("", 404, 3), ("", 503, 1)], [], [], refused=[(400, 2), (431, 1)]))
    await until(lambda: native.errors.get(400) == 2, "the refusals")
    assert native.errors == {404: 3, 503: 1, 400: 2, 431: 1}
