"""Service configuration (anycore.config): zero config, ``module:attr``, every key checked.

Real files in a temporary directory; ``load_service`` is called as ``anycore up PATH``
would call it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from anycore.config import ServiceConfig, load_service, parse_route
from anycore.errors import ConfigError


def service_dir(root: Path, name: str, toml: str | None = None) -> Path:
    d = root / name
    d.mkdir()
    (d / "app.py").write_text("async def app(scope, receive, send):\n    pass\n")
    if toml is not None:
        (d / "anycore.toml").write_text(toml)
    return d


# -- zero config ------------------------------------------------------------------------------

def test_zero_config_directory_is_a_service_named_after_it(tmp_path: Path) -> None:
    d = service_dir(tmp_path, "hello")
    s = load_service(str(d))
    assert s.directory == str(d.resolve())
    c = s.config
    assert (c.name, c.entry, c.routes) == ("hello", "app:app", ["/"])
    assert c == ServiceConfig(name="hello")  # every other key at its default


def test_relative_path_resolves_against_cwd(tmp_path: Path) -> None:
    service_dir(tmp_path, "hello")
    s = load_service("hello", cwd=str(tmp_path))
    assert s.config.name == "hello" and s.directory == str((tmp_path / "hello").resolve())


def test_directory_name_is_slugged_into_a_valid_service_name(tmp_path: Path) -> None:
    assert load_service(str(service_dir(tmp_path, "My Shop.v2"))).config.name == "my-shop-v2"


def test_name_in_the_toml_wins_over_the_directory(tmp_path: Path) -> None:
    d = service_dir(tmp_path, "hello", 'name = "shop"\n')
    assert load_service(str(d)).config.name == "shop"


def test_module_attr_serves_from_the_current_directory(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "server.py").write_text("application = None\n")
    s = load_service("pkg.server:application", cwd=str(tmp_path))
    assert s.directory == str(tmp_path.resolve())
    assert s.config.entry == "pkg.server:application"
    assert s.config.name == "server"


def test_module_attr_overrides_the_entry_of_an_anycore_toml_beside_it(tmp_path: Path) -> None:
    (tmp_path / "anycore.toml").write_text('entry = "other:app"\nslots = 3\n')
    s = load_service("main:api", cwd=str(tmp_path))
    assert (s.config.entry, s.config.slots, s.config.name) == ("main:api", 3, "main")


def test_a_path_that_is_neither_a_directory_nor_module_attr_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="neither a service directory nor 'module:attr'"):
        load_service("missing-dir", cwd=str(tmp_path))


# -- keys and values ---------------------------------------------------------------------------

def test_every_key_is_read_from_anycore_toml(tmp_path: Path) -> None:
    toml = """
