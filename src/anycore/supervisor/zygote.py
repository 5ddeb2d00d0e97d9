"""L1 — the node's handle on one zygote process (see anycore.worker.zygote for the other side).

``start_zygote`` spawns the zygote in its own session with the release directory as cwd
and the service's env, and returns a handle whose ``ready`` future resolves once the code
is imported (or fails with ReleaseFailed carrying the import traceback). ``fork`` asks for
one worker: the node makes the worker's two socketpairs (frames, log) and passes the
worker's ends over SCM_RIGHTS, so no listening socket exists and no other process can
pose as a worker. Under the native gateway the worker gets a third socket, its data
socket (made by the caller, see anycore.node.native), passed along the same way.

Zygotes are forked from the node's ``Template`` (see anycore.worker.template), an
interpreter with the runtime already imported, so a deploy pays only for importing the
release's own code. A fresh interpreter is still used when the template is gone or the
service's env sets ``PYTHON*`` variables (they act at interpreter start). There is one
template per interpreter: the node's, and one per release environment in use (a release
with dependencies runs on its environment's interpreter, see anycore.release.env), each
started on first use and stopped when no release runs on it any more.

The zygote's user and environment come from its ``Launch`` (anycore.supervisor.launch):
no secret of the node's reaches it, and under a root node it drops to the service's user
right after the fork, before it imports anything of the service.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Callable

import msgspec

from anycore.errors import ReleaseFailed
from anycore.supervisor import pdeathsig
from anycore.supervisor.launch import SCRUBBED_PREFIXES, Launch, service_environ


def _onto_fd3(fd: int) -> str:
    """The start of a child's ``-c`` program that moves its control socket from ``fd`` onto
    fd 3 and closes ``fd``: a copy left open would reach the service's code (zygote and
    workers), which could then read or forge the parent's control messages."""
    return f"import os; os.dup2({fd}, 3); " + (f"os.close({fd}); " if fd != 3 else "")


def read_message(control: socket.socket) -> list[Any] | None:
    """One control message from a non-blocking SOCK_SEQPACKET socket: None if there is
    none yet, an empty list at EOF (the peer is gone)."""
    try:
        data = control.recv(65536)
    except BlockingIOError:
        return None
    except OSError:
        data = b""
    return msgspec.msgpack.decode(data) if data else []


class ForkedZygote:
    """A zygote forked by the template: not our child, so its exit status comes from the
    template's reaper (``Popen``'s poll/send_signal/wait, as far as the handle needs them)."""

    def __init__(self, template: "Template") -> None:
        self.template = template
        self.pid = 0
        self.returncode: int | None = None
        self.spawned = asyncio.get_running_loop().create_future()

    def poll(self) -> int | None:
        if self.returncode is None and self.pid and self.template.dead:
            try:
                os.kill(self.pid, 0)  # the template died: ask the kernel instead
            except ProcessLookupError:
                self.returncode = -signal.SIGKILL
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.pid and self.returncode is None:
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass

    def wait(self) -> None:
        pass  # stop() polls with a deadline; nothing to block on here


