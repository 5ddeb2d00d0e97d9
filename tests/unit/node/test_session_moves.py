"""Session moves through ServiceRuntime, with real ``WebSocketSession`` objects over a fake
client socket and fake worker channels: a key group moves to one worker together and none
resumes before every member reopened (the group barrier); client messages held during the
move follow, in order, after the snapshot; a dead worker's sessions reopen from their
checkpoint, replaying what it does not reflect."""

from __future__ import annotations

import asyncio

from anycore import wire
from anycore.lifecycle import ExitReason
from tests.unit.node.fakes import FakeClock, client_says, run, service, until, websocket

ROOMS = {"/rooms/{room}": {"handler": "app:Room", "key": "room"}}


def frames(worker, session_ids, kinds=(wire.WsOpen, wire.WsMsg, wire.WsClose, wire.SessSnap)):
    return [f for f in worker.sent if type(f) in kinds and f.id in session_ids]


def accept(worker, session, checkpoint=False):
    session.on_frame(wire.WsAccept(session.id, None, [], checkpoint))


@run
async def test_a_key_group_moves_to_one_worker_and_resumes_only_once_every_member_reopened():
    runtime, release = service(FakeClock(), entry="", sessions=ROOMS)
    old, spare = release.start_worker(1), release.start_worker(2)
    first, second = websocket(runtime, "/rooms/lobby"), websocket(runtime, "/rooms/lobby")
    alone = websocket(runtime, "/rooms/other")
    source = first.worker
    assert second.worker is source and source.sockets.keys() >= {first.id, second.id}  # a room is never split
    for session in (first, second, alone):
        accept(session.worker, session)
    target = spare if source is old else old
    assert alone.worker is target  # no key in common: the least-loaded worker
    client_says(first, "before")
    runtime.worker_draining(source)
    snaps = [f for f in source.sent if type(f) is wire.SessSnap and f.id in (first.id, second.id)]
    assert [(s.group == snaps[0].group, s.size, s.detach) for s in snaps] == [(True, 2, True)] * 2
    client_says(first, "held 1")
    client_says(second, "held 2")
    client_says(first, "held 3")
    assert [f.text for f in frames(source, {first.id}, (wire.WsMsg,))] == ["before"]  # the rest is held
    first.on_frame(wire.SessState(first.id, wire.SNAPSHOT, 1, b"state-1", None))
    await until(lambda: not first.snapshots, "the first snapshot to be taken")
    assert not frames(target, {first.id, second.id})  # nobody reopens before the whole group answered
    second.on_frame(wire.SessState(second.id, wire.SNAPSHOT, 0, b"state-2", None))
    await until(lambda: len(frames(target, {first.id, second.id})) == 5, "the group to reopen and resume")
    moved = frames(target, {first.id, second.id})
    opens, messages = moved[:2], moved[2:]
    assert [type(f) for f in opens] == [wire.WsOpen, wire.WsOpen]  # every member open before any message
    assert [(o.mode, o.state, o.from_release, o.size) for o in opens] == [
        ("migrate", b"state-1", "r1", 2), ("migrate", b"state-2", "r1", 2)]
    assert opens[0].group == opens[1].group
    assert [(m.id, m.text) for m in messages] == [(first.id, "held 1"), (first.id, "held 3"), (second.id, "held 2")]
    assert first.worker is target and second.worker is target and runtime.sessions.moved == 2
    assert not frames(target, {alone.id}, (wire.WsMsg, wire.SessSnap))  # a session on a live worker stays put


@run
async def test_a_dead_workers_sessions_reopen_from_their_checkpoint_and_replay_the_rest():
    runtime, release = service(FakeClock(), entry="", sessions=ROOMS)
    release.start_worker(1)
    session = websocket(runtime, "/rooms/lobby")
    dead = session.worker
    accept(dead, session, checkpoint=True)
    other = release.start_worker(2)
    for text in ("m1", "m2", "m3"):
        client_says(session, text)
    session.on_frame(wire.SessState(session.id, wire.CHECKPOINT, 2, b"after-m2", None))
    release.kill(dead)
    assert not session.closed  # the client sees none of it
    await until(lambda: len(frames(other, {session.id})) == 2, "the session to reopen and replay")
    reopened, replayed = frames(other, {session.id})
    assert (type(reopened), reopened.mode, reopened.state, reopened.seq) == (wire.WsOpen, "recover", b"after-m2", 2)
    assert (type(replayed), replayed.text) == (wire.WsMsg, "m3")
    assert session.worker is other and runtime.sessions.recovered == 1


@run
async def test_a_plain_websocket_closes_when_its_worker_dies_and_1012_when_stopped_on_purpose():
    runtime, release = service(FakeClock())
    crashed = release.start_worker(1)
    socket = websocket(runtime, "/ws")
    accept(crashed, socket)
    release.kill(crashed)
    assert socket.worker is None and b"\x03\xf3" in bytes(socket.transport.out)  # closing handshake, code 1011
    drained = release.start_worker(2)
    other = websocket(runtime, "/ws")
    accept(drained, other)
    drained.exit_reason = ExitReason.DRAINED
    release.kill(drained)
    assert b"\x03\xf4" in bytes(other.transport.out)  # close code 1012: a deliberate exit


@run
async def test_a_move_under_way_ends_with_the_service_stop_and_never_reopens_after_it():
    """A stop while a session moves: its client is closed (1012) and the move ends with the
    stop — left running, it would wait out its snapshot and could reopen (migrate) the
    session on the next start's worker for a client that is gone."""
    runtime, release = service(FakeClock(), entry="", sessions=ROOMS)
    source = release.start_worker(1)
    session = websocket(runtime, "/rooms/lobby")
    accept(source, session)
    runtime.worker_draining(source)  # the move begins: a snapshot is asked, the client's messages are held
    assert session.moving and len(runtime.sessions.tasks) == 1
    await runtime.stop()
    assert not runtime.sessions.tasks  # the move ended with the stop
    assert not session.moving and b"\x03\xf4" in bytes(session.transport.out)  # closing handshake, 1012
    release.start_worker(2)  # the next start's worker: nothing is reopened on it
    await asyncio.sleep(0.05)
    assert not runtime.sessions.moved and not runtime.sessions.recovered
