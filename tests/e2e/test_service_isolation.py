"""A service's processes hold no control socket of the processes above them (issue 12,
item 6): a zygote holds only its own control socket (fd 3), a worker none. A copy of the
template's or the node's end left open would let the service's code — unprivileged or
not — read the node's ``spawn`` messages (other services' environments and fds) or forge
``spawned``/``exited`` reports. Checked for a zygote forked from the template and for one
started as a fresh interpreter (its env sets a PYTHON* variable)."""

from __future__ import annotations

import os

import httpx

from tests.conftest import HELLO, make_service

SEQPACKET = 5  # the "Type" column of /proc/net/unix; control sockets are SOCK_SEQPACKET


def seqpacket_fds(pid: int) -> list[int]:
    """The fds of ``pid`` that are SOCK_SEQPACKET Unix sockets (read as root from /proc)."""
    kinds: dict[str, int] = {}
    with open("/proc/net/unix") as f:
        next(f)
        for line in f:
            fields = line.split()
            kinds[fields[6]] = int(fields[4], 16)
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:[") and kinds.get(target[8:-1]) == SEQPACKET:
            found.append(int(fd))
    return sorted(found)


def test_zygotes_and_workers_hold_no_control_socket_of_their_parents(nodes, tmp_path):
    forked = make_service(tmp_path, "forked", HELLO, 'name = "forked"\nroutes = ["/forked"]\n')
    fresh = make_service(tmp_path, "fresh", HELLO,
                         'name = "fresh"\nroutes = ["/fresh"]\nenv = { PYTHONOPTIMIZE = "1" }\n')
    node = nodes.start(forked, fresh)
    for name in ("forked", "fresh"):
        live = node.service(name)["live"]
        assert seqpacket_fds(live["zygote_pid"]) == [3], f"{name}'s zygote holds a control socket not its own"
        workers = node.workers(name)
        assert workers
        for worker in workers:
            assert seqpacket_fds(worker["pid"]) == [], f"{name}'s worker {worker['pid']} holds a control socket"


WHOAMI = """
import os

import httpx


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": str(os.geteuid()).encode()})
"""


def test_a_root_node_whose_default_user_cannot_reach_python_serves_as_root_and_says_so(nodes, tmp_path):
    """Zero config must serve: on a fresh root login Python and ANYCORE_HOME sit under a
    0700 directory that `nobody` cannot traverse. With no user chosen the service runs as
    root and the deploy says why and what to change; a chosen user that cannot reach them
    is an error (tests run as root; pytest's tmp_path is such a 0700 directory)."""
    assert os.geteuid() == 0
    app = make_service(tmp_path, "who", WHOAMI)
    node = nodes.start(app, env={"ANYCORE_USER": ""})
    assert httpx.get(node.url + "/", timeout=10).text == "0"
    assert "event=release.runs_as_root" in node.output and "nobody" in node.output
    chosen = make_service(tmp_path, "chosen", WHOAMI, 'name = "chosen"\nroutes = ["/chosen"]\nuser = "nobody"\n')
    result = node.cli("deploy", str(chosen))
    assert result.returncode == 1 and "cannot reach" in result.stdout + result.stderr
