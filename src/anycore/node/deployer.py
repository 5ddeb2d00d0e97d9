"""L2 — deploys on this node: the executor of the ``release.deploy`` phases.

A deploy takes a release that is already in the code store (the CLI, or ``anycore up`` /
``anycore dev`` for a local directory, packs and uploads it first) and swaps it in:

    fetch    the bundle from the Object Store into the verified local cache
    env      (a release that declares dependencies) its environment, built with uv or
             reused by hash (anycore.release.env); a failed build ends the deploy here
    import   a new zygote imports the code (an import error ends the deploy here)
    warm     its workers fork and run lifespan startup and the readiness check
    migrate  the release's migration hook, once per release, in a child of the new zygote;
             and the new release's Session.migrate() dry-run on a snapshot of every live session
    shift    new requests go to the new release (one step in the node's loop)
    drain    the old release finishes its in-flight requests (bounded by drain_timeout)
    retire   the old release's workers and zygote are gone

Deploys of one service are serialised up to the shift; draining happens outside the lock,
so a second deploy can shift while the first one's old release still drains (any number
of releases may drain together). A failure before the shift stops the new release's
processes and leaves everything as it was.

The deployer sees the node through ``DeployHost`` (its services, gateway, environments,
and how to create or forget a service), never the ``Node`` class: the node imports the
deployer, not the other way round. Each deploy runs as a task of its ``TaskGroup``.

For ``/metrics`` the deployer counts every deploy that ends, by outcome (done, failed,
aborted, noop), and the seconds each of its phases took (``DeployCounts``, plain ints and
``stats.Histogram``s, updated once per deploy from its last event).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import sysconfig
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Protocol

from anycore.config import Service, ServiceConfig
from anycore.errors import AnycoreError, ConfigError, ReleaseFailed, StorageError
from anycore.log import NodeLog
from anycore.release.bundle import pack, release_id
from anycore.release.deploy import Deploy, Phase
from anycore.release.env import declared
from anycore.release.store import CodeStore, ReleaseRecord, now
from anycore.stats import Histogram
from anycore.supervisor.launch import Launch, check_reachable, plan_user, prepare_data_dir, resolve_user
from anycore.supervisor.zygote import Template
from anycore.tasks import TaskGroup

if TYPE_CHECKING:
    from anycore.gateway.server import Gateway
    from anycore.node.service import ServiceRuntime
    from anycore.release.env import Environments


class DeployHost(Protocol):
    """The node as the deployer sees it (implemented by ``node.node.Node``)."""

    @property
    def home(self) -> Path: ...

    @property
    def service_user(self) -> str: ...  # whom services run as when the node is root ("": the default)

    @property
    def log(self) -> NodeLog: ...

    @property
    def envs(self) -> "Environments | None": ...

    @property
    def gateway(self) -> "Gateway": ...

    @property
    def services(self) -> Mapping[str, "ServiceRuntime"]: ...

    def create_service(self, name: str, config: ServiceConfig) -> "ServiceRuntime": ...

    def forget_service(self, runtime: "ServiceRuntime") -> None: ...


class DeployCounts:
    """Deploys that ended, per (service, release, outcome); phase durations per (service, release, phase)."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str, str], int] = {}
        self.phases: dict[tuple[str, str, str], Histogram] = {}

    def ended(self, deploy: Deploy) -> None:
        outcome = {Phase.DONE: "done", Phase.NOOP: "noop"}.get(deploy.phase) or ("aborted" if deploy.aborting else "failed")
        key = (deploy.service, deploy.release, outcome)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        for phase, seconds in deploy.timings.items():
            histogram = self.phases.setdefault((deploy.service, deploy.release, phase), Histogram())
            histogram.observe(seconds)

    def info(self) -> dict[str, Any]:
        """JSON for ``ps --json`` (and /metrics, which reads it from there)."""
        return {"outcomes": [{"service": s, "release": r, "outcome": o, "count": n}
                             for (s, r, o), n in sorted(self.outcomes.items())],
                "phases": [{"service": s, "release": r, "phase": p, "buckets": h.counts, "sum": round(h.total, 6),
                            "count": h.count} for (s, r, p), h in sorted(self.phases.items())]}


