"""The zygote: one per release and node. It imports the release's code and forks workers.

Started by the node as ``python -m anycore.worker.zygote SPEC_JSON`` in its own session
(so a terminal's Ctrl-C reaches only the node), with the release directory as cwd and one
end of a SOCK_SEQPACKET socketpair as fd ``CONTROL_FD``. It never starts an event loop or
a thread: a child forked from it starts clean (see MEASURED.md, "fork after a loop has run
is unsafe"). It preloads everything a worker imports lazily and calls ``gc.freeze()`` so
the pages stay shared copy-on-write.

Control messages (msgpack arrays, one per datagram):
  node -> zygote   ["fork", worker_id]  with two fds: the worker's frame socket and log socket,
                                        or three: then the native gateway's data socket too
  zygote -> node   ["ready", pid, kind]       code imported; kind is "asgi" or "wsgi"
                   ["failed", reason, traceback]  import failed; the zygote exits 1
                   ["forked", worker_id, pid]
                   ["exited", pid, wait_status]   a worker was reaped

Layer L1 (worker); runs in the zygote process (and in a migration hook's child). It
imports ``entry``, ``runner`` and ``supervisor.pdeathsig``; only ``template`` imports it.
"""

from __future__ import annotations

import gc
import inspect
import json
import os
import select
import signal
import socket
import sys
import traceback
from typing import Any

import msgspec

from anycore.supervisor import pdeathsig
from anycore.worker.entry import detect_kind, import_app, import_session
from anycore.worker.runner import redirect_output, run_worker

CONTROL_FD = 3


async def sessions_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The app of a service with ``entry = ""``: only its Sessions answer."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"this service serves only WebSocket sessions\n"})
    elif scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": 1008})
    else:
        raise RuntimeError("lifespan not supported")


def main() -> None:
    spec = json.loads(sys.argv[1])
    control = socket.socket(fileno=CONTROL_FD)
    control.setblocking(True)
    send = lambda *msg: control.send(msgspec.msgpack.encode(list(msg)))  # noqa: E731
    sys.path.insert(0, os.getcwd())
    try:
        # What workers import lazily is preloaded by the imports above (runner, uvloop), so a
        # fork answers in milliseconds.
        app = import_app(spec["entry"]) if spec["entry"] else sessions_only
        kind = detect_kind(app)
        handlers = {entry: import_session(entry) for entry in spec.get("sessions", [])}
    except BaseException as exc:  # noqa: BLE001 - reported to the node with its traceback
        send("failed", f"{type(exc).__name__}: {exc}", traceback.format_exc())
        sys.exit(1)
    gc.collect()
    gc.freeze()

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    send("ready", os.getpid(), kind)

    while True:
        readable, _, _ = select.select([control, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            reap(send)
        if control in readable:
            try:
                data, fds, _, _ = socket.recv_fds(control, 4096, 3)
            except OSError:
                data, fds = b"", []
            if not data:
                os._exit(0)  # the node is gone or retired us; workers notice their own sockets
            message = msgspec.msgpack.decode(data)
            if message[0] == "fork":
                _fork(message[1], fds, spec, app, kind, handlers, control, wake_r, wake_w, send)
            elif message[0] == "hook":
                _hook(message[1], message[2], fds, control, wake_r, wake_w)


def reap(send: Any) -> None:
    """Collect every exited child and report ["exited", pid, wait_status]."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        send("exited", pid, status)


class HookContext:
    """What a migration hook is told: ``release``, ``previous_release`` (or None), ``service``, ``env``."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.release: str = data["release"]
        self.previous_release: str | None = data.get("previous_release") or None
        self.service: str = data["service"]
        self.env: dict[str, str] = dict(os.environ)

    def __repr__(self) -> str:
        return f"HookContext(release={self.release!r}, previous_release={self.previous_release!r}, service={self.service!r})"


def _hook(entry: str, context: dict[str, Any], fds: list[int], control: socket.socket, wake_r: int, wake_w: int) -> None:
    """Run the release's migration hook once, in a child of this zygote (a process of the new release)."""
    result_fd, log_fd = fds
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        pdeathsig.arm(zygote)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        control.close()
        os.close(wake_r)
        os.close(wake_w)
        redirect_output(log_fd)
        result = socket.socket(fileno=result_fd)
        code = 0
        try:
            function = import_app(entry)
            outcome = function(HookContext(context))
            if inspect.isawaitable(outcome):
                import asyncio

                asyncio.run(outcome)  # type: ignore[arg-type]
            result.sendall(msgspec.msgpack.encode(["ok"]))
        except BaseException as exc:  # noqa: BLE001 - reported to the node with its traceback
            traceback.print_exc()
            result.sendall(msgspec.msgpack.encode(["failed", f"{type(exc).__name__}: {exc}", traceback.format_exc()]))
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(result_fd)
    os.close(log_fd)


def _fork(worker_id: int, fds: list[int], spec: dict[str, Any], app: Any, kind: str, handlers: dict[str, Any],
          control: socket.socket, wake_r: int, wake_w: int, send: Any) -> None:
    data_fd, log_fd, *gateway = fds  # a third fd: the data socket (native gateway)
    zygote = os.getpid()
    pid = os.fork()
    if pid == 0:
        pdeathsig.arm(zygote)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        control.close()
        os.close(wake_r)
        os.close(wake_w)
        run_worker(app, lifespan=kind == "asgi", data_fd=data_fd, log_fd=log_fd, tick=spec["tick"],
                   readiness=spec.get("readiness", ""), handlers=handlers, release=spec["release"],
                   wsgi=kind == "wsgi", slots=spec["slots"], gateway_fd=gateway[0] if gateway else -1)
    for fd in fds:
        os.close(fd)
    send("forked", worker_id, pid)


if __name__ == "__main__":
    main()
