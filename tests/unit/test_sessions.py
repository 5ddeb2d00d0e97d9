"""The pure parts of Sessions: routing and keys, config checks, default snapshot/migrate."""

from __future__ import annotations

import msgspec
import pytest

from anycore import Session, wire
from anycore.config import ServiceConfig
from anycore.errors import ConfigError
from anycore.node.sessions import SessionRoutes, _groups
from anycore.worker.session import check_migrate, encode_state, restore


def config(**sessions: object) -> ServiceConfig:
    return msgspec.convert({"name": "svc", "sessions": sessions}, ServiceConfig)


def open_frame(path: str, query: bytes = b"", root: str = "/") -> wire.WsOpen:
    return wire.WsOpen(1, path, path.encode(), query, [], [], None, None, root)


def test_routes_match_paths_below_the_service_prefix_with_keys_from_path_or_query():
    routes = SessionRoutes(msgspec.convert({"name": "svc", "sessions": {
        "/rooms/{room}": {"handler": "app:Room", "key": "room"},
        "/game": {"handler": "app:Game", "key": "table"},
        "/echo": "app:Echo"}}, ServiceConfig))
    room = routes.match(open_frame("/chat/rooms/lobby", root="/chat"))
    assert room is not None and (room.handler, room.key, room.params) == ("app:Room", "lobby", {"room": "lobby"})
    game = routes.match(open_frame("/game", b"table=7&x=1"))
    assert game is not None and (game.handler, game.key) == ("app:Game", "7")
    echo = routes.match(open_frame("/echo"))
    assert echo is not None and (echo.handler, echo.key) == ("app:Echo", "")
    assert routes.match(open_frame("/rooms/a/b")) is None  # a {param} is one path segment
    assert routes.match(open_frame("/other")) is None
    assert SessionRoutes(config()).match(open_frame("/echo")) is None  # no [sessions]: plain ASGI


@pytest.mark.parametrize("sessions, message", [
    ({"echo": "app:Echo"}, "must start with '/'"),
    ({"/echo": "Echo"}, "must be 'module:Class'"),
    ({"/r/{room}": {"handler": "app:R", "key": "a-b"}}, "must name a path {param}"),
    ({"/r": {"handler": "app:R", "keys": "x"}}, "unknown field"),
])
def test_bad_session_config_names_the_problem(sessions, message):
    with pytest.raises((ConfigError, msgspec.ValidationError), match=message):
        config(**{k: v for k, v in sessions.items()})


def test_sessions_only_service_needs_sessions():
    with pytest.raises(ConfigError, match="no \\[sessions\\]"):
        msgspec.convert({"name": "svc", "entry": ""}, ServiceConfig)


class Counter(Session):
    def __init__(self) -> None:
        self.count = 3
        self.names = ["a"]
        self._cache = object()  # underscored: not state


class Renamed(Session):
    @classmethod
    def migrate(cls, state, from_release):
        state["total"] = state.pop("count")
        return super().migrate(state, from_release)


def test_default_snapshot_keeps_public_fields_and_migrate_restores_them():
    state = encode_state(Counter())
    assert msgspec.msgpack.decode(state) == {"count": 3, "names": ["a"]}
    again = restore(Counter, state, "svc@old")
    assert isinstance(again, Counter) and again.count == 3 and again.names == ["a"]
    renamed = restore(Renamed, state, "svc@old")
    assert vars(renamed) == {"total": 3, "names": ["a"]}


def test_unencodable_state_and_failing_migrate_are_reported_not_raised_in_the_dry_run():
    class Bad(Session):
        def __init__(self) -> None:
            self.when = object()

    with pytest.raises(TypeError, match="override snapshot"):
        encode_state(Bad())
    state = encode_state(Counter())
    assert check_migrate(Counter, wire.MigrateCheck(1, "app:Counter", state, "svc@old")) is None
    error = check_migrate(Renamed, wire.MigrateCheck(1, "app:Renamed", msgspec.msgpack.encode({"x": 1}), "svc@old"))
    assert error is not None and error.startswith("KeyError: 'count'") and "Traceback" in error


def test_sessions_of_one_key_move_as_one_group():
    class S:
        def __init__(self, key: str) -> None:
            self.key = key

    a1, a2, b1, n1, n2 = S("a"), S("a"), S("b"), S(""), S("")
    groups = _groups([a1, n1, b1, a2, n2])  # type: ignore[list-item]
    assert sorted(map(len, groups)) == [1, 1, 1, 2]
    assert [a1, a2] in groups and [b1] in groups
