"""anycore.Session end to end: state carried across deploys, scale-down and worker crashes,
rooms kept on one worker, a failing migrate() aborting the deploy. Real nodes, workers,
websockets clients and kill -9."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import signal
import sys
from pathlib import Path

import pytest
import websockets

from tests.conftest import make_service, wait_for
from tests.e2e.planes import nodes  # noqa: F401 - every test here runs on both data planes (the heavy ones on native only)

# Heavy: the Python gateway's run would prove the same Python code again (tests/e2e/planes.py).
NATIVE_ONLY = pytest.mark.planes("native")

# Two versions of one counter session that store the count under different field names:
# each release's migrate() renames the other's field, so a reply from B proves that B's
# migrate ran on state written by A (without it, B's on_message would fail on self.counter).
COUNTER_A = """
from anycore import Session

VERSION = "A"

class Counter(Session):
    async def on_connect(self):
        self.count = 0

    async def on_message(self, message):
        self.count += 1
        await self.send(f"{VERSION}:{self.count}")

    @classmethod
    def migrate(cls, state, from_release):
        if "counter" in state:
            state["count"] = state.pop("counter")
        return super().migrate(state, from_release)
"""
COUNTER_B = """
from anycore import Session

VERSION = "B"

class Counter(Session):
    async def on_connect(self):
        self.counter = 0

    async def on_message(self, message):
        self.counter += 1
        await self.send(f"{VERSION}:{self.counter}")

    @classmethod
    def migrate(cls, state, from_release):
        if "count" in state:
            state["counter"] = state.pop("count")
        return super().migrate(state, from_release)
"""
COUNTER_CONFIG = """
name = "counter"
entry = ""
workers = 2
[sessions]
"/count" = "app:Counter"
"""


def ws_url(node, path: str) -> str:
    return node.url.replace("http://", "ws://") + path


async def deploy(node, path: Path) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "anycore.cli.main", "deploy", str(path), env=node.env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    return proc.returncode or 0, out.decode()


class Client:
    """One session's client: sends bursts of messages and checks every reply is the next count."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.sent = 0
        self.versions: list[str] = []

    async def burst(self, n: int) -> None:
        for _ in range(n):
            await self.ws.send("inc")
        for _ in range(n):
            self.sent += 1
            version, count = (await asyncio.wait_for(self.ws.recv(), 30)).split(":")
            assert int(count) == self.sent, f"expected count {self.sent}, got {count} (lost, duplicated or reordered)"
            self.versions.append(version)


@NATIVE_ONLY
def test_500_sessions_keep_their_state_across_5_deploys(nodes, tmp_path):
    a = make_service(tmp_path, "a", COUNTER_A, COUNTER_CONFIG)
    b = make_service(tmp_path, "b", COUNTER_B, COUNTER_CONFIG)
    node = nodes.start(a)

    async def scenario() -> None:
        clients = []
        for start in range(0, 500, 50):  # connect in batches: 500 handshakes at once would all queue
            sockets = await asyncio.gather(*(websockets.connect(ws_url(node, "/count")) for _ in range(50)))
            clients.extend(Client(ws) for ws in sockets)
        stop = asyncio.Event()

        async def traffic(client: Client) -> None:
            while not stop.is_set():
                await client.burst(3)
                await asyncio.sleep(random.uniform(0.3, 0.9))

        runners = [asyncio.ensure_future(traffic(c)) for c in clients]
        for i, target in enumerate([b, a, b, a, b]):
            await asyncio.sleep(1.0)
            code, out = await deploy(node, target)
            assert code == 0, out
            assert "dry-run of migrate() on" in out, out
            for runner in runners:
                if runner.done():
                    runner.result()  # a failed client fails the test here, with its reason
        stop.set()
        await asyncio.gather(*runners)
        # Every session saw every deploy's traffic, and ends on B with its count intact.
        await asyncio.gather(*(c.burst(1) for c in clients))
        for client in clients:
            assert client.versions[-1] == "B"
            assert client.sent >= 6
            assert client.ws.close_code is None  # never disconnected
        assert sum(len(set(c.versions)) > 1 for c in clients) == len(clients)  # each one crossed releases
        await asyncio.gather(*(c.ws.close() for c in clients))

    asyncio.run(scenario())
    assert node.output.count("event=session.moved") >= 5


