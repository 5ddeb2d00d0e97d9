"""The code store and release records, in NATS JetStream.

- Bundles live in the Object Store bucket ``anycore_code`` under the release's hash, and in
  a content-addressed cache on each node's disk (``$ANYCORE_HOME/releases/<release id>``).
  A fetched bundle is unpacked into a temporary directory, hashed again with its config,
  and only renamed into the cache if the hash matches: a cached release is always whole
  and verified.
- I/O errors: a write the disk refuses, here (the cache) or in JetStream's own store (the
  nats-server answers with the OS's reason), becomes one ``StorageError`` naming the cause.
  The cache cannot hold a half-written release (staging + rename); an Object Store object
  without its meta entry (an upload cut short) is not seen by ``has_bundle`` and is simply
  uploaded again.
- Release records (``anycore_releases``, key ``<service>.<hash>``) say what a release is:
  its config, where it was deployed from and when. The service record (``anycore_services``,
  key ``<service>``) holds the live release and the history of kept releases, newest last.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import msgspec
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig
from nats.js.errors import APIError, BucketNotFoundError, KeyNotFoundError, NotFoundError, ObjectNotFoundError

from anycore.cluster.jetstream import create_replicated
from anycore.config import ServiceConfig
from anycore.errors import BundleRefused, ConfigError, StorageError
from anycore.release.bundle import release_id, remove_tree, seal, unpack

CODE_BUCKET = "anycore_code"
RELEASES_BUCKET = "anycore_releases"
SERVICES_BUCKET = "anycore_services"
KEEP = 10


class ReleaseRecord(msgspec.Struct, kw_only=True):
    id: str
    service: str
    config: ServiceConfig
    source: str
    created_at: float = 0.0
    deployed_at: float = 0.0
    migrated: bool = False


class ServiceRecord(msgspec.Struct, kw_only=True):
    name: str
    live: str = ""
    stopped: bool = False
    history: list[str] = msgspec.field(default_factory=list)  # oldest first, live included


# What nats-server says when its store refused a write (its text is the OS's reason).
STORE_FAILURES = ("no space left", "read-only file system", "input/output error", "permission denied",
                  "disk quota", "insufficient resources", "critical write error")


def storage_error(what: str, exc: BaseException) -> StorageError | None:
    """``exc`` as a StorageError if it is a disk's refusal (local, or reported by JetStream)."""
    if isinstance(exc, OSError):
        return StorageError.from_os(what, exc)
    if isinstance(exc, APIError):
        text = exc.description or ""
        if any(t in text.lower() for t in STORE_FAILURES):
            return StorageError(f"{what} (JetStream's store)", text)
    return None


@contextlib.contextmanager
def _storing(what: str) -> Iterator[None]:
    try:
        yield
    except (OSError, APIError) as exc:
        error = storage_error(what, exc)
        if error is None:
            raise
        raise error from None


def _hash(release: str) -> str:
    name, sep, digest = release.partition("@")
    if not (name and sep and digest):
        raise ConfigError(f"{release!r} is not a release id (SERVICE@HASH, e.g. shop@3f9a2c1b) — see `anycore releases`")
    return digest


