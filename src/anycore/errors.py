"""The one exception tree of anycore.

Every error names the thing, what went wrong and what to do next, so that a message can
be shown to the user as it is (the CLI prints ``anycore: <message>`` and exits non-zero).

    AnycoreError
    ├── ConfigError            bad anycore.toml, bad PATH, bad flag value
    ├── ReleaseFailed          a release could not start (import error, lifespan failure)
    ├── BundleRefused          a release bundle is unsafe or too large
    ├── ControlError           the CLI could not talk to a node
    │   ├── NodeNotFound       no local node recorded under $ANYCORE_HOME
    │   └── NotAuthorized      NATS refused the credentials
    ├── NodeRunning            `anycore up` on a home whose node is already running
    ├── StorageError           a disk or file system refused a write (full, read-only, ...)
    ├── UnknownService         a command named a service the node does not run
    ├── CallFailed             a call to another service could not be made, or its answer was cut
    └── IllegalTransition      a lifecycle moved along an edge its table lacks (a bug)
"""

from __future__ import annotations

import errno


class AnycoreError(Exception):
    """Base of every anycore error; ``str(err)`` is a complete, user-facing sentence."""


class ConfigError(AnycoreError):
    pass


class ReleaseFailed(AnycoreError):
    def __init__(self, release: str, reason: str, traceback: str = "") -> None:
        self.release = release
        self.reason = reason
        self.traceback = traceback
        super().__init__(f"release {release} failed to start: {reason}")


class BundleRefused(AnycoreError):
    pass


class ControlError(AnycoreError):
    pass


class NodeNotFound(ControlError):
    pass


class NotAuthorized(ControlError):
    pass


class NodeRunning(AnycoreError):
    def __init__(self, home: object, pid: int, url: str) -> None:
        self.pid = pid
        self.url = url
        who = f"pid {pid}" if pid else "pid unknown"
        where = f", serving on {url}" if url else ", still starting"
        super().__init__(f"a node is already running under {home} ({who}{where}) — stop it with `anycore down`, "
                         "or set ANYCORE_HOME to another directory to run a second node")


# The errors that mean the disk itself refuses (a StorageError, after which the node heals
# its stores); other OSErrors of an operation are its own failure.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


class StorageError(AnycoreError):
    """A disk or file system refused a write or a read (ENOSPC, EIO, EROFS, EACCES, ...), in
    one line: what failed, the system's reason, what to do."""

    def __init__(self, what: str, reason: str, errno_: int | None = None) -> None:
        self.errno = errno_
        self.reason = reason
        super().__init__(f"{what} failed: {reason} — {storage_hint(errno_, reason)}")

    @classmethod
    def of_disk(cls, what: str, exc: OSError) -> "StorageError | None":
        """The StorageError for ``exc`` if the disk refused (DISK_ERRNOS), else None: a
        fork or a spawn that failed is the operation's own error, not a reason to heal
        the stores."""
        return cls.from_os(what, exc) if exc.errno in DISK_ERRNOS else None

    @classmethod
    def from_os(cls, what: str, exc: OSError) -> "StorageError":
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return cls(what, f"{exc.strerror or exc}{where}", exc.errno)


def storage_hint(errno_: int | None, reason: str = "") -> str:
    import errno

    by_text = {"no space": errno.ENOSPC, "quota": errno.EDQUOT, "read-only": errno.EROFS,
               "permission denied": errno.EACCES, "input/output": errno.EIO, "insufficient resources": errno.ENOSPC}
    if errno_ is None:
        errno_ = next((code for text, code in by_text.items() if text in reason.lower()), None)
    return {
        errno.ENOSPC: "free some disk space, then try again",
        errno.EDQUOT: "the disk quota is exhausted: free some space, then try again",
        errno.EROFS: "the file system is read-only: remount it read-write, then try again",
        errno.EACCES: "check the permissions of $ANYCORE_HOME, then try again",
        errno.EPERM: "check the permissions of $ANYCORE_HOME, then try again",
        errno.EIO: "the disk reported an I/O error: check it (dmesg), then try again",
    }.get(errno_ or 0, "fix the cause, then try again")


class UnknownService(AnycoreError):
    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"no service named {name!r} on this node (running: {listed}) — see `anycore ps`")


class CallFailed(AnycoreError):
    """``anycore.call`` could not be made (outside a worker, wrong thread) or its response
    was cut mid-body. Answers the node makes (404, 503, 504, 502, 508) are responses, not this."""


class IllegalTransition(AnycoreError):
    """A lifecycle was asked to move along an edge its transition table does not have."""

    def __init__(self, what: str, state: object, target: object) -> None:
        super().__init__(f"{what}: illegal transition {state} -> {target} (a bug in anycore; please report it)")


class JobRefused(AnycoreError):
    """``anycore.enqueue`` could not store the job (bad input, body too large, JetStream unreachable)."""
