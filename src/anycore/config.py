"""Service configuration: an optional ``anycore.toml`` beside the code.

Zero config runs: a directory with ``app.py`` defining ``app`` is a service named after
the directory. Every key is typed and checked up front; an unknown key is an error that
names it, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path

import msgspec

from anycore.errors import ConfigError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


class SessionRoute(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """``[sessions]`` entry: ``"/rooms/{room}" = { handler = "app:Room", key = "room" }``
    (or just ``"/echo" = "app:Echo"``). ``key`` names a ``{param}`` of the path, or else a
    query parameter: connections with the same key share one worker."""

    handler: str
    key: str = ""


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def session_pattern(path: str) -> re.Pattern[str]:
    """``"/rooms/{room}"`` -> a regex matching ``/rooms/abc`` with group ``room``."""
    if not path.startswith("/"):
        raise ConfigError(f"session path {path!r} must start with '/', e.g. '/chat/{{room}}'")
    parts = _PARAM.split(path)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>[^/]+)" for i, p in enumerate(parts))
    try:
        return re.compile(f"^{regex}$")
    except re.error as exc:
        raise ConfigError(f"session path {path!r}: {exc}") from None


class ServiceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    name: str
    entry: str = "app:app"  # the ASGI/WSGI app; "" for a service of Sessions only
    # "/prefix", "host" or "host/prefix"; the longest matching prefix wins, host routes
    # before host-less ones.
    routes: list[str] = msgspec.field(default_factory=lambda: ["/"])
    workers: int = 0  # a fixed count: shorthand for min_workers = max_workers = workers
    min_workers: int = -1  # -1: 1 (0 scales to zero: the zygote stays warm, a request forks a worker)
    max_workers: int = 0  # 0: one per core of the node
    target_utilization: float = 0.7  # the scaler aims at this share of slots busy
    scale_down_delay: float = 30.0  # no scale-down this soon after a scale-up
    keep_warm: float = 60.0  # the last worker stays this long after the load ends
    slots: int = 8  # concurrent requests per worker
    timeout: float = 30.0  # request deadline, queue time included
    max_queue: int = 1000
    max_queue_bytes: int = 64 * 1024 * 1024
    max_body: int = 100 * 1024 * 1024
    request_buffer: int = 64 * 1024  # a request body is read up to this before the request takes a slot
    body_timeout: float = 30.0  # no request body byte for this long -> 408
    env: dict[str, str] = msgspec.field(default_factory=dict)
    hang_timeout: float = 30.0  # event loop stuck this long: stacks dumped, worker replaced
    max_requests: int = 0  # recycle a worker after this many requests (0: never)
    max_rss: int = 0  # recycle a worker above this RSS in MiB (0: never)
    drain_timeout: float = 30.0
    startup_timeout: float = 60.0  # the warm timeout: import + lifespan startup + readiness
    readiness: str = ""  # a GET path each new worker must answer 2xx/3xx before it takes traffic
    migrate: str = ""  # "module:function" run once per release before the shift
    rollback_window: float = 60.0  # a release that crashloops this soon after its shift is rolled back
    # Restart intensity (OTP's): more than restart_intensity unexpected exits within
    # restart_period seconds make the release crashlooping; restarts back off up to the cap.
    restart_intensity: int = 5
    restart_period: float = 60.0
    restart_backoff_cap: float = 10.0
    # WebSocket paths (below the service's route) served by anycore.Session classes.
    sessions: dict[str, str | SessionRoute] = msgspec.field(default_factory=dict)
    client_notify: str = ""  # "module:function" of the new release; its message goes to old connections at shift
    user: str = ""  # the user a root node runs the service as ("": the node's --user, default nobody)
    # Durable jobs (anycore.enqueue): deliveries before a failing job is dead-lettered, the
    # delay before each retry (the last repeats), and a job's deadline (queue time included).
    job_attempts: int = 3
    job_backoff: list[float] = msgspec.field(default_factory=lambda: [1.0, 5.0, 30.0])
    job_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(
                f"service name {self.name!r} is not valid: use lowercase letters, digits, '-' or '_' "
                "(set `name` in anycore.toml)"
            )
        if self.entry and ":" not in self.entry:
            raise ConfigError(f"entry {self.entry!r} must be 'module:attribute', e.g. 'app:app'")
        for key in ("slots", "max_queue", "max_queue_bytes", "max_body", "request_buffer"):
            if getattr(self, key) < 1:
                raise ConfigError(f"{key} must be at least 1 (got {getattr(self, key)})")
        if self.readiness and not self.readiness.startswith("/"):
            raise ConfigError(f"readiness {self.readiness!r} must be a path starting with '/', e.g. '/healthz'")
        if self.migrate and ":" not in self.migrate:
            raise ConfigError(f"migrate {self.migrate!r} must be 'module:function', e.g. 'app:on_deploy'")
        for key in ("timeout", "hang_timeout", "drain_timeout", "startup_timeout", "rollback_window", "body_timeout"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive number of seconds (got {getattr(self, key)})")
        if self.workers < 0 or self.max_requests < 0 or self.max_rss < 0 or self.max_workers < 0:
            raise ConfigError("workers, max_workers, max_requests and max_rss cannot be negative")
        if self.workers and (self.min_workers >= 0 or self.max_workers):
            raise ConfigError("set either `workers` (a fixed count) or `min_workers`/`max_workers`, not both")
        if self.max_workers and self.min_count > self.max_workers:
            raise ConfigError(f"min_workers={self.min_workers} is above max_workers={self.max_workers}")
        if not 0 < self.target_utilization <= 1:
            raise ConfigError(f"target_utilization must be in (0, 1] (got {self.target_utilization})")
        if self.restart_intensity < 1:
            raise ConfigError(f"restart_intensity must be at least 1 (got {self.restart_intensity}): it is how many "
                              "unexpected worker exits within restart_period a release survives before it is crashlooping")
        for key in ("restart_period", "restart_backoff_cap"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"{key} must be a positive number of seconds (got {getattr(self, key)})")
        if self.scale_down_delay < 0 or self.keep_warm < 0:
            raise ConfigError("scale_down_delay and keep_warm cannot be negative")
        for route in self.routes:
            parse_route(route)
        for path, route in self.session_routes().items():
            session_pattern(path)
            if ":" not in route.handler:
                raise ConfigError(f"session handler {route.handler!r} for {path!r} must be 'module:Class', e.g. 'app:Room'")
            if route.key and not route.key.isidentifier():
                raise ConfigError(f"session key {route.key!r} for {path!r} must name a path {{param}} or a query parameter")
        if self.client_notify and ":" not in self.client_notify:
            raise ConfigError(f"client_notify {self.client_notify!r} must be 'module:function', e.g. 'app:notify'")
        if self.user and not re.match(r"^[a-z_][a-z0-9_.-]*\$?$", self.user, re.IGNORECASE):
            raise ConfigError(f"user {self.user!r} is not a valid user name")
        if self.job_attempts < 1:
            raise ConfigError(f"job_attempts must be at least 1 (got {self.job_attempts}): how many times a failing job runs")
        if any(d < 0 for d in self.job_backoff):
            raise ConfigError(f"job_backoff must list seconds >= 0 (got {self.job_backoff}), e.g. [1, 5, 30]")
        if self.job_timeout <= 0:
            raise ConfigError(f"job_timeout must be a positive number of seconds (got {self.job_timeout})")
        if not self.entry and not self.sessions:
            raise ConfigError("entry is empty and there are no [sessions]: the service would serve nothing")

    def session_routes(self) -> dict[str, SessionRoute]:
        return {path: SessionRoute(route) if isinstance(route, str) else route for path, route in self.sessions.items()}

    @property
    def min_count(self) -> int:
        return self.workers or (1 if self.min_workers < 0 else self.min_workers)

    @property
    def max_count(self) -> int:
        return self.workers or self.max_workers or max(os.cpu_count() or 1, self.min_count)

    @property
    def worker_count(self) -> int:
        """Workers to warm when the release starts: the minimum, and at least one to prove it runs."""
        return max(1, self.min_count)


def parse_route(route: str) -> tuple[str | None, str]:
    """``"api.example.com/v1"`` -> ``("api.example.com", "/v1")``; ``"/v1"`` -> ``(None, "/v1")``."""
    if not route:
        raise ConfigError("an empty route matches nothing: use '/' for everything")
    host, slash, prefix = route.partition("/")
    prefix = "/" + prefix.rstrip("/") if slash else "/"
    return (host.lower() or None), prefix


class Service(msgspec.Struct, frozen=True):
    """A service ready to run: where its code is and how it is configured."""

    directory: str
    config: ServiceConfig


def load_service(path: str, cwd: str | None = None) -> Service:
    """Resolve ``anycore up PATH``: a service directory or ``module:attr`` in the current one."""
    base = Path(cwd or os.getcwd())
    candidate = (base / path).resolve()
    if candidate.is_dir():
        return Service(str(candidate), _read_config(candidate))
    if ":" in path and re.match(r"^[\w.]+:[\w.]+$", path):
        module = path.split(":", 1)[0]
        name = _slug(module.split(".")[-1])
        return Service(str(base.resolve()), _read_config(base.resolve(), name=name, entry=path))
    raise ConfigError(f"{path!r} is neither a service directory nor 'module:attr' — pass a directory holding app.py")


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    return slug or "app"


def _read_config(directory: Path, name: str | None = None, entry: str | None = None) -> ServiceConfig:
    raw: dict[str, object] = {}
    toml = directory / "anycore.toml"
    if toml.exists():
        try:
            raw = tomllib.loads(toml.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{toml}: not valid TOML: {exc}") from None
    raw.setdefault("name", name or _slug(directory.name))
    if entry is not None:
        raw["entry"] = entry
    if isinstance(raw.get("routes"), str):
        raw["routes"] = [raw["routes"]]
    try:
        return msgspec.convert(raw, ServiceConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{toml}: {_explain(exc)}") from None


def _explain(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    unknown = re.match(r"Object contains unknown field `(\w+)`", text)
    if unknown:
        known = ", ".join(ServiceConfig.__struct_fields__)
        return f"unknown key {unknown.group(1)!r} (known keys: {known})"
    return text
