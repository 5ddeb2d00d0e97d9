"""A release's Python environment: declared dependencies, resolved with uv, shared by hash.

How it works. A service directory may declare dependencies (``requirements.txt``, or
``[project] dependencies`` in ``pyproject.toml``, locked by ``uv.lock`` if there is one). The node builds a virtual environment
for them with uv and runs the release's zygote on its interpreter. The environment holds
the service's packages *and* anycore's worker runtime: the runtime's distributions
(``RUNTIME``) are not downloaded again but linked, file by file, from the node's own
environment into the new one's site-packages with their ``dist-info``, so uv sees them as
installed; their exact versions are passed as constraints. So the app and the runtime are
resolved together, and an app needing another ``msgspec`` fails in uv's resolver with its
own explanation. Links are per file (never a linked directory), so nothing uv could ever
remove from the new environment touches the node's files; the node's environment never
gains a package.

Keys. The *spec* is what the release declares plus where it runs: (Python, platform,
runtime pins, the declared requirements). The *environment* is keyed by what the spec
resolved to: (Python, platform, runtime pins, the installed set). ``specs/<spec>`` maps one
to the other, so a redeploy with the same declaration is a file read (a cache hit costs
no resolver run), and two declarations that resolve to the same set share one
environment. In a cluster the first node that resolves a spec records the resolved set in
the KV bucket ``anycore_envs``; every other node installs exactly that set (a node whose
index lacks one of its packages fails the build and so its prepare vote).

Builds go to ``envs/.build-*`` and are renamed into place when complete (venvs are made
``--relocatable``), so an environment directory is always whole. ``uses/<release>`` records
which environment a cached release runs on; an environment no kept release uses is
removed by ``collect``. Index settings (``IndexSettings``) reach uv through its environment
variables, never its command line (readable by every local user) nor the release.
"""

from __future__ import annotations

import asyncio
import errno
import importlib.metadata
import json
import os
import secrets
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

from anycore.errors import StorageError
from anycore.supervisor import pdeathsig
from anycore.release.envspec import (RUNTIME, EnvBuildFailed, IndexSettings, declared, env_key, interpreter_tag,
                                     parse_installed, redact, resolved_set, runtime_pins, spec_key)

BUILD_TIMEOUT = 600.0
# uv's words for a disk that refuses writes (it prints the OS error with its number).
DISK_TEXTS = {"os error 28)": errno.ENOSPC, "os error 122)": errno.EDQUOT, "os error 30)": errno.EROFS,
              "os error 5)": errno.EIO}

__all__ = ["EnvBuildFailed", "EnvInfo", "EnvResult", "Environments", "IndexSettings", "KvLocks", "declared", "redact"]


@dataclass
class EnvInfo:
    hash: str
    path: str
    python: str
    packages: list[str]
    size: int = 0
    built_s: float = 0.0

    @classmethod
    def load(cls, path: Path) -> "EnvInfo | None":
        try:
            data = json.loads((path / "anycore-env.json").read_text())
        except (OSError, ValueError):
            return None
        return cls(**data)

    def summary(self) -> dict[str, Any]:
        return {"hash": self.hash, "packages": len(self.packages), "size_mib": round(self.size / 2**20, 2)}


@dataclass
class EnvResult:
    info: EnvInfo
    cache_hit: bool
    installed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)  # seconds per step of a build

    def describe(self) -> str:
        i = self.info
        if self.cache_hit:
            return f"cache hit: environment {i.hash} ({len(i.packages)} packages), no build"
        listed = ", ".join(self.installed[:8]) + (f" and {len(self.installed) - 8} more" if len(self.installed) > 8 else "")
        return (f"built environment {i.hash} in {self.seconds:.2f}s: installed {len(self.installed)} packages"
                + (f" ({listed})" if listed else "") + f", {len(i.packages)} in all")