CHAT_DIR = Path(__file__).resolve().parents[2] / "examples" / "chat"


def test_chat_room_reaches_every_member_across_a_deploy(nodes, tmp_path):
    v1 = tmp_path / "chat"
    shutil.copytree(CHAT_DIR, v1)
    v2 = tmp_path / "chat2"
    shutil.copytree(CHAT_DIR, v2)
    (v2 / "app.py").write_text((v2 / "app.py").read_text().replace('f"{self.name}: {message}"', 'f"{self.name}> {message}"'))
    for directory in (v1, v2):  # two workers: the room key, not luck, keeps the members together
        (directory / "anycore.toml").write_text((directory / "anycore.toml").read_text().replace(
            'client_notify', 'workers = 2\nclient_notify'))
    node = nodes.start(v1)
    wait_for(lambda: len(node.ready_workers("chat")) == 2, what="two workers")

    async def read_until(ws, predicate, timeout=15.0):
        seen = []
        while True:
            message = await asyncio.wait_for(ws.recv(), timeout)
            seen.append(message)
            if predicate(message):
                return seen

    async def scenario() -> None:
        names = ["ann", "bob", "cid"]
        members = []
        others = []
        for name in names:  # least-loaded placement alone would spread these over both workers
            members.append(await websockets.connect(ws_url(node, f"/rooms/lobby?name={name}")))
        for name in names:
            others.append(await websockets.connect(ws_url(node, f"/rooms/other?name={name}")))
        for ws in members:  # everyone sees the last join
            await read_until(ws, lambda m: m.startswith("* cid joined lobby (3 here)"))
        deploying = asyncio.ensure_future(deploy(node, v2))
        sent = []
        for i in range(40):  # messages from every member while the deploy runs
            speaker = i % 3
            await members[speaker].send(f"m{i}")
            sent.append((names[speaker], f"m{i}"))
            await asyncio.sleep(0.03)
        code, out = await deploying
        assert code == 0, out
        await members[0].send("after")
        logs = [await read_until(ws, lambda m: m.endswith("after")) for ws in members]
        for log in logs:
            chat = [m for m in log if not m.startswith("*")]
            said = [tuple(m.split("> ", 1) if "> " in m else m.split(": ", 1)) for m in chat]
            # Every message exactly once, and each member's in the order that member sent them
            # (across members the room's order is its arrival order, the same for everyone).
            assert sorted(text for _, text in said) == sorted([m for _, m in sent] + ["after"])
            for name in names:
                mine = [m for who, m in sent if who == name] + (["after"] if name == "ann" else [])
                assert [text for who, text in said if who == name] == mine
            assert any(">" in m for m in chat), "the new release's format never appeared"
            assert any(m.startswith("* the server now runs chat@") for m in log), "client-notify message missing"
        assert logs[0] == logs[1] == logs[2]
        for ws in members:
            assert ws.close_code is None
            await ws.close()
        # Another room heard nothing of the lobby.
        await others[0].send("here")
        heard = await read_until(others[1], lambda m: m.endswith("here"))
        assert not any("m1" in m or "after" in m for m in heard)
        for ws in others:
            await ws.close()

    asyncio.run(scenario())


CRASH = """
from anycore import Session

class Saved(Session):
    checkpoint = True

    async def on_connect(self):
        self.count = 0

    async def on_message(self, message):
        self.count += 1
        await self.send(f"saved:{self.count}")


class Fresh(Session):
    async def on_connect(self):
        self.count = 0
        self.recovered = False

    async def on_recover(self):
        self.count = 0
        self.recovered = True

    async def on_message(self, message):
        self.count += 1
        await self.send(f"{'recovered' if self.recovered else 'fresh'}:{self.count}")
"""
CRASH_CONFIG = """
name = "crash"
entry = ""
workers = 1
[sessions]
"/saved" = "app:Saved"
"/fresh" = "app:Fresh"
"""