name = "shop"
entry = "main:api"
routes = ["/api", "shop.example.com"]
min_workers = 0
max_workers = 6
target_utilization = 0.5
scale_down_delay = 5.0
keep_warm = 7.5
slots = 4
timeout = 12.5
max_queue = 10
max_queue_bytes = 1000
max_body = 2000
env = { DEBUG = "1" }
hang_timeout = 2
max_requests = 100
max_rss = 512
drain_timeout = 3
startup_timeout = 9
readiness = "/healthz"
migrate = "main:migrate"
rollback_window = 30
restart_intensity = 3
restart_period = 20.5
restart_backoff_cap = 4
"""
    c = load_service(str(service_dir(tmp_path, "x", toml))).config
    assert c.routes == ["/api", "shop.example.com"]
    assert (c.min_workers, c.max_workers, c.target_utilization, c.scale_down_delay, c.keep_warm) == (0, 6, 0.5, 5.0, 7.5)
    assert (c.slots, c.timeout, c.max_queue, c.max_queue_bytes, c.max_body) == (4, 12.5, 10, 1000, 2000)
    assert c.env == {"DEBUG": "1"}
    assert (c.hang_timeout, c.max_requests, c.max_rss, c.drain_timeout, c.startup_timeout) == (2, 100, 512, 3, 9)
    assert (c.readiness, c.migrate, c.rollback_window) == ("/healthz", "main:migrate", 30)
    assert (c.restart_intensity, c.restart_period, c.restart_backoff_cap) == (3, 20.5, 4)


def test_restart_keys_default_to_the_policy_of_before() -> None:
    c = ServiceConfig(name="x")
    assert (c.restart_intensity, c.restart_period, c.restart_backoff_cap) == (5, 60.0, 10.0)


def test_unknown_key_is_an_error_naming_the_key(tmp_path: Path) -> None:
    d = service_dir(tmp_path, "x", "slot = 4\n")  # a typo of `slots`
    with pytest.raises(ConfigError) as err:
        load_service(str(d))
    message = str(err.value)
    assert "unknown key 'slot'" in message
    assert "slots" in message  # the known keys are listed
    assert "anycore.toml" in message


def test_invalid_toml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_service(str(service_dir(tmp_path, "x", "slots = = 4\n")))


@pytest.mark.parametrize(("toml", "fragment"), [
    ('slots = "many"', "slots"),
    ("slots = 0", "slots must be at least 1"),
    ("max_queue = 0", "max_queue must be at least 1"),
    ("max_queue_bytes = 0", "max_queue_bytes must be at least 1"),
    ("max_body = 0", "max_body must be at least 1"),
    ("timeout = 0", "timeout must be a positive number"),
    ("hang_timeout = -1", "hang_timeout must be a positive number"),
    ("drain_timeout = 0", "drain_timeout must be a positive number"),
    ("startup_timeout = 0", "startup_timeout must be a positive number"),
    ("rollback_window = 0", "rollback_window must be a positive number"),
    ('name = "Bad Name"', "service name 'Bad Name' is not valid"),
    ('entry = "app"', "must be 'module:attribute'"),
    ('readiness = "healthz"', "must be a path starting with '/'"),
    ('migrate = "run"', "must be 'module:function'"),
    ("workers = -1", "cannot be negative"),
    ("max_requests = -1", "cannot be negative"),
    ("max_rss = -5", "cannot be negative"),
    ("max_workers = -2", "cannot be negative"),
    ("target_utilization = 0", "target_utilization must be in (0, 1]"),
    ("target_utilization = 1.5", "target_utilization must be in (0, 1]"),
    ("scale_down_delay = -1", "cannot be negative"),
    ("keep_warm = -1", "cannot be negative"),
    ('routes = [""]', "empty route"),
    ("restart_intensity = 0", "restart_intensity must be at least 1"),
    ("restart_intensity = 2.5", "restart_intensity"),
    ("restart_period = 0", "restart_period must be a positive number of seconds"),
    ("restart_backoff_cap = -1", "restart_backoff_cap must be a positive number of seconds"),
    ('env = { A = 1 }', "env"),
])
def test_bad_values_are_config_errors(tmp_path: Path, toml: str, fragment: str) -> None:
    d = service_dir(tmp_path, "x", toml + "\n")
    with pytest.raises(ConfigError) as err:
        load_service(str(d))
    assert fragment in str(err.value)


# -- routes ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("route", "parsed"), [
    ("/", (None, "/")),
    ("/api", (None, "/api")),
    ("/api/", (None, "/api")),
    ("/api/v1", (None, "/api/v1")),
    ("shop.example.com", ("shop.example.com", "/")),
    ("Shop.Example.COM/v1/", ("shop.example.com", "/v1")),
    ("api.example.com/", ("api.example.com", "/")),
])
def test_parse_route(route: str, parsed: tuple[str | None, str]) -> None:
    assert parse_route(route) == parsed


def test_a_single_route_string_is_accepted_as_a_list(tmp_path: Path) -> None:
    c = load_service(str(service_dir(tmp_path, "x", 'routes = "/api"\n'))).config
    assert c.routes == ["/api"]


def test_an_empty_route_is_an_error() -> None:
    with pytest.raises(ConfigError, match="empty route"):
        parse_route("")


# -- worker counts -----------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [{"min_workers": 1}, {"min_workers": 0}, {"max_workers": 4}, {"min_workers": 2, "max_workers": 4}])
def test_workers_and_min_max_are_exclusive(extra: dict[str, int]) -> None:
    with pytest.raises(ConfigError, match="either `workers`"):
        ServiceConfig(name="x", workers=2, **extra)  # type: ignore[arg-type]


def test_min_above_max_is_an_error() -> None:
    with pytest.raises(ConfigError, match="min_workers=5 is above max_workers=2"):
        ServiceConfig(name="x", min_workers=5, max_workers=2)


def test_fixed_workers_is_min_and_max() -> None:
    c = ServiceConfig(name="x", workers=3)
    assert (c.min_count, c.max_count, c.worker_count) == (3, 3, 3)


def test_default_counts_are_one_to_one_per_core() -> None:
    c = ServiceConfig(name="x")
    assert (c.min_count, c.max_count, c.worker_count) == (1, max(os.cpu_count() or 1, 1), 1)


def test_min_zero_scales_to_zero_but_still_warms_one_worker_at_start() -> None:
    c = ServiceConfig(name="x", min_workers=0, max_workers=4)
    assert (c.min_count, c.max_count, c.worker_count) == (0, 4, 1)


def test_explicit_min_and_max() -> None:
    c = ServiceConfig(name="x", min_workers=2, max_workers=5)
    assert (c.min_count, c.max_count, c.worker_count) == (2, 5, 2)


def test_max_defaults_to_the_cores_but_never_below_min() -> None:
    big = (os.cpu_count() or 1) + 3
    c = ServiceConfig(name="x", min_workers=big)
    assert (c.min_count, c.max_count, c.worker_count) == (big, big, big)
