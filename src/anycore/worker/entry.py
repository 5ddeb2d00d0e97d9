"""Naming a release's code: an entry ``module:attr.path`` resolved to the object it names.

Layer L1 (worker); runs in the zygote and in the worker processes. The zygote resolves the
service's app and its Session handlers once, before it forks; a worker resolves a release's
client-notify hook when the node asks, and a migration hook's child its hook. All of them
import the release's modules from the process's ``sys.path`` (the release directory is its
first entry), so a name that does not resolve is an ``ImportError`` that says which entry.

Imports go one way: ``zygote`` and ``runner`` use this module; it uses only ``session``
(for the Session base class) and the standard library.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from anycore.worker.session import Session


def import_app(entry: str) -> Any:
    """The object ``entry`` ("module:attr.sub", or "module" alone) names."""
    module_name, _, attr = entry.partition(":")
    module = importlib.import_module(module_name)
    obj: Any = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ImportError(f"module {module_name!r} has no attribute {attr!r} (entry {entry!r})") from None
    return obj


def detect_kind(app: Any) -> str:
    """ASGI 3 apps are coroutine functions (or objects with an async ``__call__``); anything
    else callable is taken as WSGI (Flask, Django's WSGIHandler)."""
    if inspect.iscoroutinefunction(app) or inspect.iscoroutinefunction(getattr(app, "__call__", None)):
        return "asgi"
    if callable(app):
        return "wsgi"
    raise TypeError(f"{app!r} is not callable: entry must name an ASGI or WSGI application")


def import_session(entry: str) -> type[Session]:
    """The Session subclass ``entry`` names, or a TypeError that says what it is instead."""
    cls = import_app(entry)
    if not (isinstance(cls, type) and issubclass(cls, Session)):
        raise TypeError(f"session handler {entry!r} is {cls!r}, not a subclass of anycore.Session")
    return cls
