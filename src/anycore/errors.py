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
    ├── UnknownService         a command named a service the node does not run
    └── IllegalTransition      a lifecycle moved along an edge its table lacks (a bug)
"""

from __future__ import annotations


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


class UnknownService(AnycoreError):
    def __init__(self, name: str, known: list[str]) -> None:
        listed = ", ".join(sorted(known)) or "none"
        super().__init__(f"no service named {name!r} on this node (running: {listed}) — see `anycore ps`")


class IllegalTransition(AnycoreError):
    """A lifecycle was asked to move along an edge its transition table does not have."""

    def __init__(self, what: str, state: object, target: object) -> None:
        super().__init__(f"{what}: illegal transition {state} -> {target} (a bug in anycore; please report it)")