class Template:
    """A template process per interpreter (started on first use; restarted when it dies)."""

    _current: "dict[str, Template]" = {}

    def __init__(self, python: str = sys.executable) -> None:
        node_end, template_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        os.set_inheritable(template_end.fileno(), True)
        self.python = python
        self.process = subprocess.Popen(
            [python, "-c", f"{_onto_fd3(template_end.fileno())}"
             "from anycore.worker.template import main; main()"],
            pass_fds=(template_end.fileno(),), start_new_session=True, stdin=subprocess.DEVNULL,
            preexec_fn=pdeathsig.preexec(),
            env={k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED_PREFIXES)},
        )
        template_end.close()
        node_end.setblocking(False)
        self.control = node_end
        self.dead = False
        self.waiting: list[ForkedZygote] = []  # spawn requests in order, answered in order
        self.children: dict[int, ForkedZygote] = {}
        asyncio.get_running_loop().add_reader(node_end.fileno(), self._readable)

    @classmethod
    def get(cls, python: str = sys.executable) -> "Template | None":
        current = cls._current.get(python)
        if current is None or current.dead:
            try:
                current = cls._current[python] = Template(python)
            except OSError:
                return None
        return current

    @classmethod
    async def shutdown(cls, keep: set[str] | None = None) -> None:
        """Stop every template (``keep``: but those of these interpreters)."""
        stopping = [t for p, t in cls._current.items() if keep is None or p not in keep]
        for template in stopping:
            cls._current.pop(template.python, None)
        await asyncio.gather(*(t._stop() for t in stopping))

    @classmethod
    async def stop_idle(cls, keep: set[str]) -> None:
        """Stop the templates of other interpreters than ``keep`` that have no zygote left
        (a zygote being started is already a child, so none is cut off)."""
        idle = [t for p, t in cls._current.items() if p not in keep and not t.children and not t.waiting]
        for template in idle:
            cls._current.pop(template.python, None)
        await asyncio.gather(*(t._stop() for t in idle))

    async def _stop(self) -> None:
        if self.dead:
            return
        self._closed()
        self.control.close()
        for _ in range(100):
            if self.process.poll() is not None:
                return
            await asyncio.sleep(0.02)
        self.process.kill()

    def spawn(self, spec: str, directory: str, env: dict[str, str], control: int, stdout: int,
              uid: int | None = None, gid: int | None = None) -> ForkedZygote:
        child = ForkedZygote(self)
        socket.send_fds(self.control, [msgspec.msgpack.encode(["spawn", spec, directory, env, uid, gid])], [control, stdout])
        self.waiting.append(child)
        return child

    def _readable(self) -> None:
        message = read_message(self.control)
        if message is None:
            return
        if not message:
            self._closed()
            return
        if message[0] == "spawned" and self.waiting:
            child = self.waiting.pop(0)
            child.pid = message[1]
            self.children[child.pid] = child
            child.spawned.set_result(None)
        elif message[0] == "exited":
            exited = self.children.pop(message[1], None)
            if exited is not None:
                exited.returncode = os.waitstatus_to_exitcode(message[2])

    def _closed(self) -> None:
        self.dead = True
        asyncio.get_running_loop().remove_reader(self.control.fileno())
        for child in self.waiting:
            child.spawned.set_exception(OSError("the zygote template exited"))
        self.waiting.clear()


