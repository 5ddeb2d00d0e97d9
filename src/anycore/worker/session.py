"""``anycore.Session``: a WebSocket handler whose state outlives its worker and its code.

The gateway owns the client's socket; a Session object lives in a worker and sees whole
messages, one at a time, in order (one task per connection drains its inbox). Its state is
what ``snapshot()`` returns (by default the instance's public attributes), encoded with
msgpack — never pickle, so a new release can read what an old one wrote. When the session
moves (a deploy, a scale-down, a recycle) the node asks for a snapshot, holds the client's
new messages meanwhile, and opens the session in the new worker with
``migrate(state, from_release)``; the connection never notices.

``checkpoint = True`` on the class sends a snapshot after every handled message, so that
after a worker crash the session resumes from it (the node replays the messages the
snapshot does not reflect). Without it a crash restarts the session fresh and calls
``on_recover``.

Sessions with a key (a path parameter or query parameter named in the config) are placed
on one worker per key, so ``broadcast`` and ``members`` reach every connection of a room.

Layer L1 (worker); runs in the worker process (services import ``Session`` through
``anycore``; the zygote resolves handlers through ``entry``).
"""

from __future__ import annotations

import asyncio
import sys
import traceback
import urllib.parse
from typing import Any, Callable, ClassVar, Iterator, Protocol

import msgspec

from anycore import wire
from anycore.worker.asgi import SendWindow

Message = str | bytes
_CLOSE = object()  # inbox marker: the client left


class Session:
    """Subclass this; route it with ``[sessions]`` in anycore.toml. All hooks are optional."""

    checkpoint: ClassVar[bool] = False

    _cycle: "SessionCycle"  # set by anycore; underscored names are never part of the snapshot

    async def on_connect(self) -> None:
        """A new client connected (already accepted): set up the state."""

    async def on_message(self, message: Message) -> None:
        """One whole message from the client: ``str`` for text, ``bytes`` for binary."""

    async def on_close(self, code: int) -> None:
        """The client left (or the session closed itself)."""

    async def on_recover(self) -> None:
        """The worker holding this session died and there was no checkpoint: the state is
        fresh. By default this runs ``on_connect`` again."""
        await self.on_connect()

    def snapshot(self) -> Any:
        """What to carry to the next worker or release: msgpack-able data (dicts, lists,
        str, bytes, numbers). By default every attribute not starting with ``_``."""
        return {name: value for name, value in vars(self).items() if not name.startswith("_")}

    @classmethod
    def migrate(cls, state: Any, from_release: str) -> "Session":
        """Build this release's session from an older (or the same) release's snapshot.
        By default the same fields are kept. Override to rename or convert fields; raising
        here aborts a deploy before its shift (it is dry-run on live snapshots first)."""
        session = cls.__new__(cls)
        if not isinstance(state, dict):
            raise TypeError(f"{cls.__name__}.migrate got a {type(state).__name__} snapshot; "
                            "override migrate() to restore a custom snapshot()")
        session.__dict__.update(state)
        return session

    # -- what the handler can use ------------------------------------------------------------
    @property
    def id(self) -> int:
        return self._cycle.id

    @property
    def key(self) -> str:
        """The session's key (room id), or "" when its route has none."""
        return self._cycle.key

    @property
    def params(self) -> dict[str, str]:
        """Path parameters, e.g. ``{"room": "lobby"}`` for ``/rooms/{room}``."""
        return self._cycle.params

    @property
    def query(self) -> dict[str, str]:
        return self._cycle.query

    @property
    def path(self) -> str:
        return self._cycle.path

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        return self._cycle.headers

    @property
    def release(self) -> str:
        """The release this session runs on now."""
        return self._cycle.server.release

    async def send(self, message: Message) -> None:
        """Send to this session's client; waits while the client is a window behind."""
        self._cycle.send(message)
        await self._cycle.window.wait()

    def members(self) -> Iterator["Session"]:
        """Every open session with this session's key on this worker (itself included)."""
        cycles = list(self._cycle.server.rooms.get(self._cycle.key, ())) if self._cycle.key else [self._cycle]
        for cycle in cycles:
            if cycle.session is not None and not cycle.closed:
                yield cycle.session

    async def broadcast(self, message: Message) -> None:
        """Send to every session of this key (itself included), then wait until every one
        of them has room in its send window: a room goes at the pace of its slowest reader,
        and a reader that stops altogether is closed by the node (1008) after a bound."""
        members = list(self.members())
        for member in members:
            member._cycle.send(message)
        for member in members:
            await member._cycle.window.wait()

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self._cycle.close(code, reason)


class SessionHost(Protocol):
    """What a SessionCycle needs from its worker: how to send, the release, the rooms."""

    release: str
    rooms: dict[str, set["SessionCycle"]]
    send_frame: Callable[[wire.Frame], None]

    async def barrier(self, group: str, size: int) -> None:
        """Return once ``size`` sessions of ``group`` have called it (bounded)."""


def encode_state(session: Session) -> bytes:
    try:
        return msgspec.msgpack.encode(session.snapshot())
    except TypeError as exc:
        raise TypeError(f"{type(session).__name__}.snapshot() returned data msgpack cannot encode ({exc}); "
                        "keep state to dicts, lists, str, bytes and numbers, or override snapshot()") from None