class LockStore(Protocol):
    """Cluster-wide record of what a spec resolved to (KV ``anycore_envs``; a dict in tests)."""

    async def get(self, spec: str) -> list[str] | None: ...
    async def create(self, spec: str, resolved: list[str]) -> list[str]:
        """Record ``resolved`` unless another node did first; returns the recorded set."""
        ...


# -- the executor ------------------------------------------------------------------------------

class Environments:
    """The node's environments under ``root`` (``$ANYCORE_HOME/envs``)."""

    def __init__(self, root: Path, index: IndexSettings | None = None, locks: LockStore | None = None,
                 uv: str | None = None, python: str = sys.executable) -> None:
        self.root = root
        self.index = index or IndexSettings()
        self.locks = locks
        self.python = python
        self.tag = interpreter_tag()
        self.runtime = runtime_pins()
        self._uv = uv
        self._builds: dict[str, asyncio.Future[EnvResult]] = {}
        self._ensuring: Counter[str] = Counter()  # specs inside ensure(), kept by a collection
        # Builds and removals a node killed mid-way left behind (the node holds its home's
        # lock, so no build of another node can be running here).
        self.purge()
        for stale in (root.glob(".build-*") if root.is_dir() else []):
            shutil.rmtree(stale, ignore_errors=True)

    @property
    def uv(self) -> str:
        if self._uv is None:
            import uv as uv_package

            self._uv = uv_package.find_uv_bin()
        return self._uv

    def _dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # a service reaches its environment by path, lists none
        for sub in ("specs", "uses"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def lookup(self, spec: str) -> EnvInfo | None:
        """The environment a spec resolved to earlier on this node, if it is still whole."""
        try:
            env_hash = (self.root / "specs" / spec).read_text().strip()
        except OSError:
            return None
        return EnvInfo.load(self.root / env_hash)

    async def ensure(self, release: str, directory: str, on_progress: Callable[[str], None] | None = None) -> EnvResult | None:
        """The release's environment, built if needed; None if it declares no dependencies.
        Raises EnvBuildFailed with uv's explanation."""
        requirements = declared(directory)
        if not requirements:
            return None
        self._dirs()
        spec = spec_key(self.tag, self.runtime, requirements)
        started = time.monotonic()
        self._ensuring[spec] += 1
        try:
            info = self.lookup(spec)
            if info is not None:
                result = EnvResult(info, cache_hit=True, seconds=time.monotonic() - started)
            else:
                # Two deploys of one spec at once build it once.
                pending = self._builds.get(spec)
                if pending is None:
                    pending = asyncio.ensure_future(self._build(release, spec, requirements, directory, on_progress))
                    self._builds[spec] = pending
                    pending.add_done_callback(lambda _: self._builds.pop(spec, None))
                result = await asyncio.shield(pending)
            self._write(self.root / "uses" / release, result.info.hash)
        finally:
            self._ensuring[spec] -= 1
            if not self._ensuring[spec]:
                del self._ensuring[spec]
        return result

    def used_by(self, release: str) -> EnvInfo | None:
        try:
            return EnvInfo.load(self.root / (self.root / "uses" / release).read_text().strip())
        except OSError:
            return None

    async def _build(self, release: str, spec: str, requirements: str, directory: str,
                     on_progress: Callable[[str], None] | None) -> EnvResult:
        started = time.monotonic()
        locked = await self._recorded(spec)
        build = self.root / f".build-{secrets.token_hex(4)}"
        try:
            steps: dict[str, float] = {}
            mark = time.monotonic()

            def step(name: str) -> None:
                nonlocal mark
                steps[name] = round(time.monotonic() - mark, 3)
                mark = time.monotonic()

            await self._uv_run(release, ["venv", "--quiet", "--relocatable", "--python", self.python, str(build)], directory)
            step("venv")
            site = _site_packages(build)
            _link_runtime(site)
            step("link")
            (build / "anycore-runtime.txt").write_text("".join(f"{p}\n" for p in self.runtime))
            req = build / "anycore-requirements.txt"
            req.write_text("".join(f"{p}\n" for p in locked) if locked is not None else requirements)
            if locked is None and (Path(directory) / "requirements.txt").is_file():
                req = Path(directory) / "requirements.txt"  # its relative paths (./wheels/x.whl) stay right
            if on_progress is not None:
                on_progress("resolving and installing with uv" + (" (the set recorded by the cluster)" if locked else ""))
            _, err = await self._uv_run(release, ["pip", "install", "--python", str(build / "bin" / "python"),
                                                  "-r", str(req), "-c", str(build / "anycore-runtime.txt")], directory)
            installed = parse_installed(err)
            step("install")
            freeze, _ = await self._uv_run(release, ["pip", "freeze", "--exclude-editable", "--python",
                                                     str(build / "bin" / "python")], directory)
            resolved = resolved_set(freeze)
            step("freeze")
            if locked is None and self.locks is not None:
                try:
                    recorded = await self.locks.create(spec, resolved)
                except Exception:  # NATS away: this node's resolution stands; others resolve alone
                    recorded = resolved
                if recorded != resolved:  # another node resolved it first, to another set: use theirs
                    shutil.rmtree(build, ignore_errors=True)
                    return await self._build(release, spec, requirements, directory, on_progress)
            env_hash = env_key(self.tag, self.runtime, resolved)
            target = self.root / env_hash
            info = EnvInfo.load(target)
            if info is None:
                info = EnvInfo(env_hash, str(target), str(target / "bin" / "python"), resolved, _size(build),
                               round(time.monotonic() - started, 3))
                (build / "anycore-env.json").write_text(json.dumps(info.__dict__))
                shutil.rmtree(target, ignore_errors=True)
                build.rename(target)
            self._write(self.root / "specs" / spec, env_hash)
            return EnvResult(info, cache_hit=False, installed=installed, seconds=time.monotonic() - started, steps=steps)
        finally:
            shutil.rmtree(build, ignore_errors=True)

    async def _recorded(self, spec: str) -> list[str] | None:
        if self.locks is None:
            return None
        try:
            return await self.locks.get(spec)
        except Exception:  # NATS away: resolve here rather than fail the deploy
            return None

    async def _uv_run(self, release: str, args: list[str], cwd: str) -> tuple[str, str]:
        """Run uv; (stdout, stderr), credentials redacted; EnvBuildFailed with its explanation."""
        # A build runs the release's build backends (sdists, local projects): code of the
        # release, so it gets none of the node's secrets either.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "ANYCORE_"))}
        env.update(self.index.uv_env())
        env["UV_NO_PROGRESS"] = "1"
        # A service user cannot write __pycache__ into the environment: compile at install.
        env["UV_COMPILE_BYTECODE"] = "1"
        proc = await asyncio.create_subprocess_exec(self.uv, *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                    preexec_fn=pdeathsig.preexec())
        try:
            out, err = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            proc.kill()
            await proc.wait()
            raise
        stdout, stderr = redact(out.decode(errors="replace")), redact(err.decode(errors="replace"))
        if proc.returncode != 0:
            lines = [ln for ln in (stdout + stderr).splitlines() if ln.strip() and not ln.startswith("Using Python")]
            disk = next((code for text, code in DISK_TEXTS.items() if text in stderr), None)
            if disk is not None:  # not the requirements' fault: say what to do about the disk
                raise StorageError(f"the environment build of {release}", " ".join(ln.strip() for ln in lines[-3:]), disk)
            raise EnvBuildFailed(release, "its environment could not be built: " + " ".join(
                ln.strip() for ln in lines[-8:]) + " — fix the declared requirements, or the node's index "
                "settings (--index-url, --find-links)")
        return stdout, stderr

    @staticmethod
    def _write(path: Path, text: str) -> None:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(3)}")
        tmp.write_text(text)
        tmp.replace(path)

    # -- garbage collection ------------------------------------------------------------------
    def collect(self, kept_releases: set[str], in_use: set[str]) -> list[str]:
        """Remove the environments that no kept release uses and no running release runs on."""
        removed = self.retire_unused(kept_releases, in_use)
        self.purge()
        return removed

    def retire_unused(self, kept_releases: set[str], in_use: set[str]) -> list[str]:
        """The decision half of ``collect``, cheap and on the loop thread (so it cannot fall
        between an ``ensure`` finding or building an environment and recording its release
        in ``uses/``): environments to remove are renamed out of sight (``.trash-*``), and
        ``purge`` deletes them later, in a thread."""
        if not self.root.is_dir():
            return []
        keep = set(in_use)
        for spec in self._ensuring:  # a deploy between finding its environment and recording it
            try:
                keep.add((self.root / "specs" / spec).read_text().strip())
            except OSError:
                pass
        uses = self.root / "uses"
        for record in (uses.iterdir() if uses.is_dir() else []):
            if record.name in kept_releases:
                keep.add(record.read_text().strip())
            else:
                record.unlink(missing_ok=True)
        removed = []
        for path in self.root.iterdir():
            if path.name.startswith(".") or path.name in ("specs", "uses") or path.name in keep:
                continue
            path.rename(self.root / f".trash-{path.name}-{secrets.token_hex(3)}")
            removed.append(path.name)
        specs = self.root / "specs"
        for record in (specs.iterdir() if specs.is_dir() else []):
            if record.read_text().strip() in removed:
                record.unlink(missing_ok=True)
        return removed

    def purge(self) -> None:
        """Delete what ``retire_unused`` set aside (an environment can be hundreds of MiB)."""
        for trash in (self.root.glob(".trash-*") if self.root.is_dir() else []):
            shutil.rmtree(trash, ignore_errors=True)


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python*/site-packages"))
    if not found:
        raise EnvBuildFailed(venv.name, f"uv made no site-packages in {venv}")
    return found[0]