class ZygoteHandle:
    def __init__(self, release: str, process: "subprocess.Popen[bytes] | ForkedZygote", control: socket.socket,
                 on_forked: Callable[[int, int], None], on_exited: Callable[[int, int], None]) -> None:
        self.release = release
        self.process = process
        self.control = control
        self.kind = "asgi"
        self.on_forked = on_forked
        self.on_exited = on_exited
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        loop.add_reader(control.fileno(), self._readable)

    @property
    def pid(self) -> int:
        return self.process.pid

    def _readable(self) -> None:
        message = read_message(self.control)
        if message is None:
            return
        if not message:
            self._closed()
            return
        kind = message[0]
        if kind == "ready":
            self.kind = message[2]
            self.process.pid = self.process.pid or message[1]  # a forked zygote may say it before the template
            if not self.ready.done():
                self.ready.set_result(None)
        elif kind == "failed":
            if not self.ready.done():
                self.ready.set_exception(ReleaseFailed(self.release, message[1], message[2]))
        elif kind == "forked":
            self.on_forked(message[1], message[2])
        elif kind == "exited":
            self.on_exited(message[1], message[2])

    def _closed(self) -> None:
        asyncio.get_running_loop().remove_reader(self.control.fileno())
        if not self.ready.done():
            self.ready.set_exception(ReleaseFailed(self.release, "the zygote exited before importing the code"))
        if not self.gone.done():
            self.gone.set_result(None)

    def lost(self) -> bool:
        """Whether the zygote is gone, asked of its control socket now rather than of ``gone``,
        whose EOF event may be handled after its workers' in the same loop turn. A dying
        process closes its sockets before its children get their PR_SET_PDEATHSIG, so when a
        worker is lost because its zygote died, this already says so."""
        if self.gone.done():
            return True
        try:
            return self.control.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def fork(self, worker_id: int, data: socket.socket | None = None) -> tuple[socket.socket, socket.socket]:
        """Ask for a worker; returns the node's ends of its frame and log sockets. ``data``:
        the worker's end of its data socket (native gateway), passed along and closed here."""
        frames_node, frames_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_node, log_worker = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        passed = [frames_worker, log_worker] + ([data] if data is not None else [])
        try:
            socket.send_fds(self.control, [msgspec.msgpack.encode(["fork", worker_id])], [s.fileno() for s in passed])
        finally:
            for sock in passed:
                sock.close()
        return frames_node, log_node

    async def run_hook(self, entry: str, context: dict[str, object], timeout: float,
                       on_output: Callable[[socket.socket], None]) -> None:
        """Run a migration hook in a fresh child of this zygote; raises ReleaseFailed if it fails."""
        result_node, result_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_node, log_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            socket.send_fds(self.control, [msgspec.msgpack.encode(["hook", entry, context])],
                            [result_child.fileno(), log_child.fileno()])
        finally:
            result_child.close()
            log_child.close()
        on_output(log_node)
        loop = asyncio.get_running_loop()
        result_node.setblocking(False)
        data = b""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    chunk = await loop.sock_recv(result_node, 1 << 20)
                    if not chunk:
                        break
                    data += chunk
        except TimeoutError:
            raise ReleaseFailed(self.release, f"migration hook {entry} did not finish within {timeout:.0f}s") from None
        finally:
            result_node.close()
        if not data:
            raise ReleaseFailed(self.release, f"migration hook {entry} died without a result (see `anycore logs`)")
        outcome = msgspec.msgpack.decode(data)
        if outcome[0] != "ok":
            raise ReleaseFailed(self.release, f"migration hook {entry} failed: {outcome[1]}", outcome[2])

    async def stop(self, timeout: float = 5.0) -> None:
        """Close the control socket (the zygote exits on EOF), then confirm death; kill if slow."""
        loop = asyncio.get_running_loop()
        if not self.gone.done():
            loop.remove_reader(self.control.fileno())
            self.gone.set_result(None)
        self.control.close()
        deadline = loop.time() + timeout
        while self.process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def start_zygote(release: str, directory: str, entry: str, env: dict[str, str], slots: int, tick: float, readiness: str,
                 on_forked: Callable[[int, int], None], on_exited: Callable[[int, int], None],
                 stdout: int, sessions: list[str] | None = None, launch: Launch | None = None) -> ZygoteHandle:
    launch = launch or Launch()
    node_end, zygote_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    node_end.setblocking(False)
    spec = json.dumps({"entry": entry, "slots": slots, "tick": tick, "release": release, "readiness": readiness,
                       "sessions": sessions or []})
    child_env = service_environ(dict(os.environ), env, launch, release)
    template = Template.get(launch.python) if not any(key.startswith("PYTHON") for key in env) else None
    if template is not None:
        try:
            forked = template.spawn(spec, directory, child_env, zygote_end.fileno(), stdout, launch.uid, launch.gid)
            zygote_end.close()
            return ZygoteHandle(release, forked, node_end, on_forked, on_exited)
        except OSError:
            pass  # the template just died: start a fresh interpreter instead
    # The zygote's control socket must land on fd 3 (CONTROL_FD) in the child.
    os.set_inheritable(zygote_end.fileno(), True)
    process = subprocess.Popen(
        [launch.python, "-c", f"{_onto_fd3(zygote_end.fileno())}"
         "from anycore.worker.zygote import main; main()", spec],
        cwd=directory, env=child_env, pass_fds=(zygote_end.fileno(),), start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=stdout, stderr=stdout,
        user=launch.uid, group=launch.gid, extra_groups=[] if launch.uid is not None else None, preexec_fn=pdeathsig.preexec(),
    )
    zygote_end.close()
    return ZygoteHandle(release, process, node_end, on_forked, on_exited)