def test_worker_kill_keeps_clients_connected_and_checkpoints_resume(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "crash", CRASH, CRASH_CONFIG))
    pid = node.ready_workers("crash")[0]["pid"]

    async def scenario() -> None:
        saved = [await websockets.connect(ws_url(node, "/saved")) for _ in range(5)]
        fresh = await websockets.connect(ws_url(node, "/fresh"))
        await fresh.send("x")
        assert await fresh.recv() == "fresh:1"
        counts = [0] * len(saved)

        async def chat(i: int, n: int) -> None:
            for _ in range(n):
                await saved[i].send("x")
                counts[i] += 1
                reply = await asyncio.wait_for(saved[i].recv(), 30)
                assert reply == f"saved:{counts[i]}", f"session {i}: expected saved:{counts[i]}, got {reply}"
                await asyncio.sleep(0.01)

        talking = asyncio.gather(*(chat(i, 60) for i in range(len(saved))))
        await asyncio.sleep(0.3)
        os.kill(pid, signal.SIGKILL)  # mid-traffic: some messages are in the dead worker's hands
        await talking
        await fresh.send("x")
        assert await asyncio.wait_for(fresh.recv(), 30) == "recovered:1"
        for ws in [*saved, fresh]:
            assert ws.close_code is None
            await ws.close()

    asyncio.run(scenario())
    wait_for(lambda: any(w["pid"] != pid for w in node.ready_workers("crash")), what="a replacement worker")
    assert "event=session.recovered" in node.output
    assert node.service("crash")["sessions_recovered"] == 6
    assert "sessions moved 0, recovered after a crash 6" in node.cli("ps").stdout


FAILING_MIGRATE = COUNTER_A.replace('VERSION = "A"', 'VERSION = "C"').replace(
    '        if "counter" in state:', '        raise ValueError("cannot read this state")\n        if "counter" in state:')


def test_failing_migrate_aborts_the_deploy_and_the_old_release_keeps_every_session(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "a", COUNTER_A, COUNTER_CONFIG))
    bad = make_service(tmp_path, "bad", FAILING_MIGRATE, COUNTER_CONFIG)

    async def scenario() -> None:
        clients = [Client(await websockets.connect(ws_url(node, "/count"))) for _ in range(10)]
        await asyncio.gather(*(c.burst(2) for c in clients))
        code, out = await deploy(node, bad)
        assert code != 0, out
        assert "migrate() of the new release failed on 10 of 10 live sessions" in out, out
        assert "cannot read this state" in out, out
        await asyncio.gather(*(c.burst(2) for c in clients))
        for client in clients:
            assert set(client.versions) == {"A"}
            assert client.ws.close_code is None
            await client.ws.close()

    asyncio.run(scenario())
    live = node.service("counter")
    assert live["failed"] and "migrate()" in live["failed"][-1]["reason"]


def test_sessions_move_off_a_worker_that_is_scaled_down(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "a", COUNTER_A, COUNTER_CONFIG.replace("workers = 2", "min_workers = 2\nmax_workers = 2")))
    wait_for(lambda: len(node.ready_workers("counter")) == 2, what="two workers")

    async def scenario() -> None:
        clients = [Client(await websockets.connect(ws_url(node, "/count"))) for _ in range(20)]
        await asyncio.gather(*(c.burst(2) for c in clients))
        result = await asyncio.to_thread(node.cli, "scale", "counter", "--min", "1", "--max", "1")
        assert result.returncode == 0, result.stderr
        # Traffic goes on while one worker drains; every count continues.
        for _ in range(10):
            await asyncio.gather(*(c.burst(1) for c in clients))
            if len(await asyncio.to_thread(node.ready_workers, "counter")) == 1:
                break
            await asyncio.sleep(0.3)
        await asyncio.to_thread(wait_for, lambda: len(node.ready_workers("counter")) == 1, 30, 0.2, "scale-down to 1 worker")
        await asyncio.gather(*(c.burst(2) for c in clients))
        for client in clients:
            assert client.ws.close_code is None
            await client.ws.close()

    asyncio.run(scenario())
    assert "event=session.moved" in node.output


