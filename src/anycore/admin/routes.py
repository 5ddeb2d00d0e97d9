"""What a page of the admin listener is: a handler from ``AdminRequest`` to ``AdminResponse``.

The listener (``admin.server``) parses the request, checks the token, and looks the path
up in a flat table of handlers; the parts that serve pages (``admin.metrics``,
``admin.dashboard``) only build these tables. A response's ``body`` is bytes, or an async
iterator of byte chunks for a stream (the dashboard's server-sent events): the listener
writes each chunk as it comes, and closes the iterator when the client leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable, Union


@dataclass
class AdminRequest:
    method: str
    path: str                     # without the query
    query: dict[str, str]
    headers: dict[str, str]       # lower-case names


@dataclass
class AdminResponse:
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    body: Union[bytes, AsyncIterator[bytes]] = b""
    headers: list[tuple[str, str]] = field(default_factory=list)


Handler = Callable[[AdminRequest], Awaitable[AdminResponse]]
Routes = dict[str, Handler]  # exact path -> handler
