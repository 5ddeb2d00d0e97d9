"""Running one request of a WSGI app (PEP 3333) straight from the worker's frames.

No ASGI adapter sits between the frames and the app. A ``WsgiCycle`` is the worker's half
of one request, shared by two threads: the frame loop (which feeds it ``Body``, ``Credit``
and ``Cancel``) and the app thread that runs ``run_cycle`` (which reads the body, calls the
app and writes the response frames itself, through the channel's locked writer). They
meet under the app thread's ``threading.Condition``, and only when one side must wait:

- The environ is built from the ``Req`` frame with the rules of the ASGI scope (the
  route prefix is ``SCRIPT_NAME``, the rest of the path ``PATH_INFO``, both as latin-1
  "bytes in str" per the PEP). A body that arrived whole is an ``io.BytesIO``; a large one
  is a ``BodyInput`` that blocks the app's thread (never the loop) until the next chunk
  arrives, and returns ``Credit`` as the app consumes, so a 1 GB upload holds at most the
  credit window in the worker.
- ``start_response`` only records status and headers; they leave with the first non-empty
  body chunk (``Resp``). A response known to be complete (a one-item list, or as many
  bytes as its Content-Length) is sent with ``more=False`` together with ``Done`` in one
  write, after ``close()``. A streamed response sends each chunk as it is produced and
  waits for credit when ``WINDOW`` bytes are unacknowledged, so a slow client slows the
  app instead of filling memory.
- ``close()`` of the returned iterable is always called: after the last chunk, after an
  exception, and after the client went away (``Cancel``: the next chunk is not asked for).
- An exception before anything was sent becomes a 500 with the traceback in the log;
  after, the response is cut (``Done`` with the error) as the node expects.

Invariant: ``Done`` for a request leaves only after the app, its iterable and ``close()``
returned; the node frees the slot on ``Done``, so a request past its deadline (504 from
the node, ``Cancel`` here) still holds its slot until its thread really is free.

Layer L1 (worker); runs in a WSGI worker process, on the app's threads. It uses
``wsgi_io`` for its stream objects, which never imports it back.
"""

from __future__ import annotations

import io
import sys
import threading
import time
import traceback
from collections import deque
from typing import Any, Callable, Iterable

from anycore import wire
from anycore.worker.calls import enter_request
from anycore.worker.wsgi_io import BodyInput, ClientDisconnected, FileWrapper

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
ERROR_BODY = b'{"error": "internal server error", "detail": "the service raised an exception; see `anycore logs`"}'
SPLIT = wire.CHUNK * 4  # larger chunks from the app leave as several Body frames


class WsgiCycle:
    """One request's state between the frame loop and its app thread (see the module doc)."""

    __slots__ = ("req", "id", "cond", "chunks", "body_done", "disconnected", "credit", "started",
                 "complete", "active_since")

    def __init__(self, req: wire.Req, cond: threading.Condition | None = None) -> None:
        self.req = req
        self.id = req.id
        # The app thread's own condition (a Condition costs ~4 µs to make, a third of a hello
        # request's overhead): a thread runs one cycle at a time, so the cycles it runs can share it.
        self.cond = cond or threading.Condition(threading.Lock())
        self.chunks: deque[bytes] = deque()
        self.body_done = not req.more
        self.disconnected = False
        self.credit = wire.WINDOW
        self.started = False   # Resp sent (or queued to send)
        self.complete = False  # the last body byte sent
        self.active_since = 0.0  # monotonic time the app last got control back; 0 while waiting on us

    # -- the frame loop's side -------------------------------------------------------------
    def feed(self, data: bytes, more: bool) -> None:
        with self.cond:
            self.chunks.append(data)
            self.body_done = not more
            self.cond.notify_all()

    def add_credit(self, n: int) -> None:
        with self.cond:
            self.credit += n
            self.cond.notify_all()

    def disconnect(self) -> None:
        with self.cond:
            self.disconnected = True
            self.cond.notify_all()

    # -- the app thread's side --------------------------------------------------------------
    def next_chunk(self) -> bytes:
        """The next request body chunk (b"" at the end); blocks the calling thread."""
        with self.cond:
            if not self.chunks and not self.body_done and not self.disconnected:
                self.active_since = 0.0
                while not self.chunks and not self.body_done and not self.disconnected:
                    self.cond.wait()
                self.active_since = time.monotonic()
            if self.disconnected:
                raise ClientDisconnected("the client went away before the request body was complete")
            return self.chunks.popleft() if self.chunks else b""

    def wait_credit(self) -> None:
        with self.cond:
            if self.credit <= 0 and not self.disconnected:
                self.active_since = 0.0
                while self.credit <= 0 and not self.disconnected:
                    self.cond.wait()
                self.active_since = time.monotonic()


