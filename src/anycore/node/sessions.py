"""L2 — where a service's ``anycore.Session`` connections live, and how they move.

Placement: a Session takes no request slot (like any WebSocket); it goes to the
least-loaded accepting worker of the live release, except that all connections with the
same key (a room) go to the worker that already holds that key.

Moves: when a worker drains (a deploy's old release, a scale-down, a recycle) its
sessions move to a live worker. The gateway holds each client's new messages; the old
worker answers a snapshot after every message it already has (same channel, same order),
forgets the session, and the new worker opens it with ``migrate(state, from_release)``;
then the held messages follow. A key's sessions move as one group to one worker, so a room
is never split. When a worker dies, its sessions are opened again on another worker from
their last checkpoint (replaying the messages after it) or fresh with ``on_recover``. The
client sees none of it: its socket belongs to the gateway.

Before a deploy shifts, ``dry_run`` feeds a snapshot of every live session to the new
release's ``migrate`` in one of its workers: a failure there aborts the deploy while the
old release still holds every session.

The placer sees its service through ``SessionHost`` (the accepting workers, the live
release, the log), not the ``ServiceRuntime`` object; its move tasks belong to a
``TaskGroup``.
"""

from __future__ import annotations

import asyncio
import itertools
import urllib.parse
from typing import TYPE_CHECKING, Any, Awaitable, Iterable, Protocol

import msgspec

from anycore import wire
from anycore.config import SessionRoute, ServiceConfig, session_pattern
from anycore.errors import ReleaseFailed
from anycore.lifecycle import WorkerState
from anycore.log import NodeLog
from anycore.tasks import TaskGroup

if TYPE_CHECKING:
    import re

    from anycore.gateway.websocket import WebSocketSession
    from anycore.supervisor.release import ReleaseSupervisor
    from anycore.supervisor.worker import WorkerHandle

_groups_seen = itertools.count()
SNAPSHOT_TIMEOUT = 10.0  # a worker that does not answer a snapshot this fast is treated as dead
WAIT_FOR_WORKER = 30.0  # a session with no worker to go to waits this long (held), then closes 1011


class SessionRoutes:
    """The ``[sessions]`` table of the live config, compiled."""

    def __init__(self, config: ServiceConfig) -> None:
        self.routes: list[tuple[re.Pattern[str], SessionRoute]] = [
            (session_pattern(path), route) for path, route in config.session_routes().items()]

    def match(self, frame: wire.WsOpen) -> wire.WsOpen | None:
        """The open frame for a Session if the path below the service's prefix is one."""
        if not self.routes:
            return None
        prefix = frame.root_path.rstrip("/")
        path = frame.path[len(prefix):] if prefix and frame.path.startswith(prefix) else frame.path
        for pattern, route in self.routes:
            found = pattern.match(path or "/")
            if found is not None:
                params = found.groupdict()
                key = params.get(route.key, "") if route.key else ""
                if route.key and not key:
                    key = dict(urllib.parse.parse_qsl(frame.query.decode("latin-1"))).get(route.key, "")
                return msgspec.structs.replace(frame, handler=route.handler, key=key, params=params)
        return None


class SessionHost(Protocol):
    """The service as the session placer sees it (``node.service.ServiceRuntime``)."""

    name: str
    log: NodeLog
    release: Any  # the live ReleaseSupervisor, or None while stopped

    def accepting_workers(self) -> list[Any]: ...  # the workers taking new traffic (WorkerHandle)

    def inflight(self, worker_id: int) -> int: ...


