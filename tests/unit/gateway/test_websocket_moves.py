"""A Session's move as a state: MoveState along MOVES, driven as node/sessions.py drives it.

The session runs over an in-memory transport; the client speaks real (masked) WebSocket
frames, the workers are recording ``FakeChannel``s. The session needs an event loop only
because it reads the loop's clock and makes snapshot futures, so each test runs in one.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Awaitable, Callable

import msgspec
import pytest
from websockets.frames import Frame, Opcode

from anycore import wire
from anycore.errors import IllegalTransition
from anycore.gateway.states import MOVES, MoveState
from anycore.gateway.websocket import WebSocketSession

from tests.unit.gateway.fakes import FakeChannel, FakeTransport, reachable as reachable_in

M = MoveState
HANDSHAKE = (b"GET /room HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def run(test: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(test())  # type: ignore[arg-type]


def session(worker: FakeChannel) -> tuple[WebSocketSession, FakeTransport]:
    """An accepted Session (handler set) on ``worker``, as SessionPlacer.open leaves it."""
    transport = FakeTransport()
    s = WebSocketSession(transport, ("127.0.0.1", 40000), ("127.0.0.1", 8080))
    assert s.start(HANDSHAKE) is not None
    frame = s.open_frame("/room", b"/room", b"", [], "")
    s.handler, s.key = "Room", "lobby"
    s.opened = msgspec.structs.replace(frame, handler="Room", key="lobby")
    s.worker, s.release = worker, worker.release
    worker.sockets[s.id] = s
    s.on_frame(wire.WsAccept(s.id, None, []))
    assert s.accepted and transport.data.startswith(b"HTTP/1.1 101")
    transport.take()
    return s, transport


def client_says(s: WebSocketSession, text: str) -> None:
    s.data_received(Frame(Opcode.TEXT, text.encode()).serialize(mask=True))


def messages(worker: FakeChannel) -> list[Any]:
    return [f.text if type(f) is wire.WsMsg else type(f).__name__ for f in worker.frames]


def test_the_table_is_closed() -> None:
    assert set(MOVES) == set(MoveState)
    assert MOVES[M.CLOSED] == frozenset()


def test_the_table_keeps_the_move_rules() -> None:
    def reachable(start: MoveState, avoid: set[MoveState]) -> set[MoveState]:
        return reachable_in(MOVES, start, avoid)

    # No session reopens on a new worker without having held its messages first, nor
    # without its old worker detached (its snapshot answered or failed).
    assert M.REOPENING not in reachable(M.ATTACHED, {M.HELD})
    assert M.REOPENING not in reachable(M.ATTACHED, {M.DETACHED})
    # A reopened session is not given up (its new worker has it); a given-up one stays so.
    assert M.CLOSED not in MOVES[M.REOPENING] and not reachable(M.CLOSED, set())
    # Every move ends: attached again, or given up.
    assert all(M.ATTACHED in reachable(s, set()) or M.CLOSED in reachable(s, set())
               for s in (M.HELD, M.DETACHED, M.REOPENING))


def test_a_move_walks_attached_held_detached_reopening_attached_and_keeps_order() -> None:
    async def go() -> None:
        old, new = FakeChannel(1, "svc@1"), FakeChannel(2, "svc@2")
        s, _ = session(old)
        client_says(s, "m0")
        assert s.move is M.ATTACHED and not s.moving and messages(old) == ["m0"]
        s.hold()
        assert s.move is M.HELD and s.moving
        snapshot = s.request_snapshot(True, "g", 1)
        client_says(s, "m1")  # held: neither worker gets it
        assert messages(old) == ["m0", "SessSnap"]
        s.detach()
        assert s.move is M.DETACHED and s.moving and s.worker is None
        assert await snapshot is None  # the old worker is gone: its pending snapshot fails
        client_says(s, "m2")
        s.reopen(new, "recover", None, "svc@1", "g", 1)
        assert s.move is M.REOPENING and s.moving and s.worker is new and s.id in new.sockets
        assert messages(new) == ["WsOpen"]  # the held messages wait for resume
        s.resume()
        assert s.move is M.ATTACHED and not s.moving
        assert messages(new) == ["WsOpen", "m1", "m2"]
        client_says(s, "m3")  # attached again: straight to the new worker
        assert messages(new)[-1] == "m3" and messages(old) == ["m0", "SessSnap"]
    run(go)


def test_a_client_close_during_the_move_follows_the_held_messages() -> None:
    async def go() -> None:
        old, new = FakeChannel(1), FakeChannel(2)
        s, _ = session(old)
        s.hold()
        client_says(s, "bye soon")
        s.data_received(Frame(Opcode.CLOSE, b"\x03\xe8done").serialize(mask=True))  # 1000
        s.reopen(new, "recover", None, "svc@1")
        s.resume()
        assert messages(new) == ["WsOpen", "bye soon", "WsClose"]
        close = new.frames[-1]
        assert type(close) is wire.WsClose and close.code == 1000
    run(go)


def test_hold_on_a_moving_session_changes_nothing() -> None:
    async def go() -> None:
        s, _ = session(FakeChannel())
        s.hold()
        client_says(s, "kept")
        s.hold()
        assert s.move is M.HELD and s.moving and len(s._held) == 1
        s.detach()
        s.hold()
        assert s.move is M.DETACHED
    run(go)


def test_abandon_closes_the_client_and_ends_the_move() -> None:
    async def go() -> None:
        s, transport = session(FakeChannel())
        s.hold()
        client_says(s, "lost")
        s.abandon()
        assert s.move is M.CLOSED and not s.moving and s.worker is None and s._held == []
        # The client got a close frame (opcode 0x88) with code 1011.
        assert transport.data[:1] == b"\x88" and transport.data[2:4] == (1011).to_bytes(2, "big")
        with pytest.raises(IllegalTransition):
            s.hold()  # a closed move does not start again
    run(go)


@pytest.mark.parametrize("call", ["resume", "reopen", "abandon", "detach-then-resume"])
def test_moves_off_the_table_raise(call: str) -> None:
    async def go() -> None:
        s, _ = session(FakeChannel(1))
        with pytest.raises(IllegalTransition):
            if call == "resume":
                s.resume()  # not moving: nothing to resume
            elif call == "reopen":
                s.reopen(FakeChannel(2), "recover", None, "svc@1")  # not held first
            elif call == "abandon":
                s.abandon()  # not moving
            else:
                s.hold()
                s.detach()
                s.resume()  # not reopened yet
        assert s.move in (M.ATTACHED, M.DETACHED)
    run(go)


ALL = list(MoveState)


@pytest.mark.parametrize("state,target", list(itertools.product(ALL, ALL)), ids=lambda s: s.value)
def test_every_edge_off_the_table_raises(state: MoveState, target: MoveState) -> None:
    async def go() -> None:
        s, _ = session(FakeChannel())
        s.move = state
        if target in MOVES[state]:
            s._move_to(target)
            assert s.move is target
        else:
            with pytest.raises(IllegalTransition):
                s._move_to(target)
            assert s.move is state
    run(go)