def base_environ(multithread: bool) -> dict[str, Any]:
    """The part of every environ that never changes in this worker."""
    return {"wsgi.version": (1, 0), "wsgi.errors": sys.stderr, "wsgi.multithread": multithread,
            "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True, "SCRIPT_NAME": "", "QUERY_STRING": ""}


def build_environ(req: wire.Req, base: dict[str, Any], body: Any) -> dict[str, Any]:
    """The environ of ``req`` (the ASGI scope's rules; see the module doc)."""
    environ = base.copy()
    path = req.path
    if not path.isascii():
        path = path.encode("utf-8").decode("latin-1")
    root = req.root_path
    if root:
        environ["SCRIPT_NAME"] = root.encode("utf-8").decode("latin-1") if not root.isascii() else root
        if path.startswith(environ["SCRIPT_NAME"]):
            path = path[len(environ["SCRIPT_NAME"]):]
    environ["REQUEST_METHOD"] = req.method
    environ["PATH_INFO"] = path
    if req.query:
        environ["QUERY_STRING"] = req.query.decode("latin-1")
    environ["SERVER_PROTOCOL"] = "HTTP/" + req.http_version
    environ["wsgi.url_scheme"] = req.scheme
    environ["wsgi.input"] = body
    server = req.server or ("localhost", 80)
    environ["SERVER_NAME"] = server[0]
    environ["SERVER_PORT"] = str(server[1])
    if req.client is not None:
        environ["REMOTE_ADDR"] = req.client[0]
        environ["REMOTE_PORT"] = str(req.client[1])
    for name, value in req.headers:
        if name == b"content-type":
            key = "CONTENT_TYPE"
        elif name == b"content-length":
            key = "CONTENT_LENGTH"
        else:
            key = "HTTP_" + name.decode("latin-1").upper().replace("-", "_")
        text = value.decode("latin-1")
        environ[key] = environ[key] + "," + text if key in environ else text
    return environ


def run_cycle(app: WSGIApp, cycle: WsgiCycle, base: dict[str, Any], write: Callable[[bytes], None]) -> bytes:
    """Run the app for ``cycle`` in the calling thread, writing the frames of a streamed
    answer as they come; returns the frames still to write, ``Done`` last (the caller
    writes them once its own bookkeeping is done). Never raises: a failure of the app is
    logged and answered."""
    req = cycle.req
    cycle.active_since = time.monotonic()
    enter_request(req, cycle)  # anycore.call_sync from this thread inherits the request's deadline and ids
    body: Any = io.BytesIO(req.body) if not req.more else BodyInput(cycle, write, req.body)
    environ = build_environ(req, base, body)
    status = 0
    headers: list[tuple[bytes, bytes]] = []
    length = -1  # the response's Content-Length, if it gave one
    sent = 0
    out: list[bytes] = []  # frames not yet written: a complete small response leaves with Done

    def emit(data: bytes, last: bool) -> None:
        nonlocal sent
        if cycle.disconnected or cycle.complete:
            return
        sent += len(data)
        if 0 <= length <= sent:
            last = True
        if not cycle.started:
            cycle.started = True
            out.append(wire.encode(wire.Resp(cycle.id, status, headers, data, not last)))
        else:
            out.append(wire.encode(wire.Body(cycle.id, data, not last)))
        if last:
            cycle.complete = True
            return
        write(b"".join(out))
        out.clear()
        cycle.credit -= len(data)
        if cycle.credit <= 0:
            cycle.wait_credit()

    def send(data: bytes, last: bool) -> None:
        if not status:
            raise AssertionError("the WSGI app produced body data before calling start_response")
        if type(data) is not bytes:
            if not isinstance(data, (bytearray, memoryview)):
                raise TypeError(f"the WSGI app produced {type(data).__name__} body data; PEP 3333 wants bytes")
            data = bytes(data)
        if len(data) <= SPLIT:
            emit(data, last)
            return
        view, end = memoryview(data), len(data)
        for start in range(0, end, SPLIT):
            emit(bytes(view[start:start + SPLIT]), last and start + SPLIT >= end)

    def start_response(status_line: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> Callable[[bytes], None]:
        nonlocal status, headers, length
        if exc_info is not None:
            try:
                if cycle.started:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback (PEP 3333)
        elif status:
            raise AssertionError("start_response called a second time without exc_info")
        status = int(status_line[:3])
        headers = []
        length = -1
        for name, value in response_headers:
            key = name.lower()
            if key == "content-length":
                length = int(value)
            headers.append((key.encode("latin-1"), value.encode("latin-1")))
        return write_body

    def write_body(data: bytes) -> None:  # the legacy write() callable
        if data:
            send(data, False)

    error: str | None = None
    result: Any = None
    if cycle.disconnected:  # cancelled before a thread took it: the app never runs
        cycle.active_since = 0.0
        return wire.encode(wire.Done(cycle.id, "cancelled"))
    try:
        result = app(environ, start_response)
        if type(result) is list and len(result) == 1:
            send(result[0], True)
        else:
            for chunk in result:
                if chunk:
                    send(chunk, False)
                if cycle.disconnected or cycle.complete:
                    break  # close() below; the client is gone, or Content-Length is reached
        if not cycle.complete and not cycle.disconnected:
            if not status:
                raise AssertionError("the WSGI app returned without calling start_response")
            send(b"", True)
    except BaseException as exc:  # noqa: BLE001 - any app failure becomes a 500 or a cut response, never a dead worker
        error = f"{type(exc).__name__}: {exc}"
        if cycle.disconnected:
            print(f"{req.method} {req.path}: {error} after the client went away", file=sys.stderr, flush=True)
        else:
            print(f"error in {req.method} {req.path}:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            try:
                close()
            except BaseException as exc:  # noqa: BLE001 - reported like an error in the app
                error = error or f"{type(exc).__name__}: {exc}"
                print(f"error closing the response of {req.method} {req.path}:\n{traceback.format_exc()}",
                      file=sys.stderr, flush=True)
    if error is not None and not cycle.started and not cycle.disconnected:
        out.append(wire.encode(wire.Resp(cycle.id, 500, [(b"content-type", b"application/json")], ERROR_BODY, False)))
        cycle.started = cycle.complete = True
    out.append(wire.encode(wire.Done(cycle.id, error)))
    cycle.active_since = 0.0
    return b"".join(out)


def strict_validator(app: WSGIApp) -> WSGIApp:
    """``wsgiref.validate.validator(app)``, checking the server and the app on every call,
    with one correction: PEP 3333 (note 1 on input streams) lets an app call
    ``wsgi.input.read()`` without a size, which Werkzeug does, and wsgiref's checker still
    refuses it. Used by tests through ``ANYCORE_WSGI_VALIDATE=1``."""
    from wsgiref import validate

    class InputWrapper(validate.InputWrapper):
        def read(self, *args: Any) -> bytes:
            if not args:
                data = self.input.read()
                if type(data) is not bytes:
                    raise AssertionError(f"wsgi.input.read() returned {type(data).__name__}, not bytes")
                return data
            return super().read(*args)

    setattr(validate, "InputWrapper", InputWrapper)
    return validate.validator(app)