class SessionPlacer:
    def __init__(self, service: SessionHost) -> None:
        self.service = service
        self.owners: dict[str, int] = {}  # key -> worker id holding that key's sessions
        self.worker_event = asyncio.Event()
        self.tasks = TaskGroup(f"sessions of {service.name}", on_error=self._task_failed)
        self.moved = 0
        self.recovered = 0

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.service.log.event("session.task_failed", self.service.name, task=name, error=repr(exc))

    # -- placement ---------------------------------------------------------------------------
    def place(self, key: str) -> "WorkerHandle | None":
        accepting = self.service.accepting_workers()
        if not accepting:
            return None
        held_by = self.owners.get(key, -1) if key else -1
        owner = next((w for w in accepting if w.id == held_by), None)
        if owner is None:
            inflight = self.service.inflight
            owner = min(accepting, key=lambda w: (len(w.sockets), inflight(w.id)))
            if key:
                self.owners[key] = owner.id
        return owner

    def open(self, session: "WebSocketSession", frame: wire.WsOpen) -> bool:
        worker = self.place(frame.key)
        if worker is None:
            return False
        session.handler, session.key, session.opened = frame.handler, frame.key, frame
        session.worker, session.release = worker, worker.release
        worker.sockets[session.id] = session
        worker.send(frame)
        return True

    def gone(self, session: "WebSocketSession", worker: "WorkerHandle") -> None:
        """A keyed session closed: forget the key's worker once its last session is gone."""
        if session.key and not any(s.key == session.key for s in worker.sockets.values()):
            if self.owners.get(session.key) == worker.id:
                del self.owners[session.key]

    def worker_ready(self) -> None:
        self.worker_event.set()

    async def _target(self, key: str) -> "WorkerHandle | None":
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT_FOR_WORKER
        while (worker := self.place(key)) is None:
            release = self.service.release
            if release is None or loop.time() >= deadline:
                return None
            release.wake()
            self.worker_event.clear()
            try:
                await asyncio.wait_for(self.worker_event.wait(), min(1.0, deadline - loop.time()))
            except asyncio.TimeoutError:
                pass
        return worker

    # -- moves -------------------------------------------------------------------------------
    def evacuate(self, worker: "WorkerHandle") -> None:
        """``worker`` drains: move its sessions (by key group) to live workers."""
        sessions = [s for s in worker.sockets.values() if s.handler and not s.closed]  # a closed one just ends there
        for group in _groups(sessions):
            for session in group:
                session.hold()
            # Asked now, before the worker's Stop leaves: the answers come back in this order.
            tag = f"{worker.id}.{next(_groups_seen)}"
            answers = [_answer(session.request_snapshot(True, tag, len(group))) for session in group]
            self.tasks.spawn(self._move(group, answers, worker.release), "move")

    def recover(self, sessions: list["WebSocketSession"]) -> None:
        """Their worker died: open them again elsewhere, from their checkpoints if any."""
        for group in _groups(sessions):
            for session in group:
                session.hold()
                session.detach()
            self.tasks.spawn(self._reopen(group, [None] * len(group), "", why="recovered"), "recover")

    async def _move(self, group: list["WebSocketSession"], pending: list[Awaitable[wire.SessState | None]],
                    from_release: str) -> None:
        answers = await asyncio.gather(*pending)
        await self._reopen(group, list(answers), from_release, why="moved")

    async def _reopen(self, group: list["WebSocketSession"], answers: list[wire.SessState | None],
                      from_release: str, why: str) -> None:
        target = await self._target(group[0].key)
        if target is None:
            for session in group:
                session.abandon(1011, "no worker to run the session")
            self.service.log.event("session.lost", self.service.name, sessions=len(group), reason="no worker available")
            return
        tag, size = f"open.{next(_groups_seen)}", len(group)
        for session, answer in zip(group, answers):
            if answer is not None and answer.state is not None:
                session.reopen(target, "migrate", answer, from_release, tag, size)
            else:
                if answer is not None and answer.error:
                    self.service.log.event("session.snapshot_failed", self.service.name, handler=session.handler,
                                           error=answer.error)
                session.reopen(target, "recover", session.checkpoint, session.release, tag, size)
        for session in group:  # all open first: a message's broadcast then reaches every member
            session.resume()
        if why == "moved":
            self.moved += len(group)
        else:
            self.recovered += len(group)
        self.service.log.event(f"session.{why}", self.service.name, sessions=len(group), key=group[0].key or None,
                               to_worker=target.id, release=target.release)

    # -- deploys -------------------------------------------------------------------------------
    def live_sessions(self) -> list["WebSocketSession"]:
        """The live release's sessions that are not moving."""
        live = self.service.release
        workers = live.workers.values() if live is not None else ()
        return [s for w in workers for s in w.sockets.values() if s.handler and not s.moving and not s.closed]

    async def dry_run(self, new: "ReleaseSupervisor") -> int:
        """Feed every live session's snapshot to ``new``'s ``migrate``; ReleaseFailed on the first error."""
        old = self.service.release
        sessions = self.live_sessions()
        if old is None or not sessions:
            return 0
        checker = next((w for w in new.workers.values() if w.state is WorkerState.READY), None)
        if checker is None:
            return 0
        known = {route.handler for route in new.config.session_routes().values()}
        answers = await asyncio.gather(*(_answer(s.request_snapshot(detach=False)) for s in sessions))
        checks = []
        for session, answer in zip(sessions, answers):
            if answer is not None and answer.error:
                raise ReleaseFailed(new.release, f"snapshot() of a live {session.handler} session failed, so it could "
                                                 f"not move to the new release: {answer.error}")
            if answer is None or answer.state is None:
                continue  # closed or died meanwhile; a crash is recovered, not migrated
            if session.handler not in known:
                raise ReleaseFailed(new.release, f"live sessions use {session.handler} but the new release has no such "
                                                 "[sessions] handler; keep the route or let the sessions close first")
            checks.append(checker.check_migrate(wire.MigrateCheck(session.id, session.handler, answer.state, old.release)))
        results = await asyncio.wait_for(asyncio.gather(*checks), SNAPSHOT_TIMEOUT * 2)
        failures = [error for error in results if error]
        if failures:
            first, _, trace = failures[0].partition("\n")
            raise ReleaseFailed(new.release, f"migrate() of the new release failed on {len(failures)} of {len(checks)} "
                                             f"live sessions: {first}", trace)
        self.service.log.event("session.migrate_checked", self.service.name, release=new.release, sessions=len(checks))
        return len(checks)

    # -- telling clients -------------------------------------------------------------------------
    async def notify(self, new: "ReleaseSupervisor", old: "ReleaseSupervisor") -> None:
        """The new release's client-notify hook, run in one of its workers; its message goes
        to every WebSocket (ASGI or Session) still on the old release."""
        worker = next((w for w in new.workers.values() if w.state is WorkerState.READY), None)
        if worker is None:
            return
        sockets = [s for w in old.workers.values() for s in w.sockets.values()]
        try:
            notice = await asyncio.wait_for(worker.notify(wire.Notify(new.config.client_notify, old.release, new.release)),
                                            SNAPSHOT_TIMEOUT)
        except asyncio.TimeoutError:
            notice = wire.Notice(None, None, "timed out")
        if notice.error:
            self.service.log.event("session.notify_failed", self.service.name, release=new.release, error=notice.error)
            return
        if notice.text is None and notice.data is None:
            return
        for session in sockets:
            session.push(notice.text, notice.data)
        self.service.log.event("session.notified", self.service.name, release=new.release, connections=len(sockets))


def _groups(sessions: Iterable["WebSocketSession"]) -> list[list["WebSocketSession"]]:
    """Sessions sharing a key move together; the others one by one."""
    keyed: dict[str, list[WebSocketSession]] = {}
    groups: list[list[WebSocketSession]] = []
    for session in sessions:
        if session.key:
            keyed.setdefault(session.key, []).append(session)
        else:
            groups.append([session])
    return groups + list(keyed.values())


async def _answer(future: "asyncio.Future[wire.SessState | None]") -> wire.SessState | None:
    try:
        return await asyncio.wait_for(future, SNAPSHOT_TIMEOUT)
    except asyncio.TimeoutError:
        return None
