"""A service's processes hold no control socket of the processes above them (issue 12,
item 6): a zygote holds only its own control socket (fd 3), a worker none. A copy of the
template's or the node's end left open would let the service's code — unprivileged or
not — read the node's ``spawn`` messages (other services' environments and fds) or forge
``spawned``/``exited`` reports. Checked for a zygote forked from the template and for one
started as a fresh interpreter (its env sets a PYTHON* variable)."""

from __future__ import annotations

import os

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
