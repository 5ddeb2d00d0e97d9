"""Service configuration: zero config from a directory, ``module:attr``, typed keys with
errors that name the problem, routes."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from anycore.config import ServiceConfig, load_service, parse_route
from anycore.errors import ConfigError


def service_dir(root: Path, name: str, toml: str | None = None) -> Path:
    directory = root / name
    directory.mkdir(parents=True)
    (directory / "app.py").write_text("async def app(scope, receive, send): pass\n")
    if toml is not None:
        (directory / "anycore.toml").write_text(textwrap.dedent(toml))
    return directory


def test_zero_config_service_is_named_after_its_directory(tmp_path: Path) -> None:
    directory = service_dir(tmp_path, "hello")
    service = load_service("hello", cwd=str(tmp_path))
    assert service.directory == str(directory.resolve())
    assert service.config.name == "hello"
    assert service.config.entry == "app:app"
    assert service.config.routes == ["/"]
    assert service.config == ServiceConfig(name="hello")


def test_zero_config_name_is_slugged_from_the_directory(tmp_path: Path) -> None:
    service_dir(tmp_path, "My Shop.v2")
    assert load_service(str(tmp_path / "My Shop.v2")).config.name == "my-shop-v2"


def test_name_in_toml_wins_over_the_directory(tmp_path: Path) -> None:
    service_dir(tmp_path, "hello", 'name = "greeter"\nslots = 3\n')
    config = load_service("hello", cwd=str(tmp_path)).config
    assert (config.name, config.slots) == ("greeter", 3)


def test_module_attr_path_runs_in_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "web.py").write_text("app = None\n")
    service = load_service("pkg.web:app", cwd=str(tmp_path))
    assert service.directory == str(tmp_path.resolve())
    assert service.config.entry == "pkg.web:app"
    assert service.config.name == "web"


def test_module_attr_path_overrides_the_entry_in_toml(tmp_path: Path) -> None:
    (tmp_path / "anycore.toml").write_text('entry = "other:app"\nname = "svc"\n')
    config = load_service("main:application", cwd=str(tmp_path)).config
    assert (config.name, config.entry) == ("svc", "main:application")


def test_path_that_is_neither_directory_nor_module_attr_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a service directory nor 'module:attr'"):
        load_service("does-not-exist", cwd=str(tmp_path))


def test_unknown_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    service_dir(tmp_path, "hello", "slots = 4\nworkres = 2\n")
    with pytest.raises(ConfigError) as info:
        load_service("hello", cwd=str(tmp_path))
    message = str(info.value)
    assert "unknown key 'workres'" in message
    assert "anycore.toml" in message
    assert "workers" in message  # the known keys are listed


@pytest.mark.parametrize(
    "toml, words",
    [
        ('slots = "eight"', ["slots", "int"]),
        ("slots = 0", ["slots must be at least 1"]),
        ("max_queue = 0", ["max_queue must be at least 1"]),
        ("max_body = -5", ["max_body"]),
        ("timeout = 0", ["timeout must be a positive number"]),
        ("hang_timeout = -1.5", ["hang_timeout"]),
        ('name = "Bad Name!"', ["service name 'Bad Name!' is not valid"]),
        ('entry = "app"', ["entry 'app' must be 'module:attribute'"]),
        ("workers = -1", ["cannot be negative"]),
        ("workers = 2\nmax_workers = 4", ["either `workers`"]),
        ("min_workers = 5\nmax_workers = 2", ["min_workers=5 is above max_workers=2"]),
        ("target_utilization = 1.5", ["target_utilization"]),
        ('readiness = "healthz"', ["readiness 'healthz' must be a path"]),
        ('migrate = "nocolon"', ["migrate 'nocolon'"]),
        ('routes = [""]', ["empty route"]),
        ("env = { A = 1 }", ["env"]),
    ],
)
def test_bad_values_are_config_errors(tmp_path: Path, toml: str, words: list[str]) -> None:
    service_dir(tmp_path, "svc", toml + "\n")
    with pytest.raises(ConfigError) as info:
        load_service("svc", cwd=str(tmp_path))
    for word in words:
        assert word in str(info.value)


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    service_dir(tmp_path, "svc", "slots = = 3\n")
    with pytest.raises(ConfigError) as info:
        load_service("svc", cwd=str(tmp_path))
    assert "not valid TOML" in str(info.value)
    assert "anycore.toml" in str(info.value)


@pytest.mark.parametrize(
    "route, parsed",
    [
        ("/", (None, "/")),
        ("/api", (None, "/api")),
        ("/api/", (None, "/api")),
        ("/api/v1", (None, "/api/v1")),
        ("api.example.com", ("api.example.com", "/")),
        ("API.Example.com", ("api.example.com", "/")),
        ("api.example.com/", ("api.example.com", "/")),
        ("api.example.com/v1", ("api.example.com", "/v1")),
        ("example.com:8080/v1/", ("example.com:8080", "/v1")),
    ],
)
def test_routes_parse_into_host_and_prefix(route: str, parsed: tuple[str | None, str]) -> None:
    assert parse_route(route) == parsed


def test_routes_from_toml_accept_a_string_or_a_list(tmp_path: Path) -> None:
    service_dir(tmp_path, "one", 'routes = "api.example.com/v1"\n')
    service_dir(tmp_path, "two", 'routes = ["/a", "b.example.com"]\n')
    assert load_service("one", cwd=str(tmp_path)).config.routes == ["api.example.com/v1"]
    assert load_service("two", cwd=str(tmp_path)).config.routes == ["/a", "b.example.com"]


def test_empty_route_is_rejected() -> None:
    with pytest.raises(ConfigError, match="empty route"):
        parse_route("")


def test_worker_counts_follow_workers_or_min_max() -> None:
    fixed = ServiceConfig(name="a", workers=3)
    assert (fixed.min_count, fixed.max_count, fixed.worker_count) == (3, 3, 3)
    ranged = ServiceConfig(name="a", min_workers=0, max_workers=4)
    assert (ranged.min_count, ranged.max_count, ranged.worker_count) == (0, 4, 1)
    default = ServiceConfig(name="a")
    assert default.min_count == 1 and default.max_count >= 1
