"""The template: one interpreter per node with anycore's worker runtime already imported,
forking a zygote for each release.

Starting a zygote as a fresh interpreter costs the interpreter start plus the imports every
zygote makes before it reaches the app (uvloop, asyncio, msgspec, anycore's runtime):
100 ms on a quiet machine of this kind, 300 ms under load — most of an in-node deploy of a
small app. Forked from here, a zygote starts with those modules in memory and only imports
the release's own code. Like a zygote, the template never starts a loop or a thread, so
what it forks is clean.

Control messages (msgpack arrays over a SOCK_SEQPACKET socket on fd ``CONTROL_FD``):
  node -> template   ["spawn", spec_json, directory, env, uid, gid]  with two fds: the zygote's
                     control socket and its stdout/stderr (uid/gid None: stay the node's user)
  template -> node   ["spawned", pid]
                     ["exited", pid, wait_status]   a zygote was reaped
The zygote child starts a session of its own, drops to the service's user (when the node is
root), takes the release directory as cwd and exactly the env it is given, puts its control socket on fd 3, and runs
``anycore.worker.zygote.main`` as a fresh zygote would.

Layer L1 (worker); runs in the template process. It imports ``supervisor.launch`` and
``supervisor.pdeathsig`` (sideways within L1: the process plumbing the supervisor also uses).
"""

from __future__ import annotations

import os
import select
import signal
import socket
import sys
from typing import Callable

import msgspec

from anycore.supervisor import pdeathsig

CONTROL_FD = 3


def main() -> None:
    # What every zygote imports before the app: loaded once here, shared by every fork.
    import asyncio  # noqa: F401

    import uvloop  # noqa: F401

    from anycore.supervisor.launch import drop_privileges
    from anycore.worker import asgi, runner, session  # noqa: F401
    from anycore.worker.zygote import reap

    control = socket.socket(fileno=CONTROL_FD)
    control.setblocking(True)
    send = lambda *msg: control.send(msgspec.msgpack.encode(list(msg)))  # noqa: E731
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    while True:
        readable, _, _ = select.select([control, wake_r], [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
            reap(send)
        if control in readable:
            try:
                data, fds, _, _ = socket.recv_fds(control, 1 << 20, 2)
            except OSError:
                data, fds = b"", []
            if not data:
                os._exit(0)  # the node is gone; zygotes notice their own control sockets
            message = msgspec.msgpack.decode(data)
            if message[0] == "spawn":
                uid, gid = (message[4], message[5]) if len(message) > 5 else (None, None)
                pid = _spawn(message[1], message[2], message[3], fds, control, wake_r, wake_w,
                             lambda: drop_privileges(uid, gid))
                send("spawned", pid)


def _spawn(spec: str, directory: str, env: dict[str, str], fds: list[int], control: socket.socket,
           wake_r: int, wake_w: int, become_user: Callable[[], None] = lambda: None) -> int:
    zygote_control, stdout = fds
    template = os.getpid()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            control.close()
            os.close(wake_r)
            os.close(wake_w)
            os.setsid()
            become_user()  # before anything of the service runs
            os.chdir(directory)
            os.environ.clear()
            os.environ.update(env)
            os.dup2(stdout, 1)
            os.dup2(stdout, 2)
            os.dup2(zygote_control, CONTROL_FD)
            os.close(stdout)
            os.close(zygote_control)
            sys.stdout = open(1, "w", buffering=1, closefd=False)
            sys.stderr = open(2, "w", buffering=1, closefd=False)
            sys.argv = ["anycore-zygote", spec]
            from anycore.worker.zygote import main as zygote_main

            pdeathsig.arm(template)  # last: a change of user before this would clear it
            zygote_main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:  # noqa: BLE001 - the zygote reports its own failures; this is a last resort
            import traceback

            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)
    os.close(zygote_control)
    os.close(stdout)
    return pid


if __name__ == "__main__":
    main()
