"""What the bench scripts share (they run as `python bench/<script>.py`, so this imports as `common`)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