class Deployer:
    def __init__(self, node: DeployHost, store: CodeStore,
                 on_storage_error: Callable[[StorageError], None] = lambda error: None) -> None:
        self.node = node
        self.store = store
        self.on_storage_error = on_storage_error  # the node's storage healer restarts its NATS once the disk takes writes
        self.locks: dict[str, asyncio.Lock] = {}
        self.deploys: dict[str, Deploy] = {}
        self.tasks = TaskGroup("deploys", on_error=self._task_failed)
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.counts = DeployCounts()

    def _task_failed(self, name: str, exc: BaseException) -> None:
        self.node.log.event("deploy.task_failed", task=name, error=repr(exc)[:300])

    async def publish_local(self, service: Service, source: str) -> ReleaseRecord:
        """Pack a local service directory and put it in the code store (what `deploy` does client-side)."""
        data = await asyncio.get_running_loop().run_in_executor(None, pack, service.directory)
        record = ReleaseRecord(id=release_id(service.directory, service.config), service=service.config.name,
                               config=service.config, source=source, created_at=now())
        await self.store.put_bundle(record.id, data)
        existing = await self.store.get_release(record.id)
        if existing is not None:
            record.migrated, record.deployed_at = existing.migrated, existing.deployed_at
        await self.store.put_release(record)
        return record

    def start(self, record: ReleaseRecord, source: str, deploy_id: str | None = None, gate: Any = None,
              migrate: bool = True) -> Deploy:
        """Begin a deploy in the background; progress goes to the listeners. A ``gate``
        (cluster/rollout.py) holds the shift until every node is ready; ``migrate=False``
        leaves the migration hook to the cluster deploy's coordinator."""
        live = self.node.services.get(record.service)
        deploy = Deploy(deploy_id or secrets.token_hex(6), record.service, record.id,
                        live.release_id if live is not None and live.release is not None else "", source)
        deploy.listeners.extend(self.listeners)
        counted: list[bool] = []

        def count(event: dict[str, Any]) -> None:
            if deploy.finished and not counted:  # once, at its last phase
                counted.append(True)
                self.counts.ended(deploy)

        deploy.listeners.append(count)
        self.deploys[deploy.id] = deploy
        for old in [d for d in self.deploys.values() if d.finished][:-50]:
            del self.deploys[old.id]
        deploy.task = self.tasks.spawn(self._run(deploy, record, gate, migrate), f"deploy {deploy.id}")
        return deploy

    async def abort(self, deploy_id: str) -> dict[str, Any]:
        """Ctrl-C of ``anycore deploy``: stop a deploy that has not shifted (its new release's
        processes are stopped, the old release keeps serving); one past its shift goes on.
        Returns once an aborted deploy has cleaned up (bounded by its stop timeouts)."""
        deploy = self.deploys.get(deploy_id)
        if deploy is None:
            raise AnycoreError(f"no deploy {deploy_id!r} on this node — see `anycore releases`")
        info = {"service": deploy.service, "release": deploy.release, "previous": deploy.previous}
        if deploy.finished or deploy.shifted or deploy.task is None:
            return {**info, "aborted": False, "phase": deploy.phase.value}
        deploy.aborting = True
        deploy.task.cancel()  # lands at the deploy's current await, always before the shift (no await between the check and here)
        await asyncio.wait([deploy.task])
        return {**info, "aborted": deploy.phase is Phase.FAILED, "phase": deploy.phase.value}

    async def _run(self, deploy: Deploy, record: ReleaseRecord, gate: Any = None, migrate: bool = True) -> None:
        try:
            old = await self._prepare_and_shift(deploy, record, gate, migrate)
        except asyncio.CancelledError:
            if not deploy.aborting:
                raise
            if not deploy.finished:
                deploy.fail("aborted before the shift (Ctrl-C of `anycore deploy`); the old release serves as before")
            return
        except OSError as exc:  # the disk (cache, staging): one line, and the next deploy starts clean
            self._failed(deploy, record, StorageError.of_disk(f"deploy of {record.id}", exc) or exc)
            return
        except Exception as exc:  # anything before the shift aborts the deploy, never the node
            self._failed(deploy, record, exc)
            return
        if deploy.finished:
            return
        if old is not None:
            service = self.node.services[record.service]
            in_flight = sum(service.inflight(w.id) for w in old.workers.values())  # the router's count
            deploy.enter(Phase.DRAIN, f"{old.release}: {in_flight} in flight")
            await service.retire(old, on_drained=lambda: deploy.enter(Phase.RETIRE, old.release))
            if old.launch.env_hash:  # its environment's template may have no release left
                await Template.stop_idle(keep={sys.executable} | {r.launch.python for r in self._running()})
        deploy.enter(Phase.DONE)

    def _failed(self, deploy: Deploy, record: ReleaseRecord, exc: Exception) -> None:
        if isinstance(exc, StorageError):
            self.on_storage_error(exc)  # the embedded NATS is restarted once the disk takes writes
        service = self.node.services.get(record.service)
        if service is not None:
            service.record_failure(record.id, getattr(exc, "reason", str(exc)))
        if not deploy.finished:
            deploy.fail(str(exc) if isinstance(exc, AnycoreError) else f"internal error: {exc!r}",
                        getattr(exc, "traceback", ""))

    async def _prepare_and_shift(self, deploy: Deploy, record: ReleaseRecord, gate: Any = None, migrate: bool = True) -> Any:
        lock = self.locks.setdefault(record.service, asyncio.Lock())
        async with lock:
            service = self.node.services.get(record.service)
            if service is not None and service.release is not None and service.release_id == record.id:
                deploy.noop(f"{record.id} is already live; nothing changed")
                return None
            deploy.enter(Phase.FETCH)
            self.node.gateway.check_routes(record.service, record.config.routes)
            directory = str(await self.store.materialize(record))
            launch = await self._launch(deploy, record, directory)
            deploy.enter(Phase.IMPORT)
            created = service is None
            if service is None:
                service = self.node.create_service(record.service, record.config)
            new = service.new_release(record.id, directory, record.config, launch)
            previous = service.release_id if service.release is not None else ""
            try:
                # Warm as many workers as the old release has now, so capacity never dips.
                serving = service.release.live_count() if service.release is not None else 0
                await new.start(on_imported=lambda: deploy.enter(Phase.WARM, f"{new.target} workers"),
                                warm=max(record.config.worker_count, serving))
                hook = record.config.migrate if migrate and not record.migrated else ""
                sessions = service.sessions.live_sessions()
                if hook or sessions:
                    deploy.enter(Phase.MIGRATE, ", ".join(filter(None, [
                        hook, f"dry-run of migrate() on {len(sessions)} live sessions" if sessions else ""])))
                if hook:
                    await new.run_hook({"release": record.id, "previous_release": previous, "service": record.service})
                    record.migrated = True
                    await self.store.put_release(record)
                if sessions:
                    await new.guard(service.sessions.dry_run(new))
                if gate is not None:
                    try:
                        await gate.wait(deploy)
                    except ReleaseFailed:
                        await new.stop(timeout=2.0)
                        raise
            except ReleaseFailed:
                if created:
                    self.node.forget_service(service)
                raise
            except BaseException:  # aborted, or a store/disk error: leave nothing of the new release behind
                await asyncio.shield(new.stop(timeout=2.0))
                if created:
                    self.node.forget_service(service)
                raise
            deploy.enter(Phase.SHIFT)
            old = service.shift(new, directory, record.config)
            self.node.gateway.add_service(service)
            if old is not None and record.config.client_notify:
                service.notify_clients(new, old)
            record.deployed_at = now()
            await self.store.put_release(record)
            if await self.store.set_live(record.service, record.id):
                await self.collect_envs()
            if gate is not None:
                await gate.shifted(deploy)
            return old

    async def _launch(self, deploy: Deploy, record: ReleaseRecord, directory: str) -> Launch:
        """The env phase (only for a release with declared dependencies), then the user,
        data directory and variables its processes run with (anycore.supervisor.launch)."""
        envs = self.node.envs
        result = None
        if envs is not None and declared(directory):
            deploy.enter(Phase.ENV, "looking up the environment")
            result = await envs.ensure(record.id, directory, on_progress=deploy.note)
            if result is not None:
                deploy.note(result.describe())
                self.node.log.event("release.env", record.service, release=record.id, env=result.info.hash,
                                    cache_hit=result.cache_hit, installed=len(result.installed), s=round(result.seconds, 3),
                                    steps=",".join(f"{k}:{v}" for k, v in result.steps.items()) or None)
        user, ignored = plan_user(record.config.user, self.node.service_user, os.geteuid())
        if ignored:
            self.node.log.event("release.user_ignored", record.service, release=record.id, reason=ignored)
        uid, gid = resolve_user(user) if user else (None, None)
        if uid:
            try:
                for path in (self.node.home, Path(sys.base_prefix), Path(sysconfig.get_paths()["purelib"])):
                    check_reachable(path, user, uid, gid)
            except ConfigError as exc:
                if record.config.user or self.node.service_user:
                    raise  # a user was chosen: it must work
                # The default user cannot reach the interpreter or the home (Python or
                # ANYCORE_HOME under a 0700 /root, as on a fresh root login): zero config must
                # still serve, so the service runs as root, and the deploy says so and how to
                # change it (gunicorn and uvicorn also run workers as whoever started them).
                why = str(exc).replace("or set `user`/--user", "or set `user`/--user to run it unprivileged")
                deploy.note(f"running as root: {why}")
                self.node.log.event("release.runs_as_root", record.service, release=record.id, reason=why)
                user, uid, gid = "root", None, None
        data = prepare_data_dir(self.node.home, record.service, uid, gid)
        variables = {"ANYCORE_SERVICE": record.service, "ANYCORE_DATA_DIR": str(data)}
        if uid is not None and uid != os.geteuid():  # its own home: the node's is closed to it
            variables.update(HOME=str(data), USER=user, LOGNAME=user)
        if result is None:
            return Launch(uid=uid, gid=gid, user=user, variables=variables)
        return Launch(python=result.info.python, uid=uid, gid=gid, user=user, env_hash=result.info.hash, variables=variables)

    def _running(self) -> list[Any]:
        return [r for s in self.node.services.values() for r in (s.release, *s.draining) if r is not None]

    async def collect_envs(self) -> None:
        """Remove the environments no cached release uses (after releases fell out of the
        history): decided on the loop, deleted in a thread (an environment can be hundreds
        of MiB, the loop serves)."""
        envs, cache = self.node.envs, self.store.cache
        if envs is None or cache is None:
            return
        kept = {p.name for p in cache.iterdir() if not p.name.startswith(".")}
        in_use = {r.launch.env_hash for r in self._running()}
        removed = envs.retire_unused(kept, in_use)  # on the loop: no ensure() can fall in between
        if removed:
            self.node.log.event("env.collected", removed=",".join(removed))
            await asyncio.get_running_loop().run_in_executor(None, envs.purge)

    async def rollback(self, service: "ServiceRuntime", to: str | None, source: str, deploy_id: str | None = None,
                       start: Callable[[ReleaseRecord, str, str | None], Deploy] | None = None) -> Deploy:
        kept = await self.store.get_service(service.name)
        history = kept.history if kept else []
        if to:
            target = resolve_release(service.name, to, history)
        else:
            target = service.previous[0] if service.previous else ""
            if not target:
                earlier = [r for r in history if r != service.release_id]
                target = earlier[-1] if earlier else ""
        if not target:
            raise AnycoreError(f"service {service.name} has no earlier release to roll back to — see `anycore releases {service.name}`")
        record = await self.store.get_release(target)
        if record is None:
            raise AnycoreError(f"release {target} is not kept — see `anycore releases {service.name}`")
        return (start or self.start)(record, source, deploy_id)


def resolve_release(service: str, given: str, kept: list[str]) -> str:
    """``--to`` of a rollback: a full id (``shop@3f9a2c1b...``) or a unique prefix of a kept
    release's hash (``3f9a``, ``shop@3f9a``); ConfigError naming the kept ones otherwise."""
    name, sep, digest = given.partition("@")
    if not sep:
        name, digest = service, given
    if name != service:
        raise ConfigError(f"release {given!r} belongs to service {name!r}, not {service!r} — see `anycore releases {service}`")
    matches = [r for r in kept if r.partition("@")[2].startswith(digest)] if digest else []
    if len(matches) == 1:
        return matches[0]
    listed = ", ".join(reversed(kept)) or "none"
    what = "matches several kept releases" if matches else "is not a kept release"
    raise ConfigError(f"{given!r} {what} of service {service} (kept: {listed}) — see `anycore releases {service}`")