class CodeStore:
    def __init__(self, js: JetStreamContext, cache: Path | None) -> None:
        self.js = js
        self.cache = cache
        self.objects: Any = None
        self.releases: Any = None
        self.services: Any = None

    async def open(self) -> "CodeStore":
        if self.cache is not None:
            self.cache.mkdir(parents=True, exist_ok=True)
        try:
            self.objects = await self.js.object_store(CODE_BUCKET)
        except (BucketNotFoundError, NotFoundError):
            self.objects = await create_replicated(lambda n: self.js.create_object_store(
                CODE_BUCKET, ObjectStoreConfig(description="anycore release bundles", replicas=n)))
        for attr, bucket in (("releases", RELEASES_BUCKET), ("services", SERVICES_BUCKET)):
            try:
                kv = await self.js.key_value(bucket)
            except (BucketNotFoundError, NotFoundError):
                kv = await create_replicated(lambda n, b=bucket: self.js.create_key_value(  # type: ignore[misc]
                    KeyValueConfig(bucket=b, history=5, replicas=n)))
            setattr(self, attr, kv)
        return self

    # -- bundles -------------------------------------------------------------------------
    async def has_bundle(self, release: str) -> bool:
        try:
            await self.objects.get_info(_hash(release))
            return True
        except (ObjectNotFoundError, NotFoundError):
            return False

    async def put_bundle(self, release: str, data: bytes) -> None:
        if not await self.has_bundle(release):
            with _storing(f"uploading {release} to the code store"):
                await self.objects.put(_hash(release), data)

    def cached(self, release: str) -> Path | None:
        assert self.cache is not None, "the CLI's store has no cache"
        path = self.cache / release
        return path if path.is_dir() else None

    async def materialize(self, record: ReleaseRecord) -> Path:
        """The release's verified directory in the local cache, fetching it if needed."""
        path = self.cached(record.id)
        if path is not None:
            return path
        try:
            result = await self.objects.get(_hash(record.id))
        except (ObjectNotFoundError, NotFoundError):
            raise BundleRefused(f"release {record.id} is not in the code store — deploy it again from its directory") from None
        assert self.cache is not None
        with _storing(f"unpacking {record.id} into the release cache"):
            # Unpacking and sealing (byte-compiling) take a while: off the loop.
            return await asyncio.get_running_loop().run_in_executor(None, self._unpack, record, result.data)

    def _unpack(self, record: ReleaseRecord, data: bytes) -> Path:
        """Unpack into a staging directory, verify, rename into place: all or nothing."""
        assert self.cache is not None
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=self.cache))
        try:
            unpack(data, str(staging / "code"))
            actual = release_id(str(staging / "code"), record.config)
            if actual != record.id:
                raise BundleRefused(f"release {record.id}: the fetched bundle hashes to {actual}; refusing it")
            seal(str(staging / "code"))
            target = self.cache / record.id
            (staging / "code").rename(target)
            return target
        finally:
            remove_tree(staging)

    # -- records -------------------------------------------------------------------------
    async def put_release(self, record: ReleaseRecord) -> None:
        with _storing(f"recording release {record.id}"):
            await self.releases.put(f"{record.service}.{_hash(record.id)}", msgspec.json.encode(record))

    async def get_release(self, release: str) -> ReleaseRecord | None:
        service = release.split("@", 1)[0]
        try:
            entry = await self.releases.get(f"{service}.{_hash(release)}")
        except (KeyNotFoundError, NotFoundError):
            return None
        return msgspec.json.decode(entry.value, type=ReleaseRecord) if entry.value else None

    async def get_service(self, name: str) -> ServiceRecord | None:
        try:
            entry = await self.services.get(name)
        except (KeyNotFoundError, NotFoundError):
            return None
        return msgspec.json.decode(entry.value, type=ServiceRecord) if entry.value else None

    async def all_services(self) -> list[ServiceRecord]:
        try:
            keys = await self.services.keys()
        except (NotFoundError, Exception):  # nats-py raises NoKeysError on an empty bucket
            return []
        records = [await self.get_service(k) for k in keys]
        return [r for r in records if r is not None]

    async def set_live(self, name: str, release: str, stopped: bool = False) -> list[str]:
        """Record ``release`` as live; returns the releases dropped from the kept history."""
        record = await self.get_service(name) or ServiceRecord(name=name)
        record.live = release
        record.stopped = stopped
        if release in record.history:
            record.history.remove(release)
        record.history.append(release)
        dropped = record.history[:-KEEP]
        record.history = record.history[-KEEP:]
        with _storing(f"recording {release} as live"):
            await self.services.put(name, msgspec.json.encode(record))
        for old in dropped:
            await self._forget(old)
        return dropped

    async def set_stopped(self, name: str, stopped: bool) -> None:
        record = await self.get_service(name)
        if record is not None:
            record.stopped = stopped
            with _storing(f"recording service {name} as {'stopped' if stopped else 'started'}"):
                await self.services.put(name, msgspec.json.encode(record))

    async def _forget(self, release: str) -> None:
        """Garbage-collect a release that fell out of the kept history."""
        try:
            await self.objects.delete(_hash(release))
        except Exception:  # already gone, or shared by an identical release of another service
            pass
        try:
            await self.releases.delete(f"{release.split('@', 1)[0]}.{_hash(release)}")
        except Exception:
            pass
        if self.cache is not None:
            remove_tree(self.cache / release)


def now() -> float:
    return time.time()


def describe(record: ReleaseRecord) -> dict[str, Any]:
    return json.loads(msgspec.json.encode(record))  # type: ignore[no-any-return]
