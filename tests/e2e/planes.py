"""Running a test on both data planes: the node's Python gateway (``--gateway python``) and
``anycore-gateway`` (``--gateway native``; skipped where it is not built).

A test that asks for ``gateway`` (keyword arguments for ``nodes.start``: ``**gateway``)
runs once per plane; a module that imports ``nodes`` from here gets a ``NodeFactory``
whose every node runs on the plane of that run. ``tests/conftest.py`` parametrizes them
(``plane_name``); ``@pytest.mark.planes("native")`` narrows a test to the planes named —
the heavy ones whose Python run would prove again what the Python gateway's smoke subset
(``test_python_gateway_smoke.py``) and the unit tests prove.

On native, WebSockets reach the node as a handoff (``dataplane.Upgrade``, the client's
socket): the real ``anycore-gateway`` when it sends them (``RUST_HANDS_OFF``), else the
Python stand-in of tests/native_stand_in.py, picked through ``ANYCORE_GATEWAY_BIN`` as
tests/e2e/test_native.py does.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from anycore.node.native import find_binary
from tests.conftest import NodeFactory, RunningNode

STAND_IN = Path(__file__).resolve().parent.parent / "native_stand_in.py"
# anycore-gateway hands WebSocket upgrades to the node (handoff.rs): the native runs use
# the real binary. False runs them on the stand-in instead (to tell the node's side of a
# hand-off from the gateway's when one fails).
RUST_HANDS_OFF = True


def native_gateway(tmp_path: Path) -> str:
    binary = find_binary() if RUST_HANDS_OFF else None
    if binary is not None:
        return binary
    script = tmp_path / "anycore-gateway-stand-in"
    script.write_text(f"#!/bin/sh\nexec {sys.executable} {STAND_IN} \"$@\"\n")
    script.chmod(0o755)
    return str(script)


def plane_arguments(name: str, tmp_path: Path | None = None) -> dict[str, Any]:
    """``nodes.start`` keyword arguments for plane ``name`` (the test skips if it is native
    and not built). Always an explicit ``--gateway``: the default plane may be either."""
    if name == "python":
        return {"args": ("--gateway", "python"), "env": {}}
    binary = native_gateway(tmp_path) if tmp_path is not None else find_binary()
    if binary is None:
        pytest.skip("anycore-gateway is not built (needs cargo and the Debian crates: see README, Native gateway)")
    return {"args": ("--gateway", "native"), "env": {"ANYCORE_GATEWAY_BIN": binary}}


@pytest.fixture
def gateway(plane_name: str) -> dict[str, Any]:
    return plane_arguments(plane_name)


class PlaneNodes:
    """A ``NodeFactory`` whose nodes all run on one data plane."""

    def __init__(self, factory: NodeFactory, args: tuple[str, ...], env: dict[str, str]) -> None:
        self.factory = factory
        self.args = args
        self.env = env

    def start(self, *paths: str | Path, args: tuple[str, ...] = (), env: dict[str, str] | None = None,
              **kwargs: Any) -> RunningNode:
        node = self.factory.start(*paths, args=(*self.args, *args), env={**self.env, **(env or {})}, **kwargs)
        if kwargs.get("wait", True):
            assert f"(gateway: {self.args[1]}" in node.output, node.output  # no quiet fallback to the other one
        return node

    def __getattr__(self, name: str) -> Any:
        return getattr(self.factory, name)


@pytest.fixture
def nodes(plane_name: str, nodes: NodeFactory, tmp_path: Path) -> Iterator[PlaneNodes]:
    yield PlaneNodes(nodes, **plane_arguments(plane_name, tmp_path))
