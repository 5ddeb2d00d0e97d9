"""L1 — children die with their parent, ``kill -9`` included: ``PR_SET_PDEATHSIG``.

The kernel sends a child the signal set by ``prctl(PR_SET_PDEATHSIG, sig)`` when the
*thread* that forked it exits, which for our processes is the parent's only (or main)
thread, so in practice when the parent dies, however it dies. Three rules make a chain of
it (node -> nats-server, node -> template -> zygote -> worker):

- The setting is cleared in the child of every ``fork()``: each level arms its own,
  naming its own parent. It survives ``execve`` (not of a set-user-ID binary), so the node
  arms nats-server and the template between fork and exec (``preexec``).
- It is also cleared when the process changes its credentials (``setuid``/``setgid``): a
  child that drops privileges must call ``arm`` *after* doing so.
- The parent may already be gone when the child arms it (then no signal will ever come):
  ``arm`` checks ``getppid()`` against the expected parent and exits at once if it changed.

Linux only; elsewhere ``arm`` does nothing (the children still exit on EOF of their
control sockets, only a hung one would linger).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from typing import Callable

PR_SET_PDEATHSIG = 1

_prctl: Callable[..., int] | None = None
if sys.platform.startswith("linux"):
    try:
        _prctl = ctypes.CDLL(None, use_errno=True).prctl  # bound once, before any fork
    except (OSError, AttributeError):
        _prctl = None


def arm(parent: int, signum: int = signal.SIGKILL) -> None:
    """Have this process receive ``signum`` when ``parent`` (its parent's pid) dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)  # the parent died before we armed: nobody would ever stop us


def preexec(signum: int = signal.SIGKILL) -> Callable[[], None]:
    """A ``subprocess.Popen(preexec_fn=...)`` arming the child against this process's death.

    Popen must be called from the thread that lives as long as the process (the node's
    main thread, where its event loop runs): the signal follows the forking thread."""
    parent = os.getpid()
    return lambda: arm(parent, signum)