def test_sessions_move_off_a_recycled_worker(nodes, tmp_path):
    """max_requests recycles a worker (its replacement is ready first); its sessions move."""
    code = COUNTER_A + '''
async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(os.getpid()).encode()})
'''
    config = COUNTER_CONFIG.replace('entry = ""', 'entry = "app:app"\nmax_requests = 20').replace("workers = 2", "workers = 1")
    node = nodes.start(make_service(tmp_path, "a", "import os\n" + code, config))
    first = node.ready_workers("counter")[0]["pid"]

    async def scenario() -> None:
        clients = [Client(await websockets.connect(ws_url(node, "/count"))) for _ in range(10)]
        await asyncio.gather(*(c.burst(2) for c in clients))
        import httpx

        async with httpx.AsyncClient() as http:
            for _ in range(25):
                await http.get(node.url + "/")
        await asyncio.to_thread(wait_for, lambda: all(w["pid"] != first for w in node.ready_workers("counter")), 30, 0.2,
                                "the recycled worker to be replaced")
        await asyncio.gather(*(c.burst(2) for c in clients))
        for client in clients:
            assert client.ws.close_code is None
            await client.ws.close()

    asyncio.run(scenario())
    assert "event=worker.recycling" in node.output and "event=session.moved" in node.output


@NATIVE_ONLY
def test_a_busy_room_loses_no_broadcast_through_deploys(nodes, tmp_path):
    """Ten members all talking while the room moves three times: when a key's sessions move
    together, every member's messages reach every member (a member snapshotted before
    another's pending broadcast, or opened after it, would miss it)."""
    versions = []
    for i in range(2):
        directory = tmp_path / f"chat{i}"
        shutil.copytree(CHAT_DIR, directory)
        (directory / "anycore.toml").write_text((directory / "anycore.toml").read_text().replace(
            'client_notify = "app:notify"', "workers = 2"))
        (directory / "app.py").write_text((directory / "app.py").read_text() + f"\nVERSION = {i}\n")
        versions.append(directory)
    node = nodes.start(versions[0])

    async def scenario() -> None:
        names = [f"p{i}" for i in range(10)]
        members = [await websockets.connect(ws_url(node, f"/rooms/busy?name={name}")) for name in names]
        heard: list[list[str]] = [[] for _ in members]

        async def listen(i: int) -> None:
            try:
                while True:
                    heard[i].append(await members[i].recv())
            except websockets.ConnectionClosed:
                pass

        listeners = [asyncio.ensure_future(listen(i)) for i in range(len(members))]
        stop = asyncio.Event()
        sent: list[str] = []

        async def talk(i: int) -> None:
            n = 0
            while not stop.is_set():
                n += 1
                text = f"{names[i]}-{n}"
                await members[i].send(text)
                sent.append(text)
                await asyncio.sleep(random.uniform(0.005, 0.02))

        talkers = [asyncio.ensure_future(talk(i)) for i in range(len(members))]
        for target in (versions[1], versions[0], versions[1]):
            await asyncio.sleep(0.3)
            code, out = await deploy(node, target)
            assert code == 0, out
        stop.set()
        await asyncio.gather(*talkers)
        expected = sorted(sent)

        def complete() -> bool:
            return all(sorted(m.split(": ", 1)[1] for m in log if not m.startswith("*")) == expected for log in heard)

        for _ in range(200):
            if complete():
                break
            await asyncio.sleep(0.05)
        for i, log in enumerate(heard):
            got = sorted(m.split(": ", 1)[1] for m in log if not m.startswith("*"))
            missing = sorted(set(expected) - set(got))
            assert got == expected, f"{names[i]} missed {len(missing)} of {len(expected)}: {missing[:10]}"
        for ws in members:
            assert ws.close_code is None
            await ws.close()
        await asyncio.gather(*listeners)

    asyncio.run(scenario())
    assert node.output.count("event=session.moved") >= 3