def _link_runtime(site: Path) -> None:
    """Link each file of the runtime's distributions into ``site`` (see the module's header)."""
    for name in RUNTIME:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        for entry in dist.files or []:
            rel = str(entry)
            if rel.startswith("..") or os.path.isabs(rel):
                continue  # scripts in bin/: the environment runs no runtime command
            source = Path(str(dist.locate_file(entry)))
            out = site / rel
            if not source.exists() or out.exists():
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            out.symlink_to(source)


def _size(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


class KvLocks:
    """``LockStore`` on the KV bucket ``anycore_envs`` (key: spec hash, value: the resolved
    set), opened (or created) on first use: a cluster that never builds an environment
    never gets the bucket."""

    BUCKET = "anycore_envs"

    def __init__(self, js: Any) -> None:
        self.js = js
        self.kv: Any = None

    async def _bucket(self) -> Any:
        if self.kv is None:
            from nats.js.api import KeyValueConfig
            from nats.js.errors import BucketNotFoundError, NotFoundError

            from anycore.cluster.jetstream import create_replicated

            try:
                self.kv = await self.js.key_value(self.BUCKET)
            except (BucketNotFoundError, NotFoundError):
                self.kv = await create_replicated(lambda n: self.js.create_key_value(
                    KeyValueConfig(bucket=self.BUCKET, history=1, replicas=n)))
        return self.kv

    async def get(self, spec: str) -> list[str] | None:
        from nats.js.errors import KeyNotFoundError, NotFoundError

        try:
            entry = await (await self._bucket()).get(spec)
        except (KeyNotFoundError, NotFoundError):
            return None
        return json.loads(entry.value) if entry.value else None

    async def create(self, spec: str, resolved: list[str]) -> list[str]:
        kv = await self._bucket()
        try:
            await kv.create(spec, json.dumps(resolved).encode())
            return resolved
        except Exception:  # another node recorded it first (KeyWrongLastSequenceError): theirs wins
            recorded = await self.get(spec)
            return recorded if recorded is not None else resolved
