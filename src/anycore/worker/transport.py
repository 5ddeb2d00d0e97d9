"""``anycore.transport()``: an httpx transport whose requests are anycore calls.

``httpx.AsyncClient(transport=anycore.transport(), base_url="http://shop")`` sends every
request of the client to service ``shop`` through the node (``worker/calls.py``), with the
same deadline, request id and trace propagation as ``anycore.call``; the URL's host names
the service, its path and query are the call's. httpx's own ``timeout`` is not used: the
call's budget is the caller's remaining deadline (or ``anycore_timeout`` in the request's
``extensions``). ``sync_transport()`` is the same for ``httpx.Client`` in threads (WSGI).

httpx is imported here only: a service that never asks for a transport need not have it.

Layer L1 (worker); runs in the worker process.
"""

from __future__ import annotations

from typing import Any

from anycore.errors import CallFailed
from anycore.worker import calls

try:
    import httpx
except ImportError:  # the service's environment has no httpx: say so when a transport is asked for
    httpx = None  # type: ignore[assignment]


def _need_httpx() -> None:
    if httpx is None:
        raise CallFailed("anycore.transport() needs httpx in the service's environment — add `httpx` to the "
                         "service's requirements.txt (or use `await anycore.call(...)`, which needs nothing)")


def _target(request: Any) -> tuple[str, str, list[tuple[bytes, bytes]], float | None]:
    service = request.url.host
    path = request.url.raw_path.decode("ascii")
    headers = [(k.lower(), v) for k, v in request.headers.raw if k.lower() not in (b"host", b"transfer-encoding")]
    return service, path, headers, request.extensions.get("anycore_timeout")


def transport() -> Any:
    _need_httpx()

    class AnycoreTransport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            service, path, headers, timeout = _target(request)
            response = await calls.open_call(service, request.method, path, content=_body(request),
                                             headers=headers, timeout=timeout)
            return httpx.Response(response.status_code, headers=response.raw_headers,
                                  stream=_AsyncStream(response), extensions={"http_version": b"HTTP/1.1"})

    return AnycoreTransport()


def _body(request: Any) -> Any:
    try:
        return request.content or None  # bytes, json, form: httpx has the whole body
    except httpx.RequestNotRead:
        return request.stream  # a streamed upload: an async iterable of bytes


def sync_transport() -> Any:
    _need_httpx()

    class AnycoreSyncTransport(httpx.BaseTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            service, path, headers, timeout = _target(request)
            response = calls.call_sync(service, request.method, path, content=request.read() or None,
                                       headers=headers, timeout=timeout)
            return httpx.Response(response.status_code, headers=response.raw_headers, content=response.content,
                                  extensions={"http_version": b"HTTP/1.1"})

    return AnycoreSyncTransport()


if httpx is not None:
    class _AsyncStream(httpx.AsyncByteStream):
        def __init__(self, response: calls.Response) -> None:
            self.response = response

        async def __aiter__(self) -> Any:
            async for chunk in self.response.aiter_bytes():
                yield chunk

        async def aclose(self) -> None:
            await self.response.aclose()