def restore(cls: type[Session], state: bytes, from_release: str) -> Session:
    session = cls.migrate(msgspec.msgpack.decode(state), from_release)
    if not isinstance(session, cls):
        raise TypeError(f"{cls.__name__}.migrate returned {type(session).__name__}, not a {cls.__name__}")
    return session


def check_migrate(cls: type[Session], frame: wire.MigrateCheck) -> str | None:
    """Dry-run of a deploy: does this release's ``migrate`` accept a live snapshot?"""
    try:
        restore(cls, frame.state, frame.from_release)
    except Exception as exc:  # noqa: BLE001 - the deploy reports it
        return f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
    return None


class SessionCycle:
    """The worker's half of one Session connection: inbox of frames -> hooks, in order."""

    def __init__(self, frame: wire.WsOpen, cls: type[Session], server: SessionHost) -> None:
        self.id = frame.id
        self.frame = frame
        self.cls = cls
        self.server = server
        self.key = frame.key
        self.params = dict(frame.params)
        self.query = dict(urllib.parse.parse_qsl(frame.query.decode("latin-1")))
        self.path = frame.path
        self.headers = frame.headers
        self.seq = frame.seq
        self.session: Session | None = None
        self.closed = False
        self.inbox: asyncio.Queue[Any] = asyncio.Queue()
        self.window = SendWindow()
        self.task: asyncio.Task[None] | None = None
        if self.key:  # a member from the moment its frame is read, before its task first runs
            server.rooms.setdefault(self.key, set()).add(self)

    def feed(self, frame: wire.Frame) -> None:
        if type(frame) is wire.WsMsg:
            self.inbox.put_nowait(frame.text if frame.text is not None else frame.data or b"")
        elif type(frame) is wire.WsClose:
            self.window.close()
            self.inbox.put_nowait((_CLOSE, frame.code))
        elif type(frame) is wire.Credit:
            self.window.add(frame.n)
        elif type(frame) is wire.SessSnap:
            self.inbox.put_nowait(frame)

    def send(self, message: Message) -> None:
        if self.closed:
            raise OSError("the WebSocket is closed")
        frame = wire.WsMsg(self.id, message, None) if isinstance(message, str) else wire.WsMsg(self.id, None, bytes(message))
        self.server.send_frame(frame)
        self.window.spend(frame)

    def close(self, code: int, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.window.close()
            self.server.send_frame(wire.WsClose(self.id, code, reason))
            self.inbox.put_nowait((_CLOSE, code))

    def _state(self, kind: int) -> wire.SessState:
        assert self.session is not None
        try:
            return wire.SessState(self.id, kind, self.seq, encode_state(self.session), None)
        except Exception as exc:  # noqa: BLE001 - told to the node, which decides
            return wire.SessState(self.id, kind, self.seq, None, f"{type(exc).__name__}: {exc}")

    async def _begin(self) -> None:
        frame = self.frame
        self.server.send_frame(wire.WsAccept(self.id, None, [], self.cls.checkpoint))
        if frame.mode == "connect":
            self.session = self.cls()
            self.session._cycle = self
            await self.session.on_connect()
        elif frame.state is not None:
            self.session = restore(self.cls, frame.state, frame.from_release)
            self.session._cycle = self
        else:
            self.session = self.cls()
            self.session._cycle = self
            await self.session.on_recover()
        if self.cls.checkpoint:
            self.server.send_frame(self._state(wire.CHECKPOINT))

    async def run(self) -> None:
        detached = False
        try:
            await self._begin()
            assert self.session is not None
            if self.frame.size > 1:  # moved with its key's group: wait until all are open here
                await self.server.barrier(self.frame.group, self.frame.size)
            while True:
                item = await self.inbox.get()
                if type(item) is wire.SessSnap:
                    if item.detach and item.size > 1:
                        await self.server.barrier(item.group, item.size)
                    self.server.send_frame(self._state(wire.SNAPSHOT if item.detach else wire.DRY_RUN))
                    if item.detach:
                        detached = True
                        return
                elif type(item) is tuple:
                    self.closed = True
                    await self.session.on_close(item[1])
                    return
                else:
                    credit = self.window.took(len(item))
                    if credit and not self.closed:
                        self.server.send_frame(wire.Credit(self.id, credit))
                    await self.session.on_message(item)
                    self.seq += 1
                    if self.cls.checkpoint:
                        self.server.send_frame(self._state(wire.CHECKPOINT))
        except asyncio.CancelledError:
            raise
        except BaseException:  # noqa: BLE001 - closes this connection with 1011, never the worker
            print(f"error in Session {self.cls.__name__} ({self.path}):\n{traceback.format_exc()}", file=sys.stderr, flush=True)
            if not self.closed:
                self.closed = True
                self.server.send_frame(wire.WsClose(self.id, 1011, "session error"))
        finally:
            if self.key:
                members = self.server.rooms.get(self.key)
                if members is not None:
                    members.discard(self)
                    if not members:
                        del self.server.rooms[self.key]
            if detached:
                self.window.close()
                self.closed = True  # the session lives on elsewhere; nothing more leaves from here
