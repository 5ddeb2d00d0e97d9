"""Run a test module on both data planes: ``from tests.e2e.data_planes import nodes``.

The imported ``nodes`` fixture overrides the conftest one for that module and is
parametrized: ``[python]`` starts every node with ``--gateway python``, ``[native]`` with
``--gateway native``, so the same test proves the same contract on each. On native,
WebSockets reach the node as a handoff (``dataplane.Upgrade``, the client's socket):
the real ``anycore-gateway`` when it sends them (``RUST_HANDS_OFF``), else the Python
stand-in of tests/native_stand_in.py, picked through ``ANYCORE_GATEWAY_BIN`` as
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


@pytest.fixture(params=["python", "native"])
def nodes(request: pytest.FixtureRequest, nodes: NodeFactory, tmp_path: Path) -> Iterator[PlaneNodes]:
    if request.param == "python":
        yield PlaneNodes(nodes, ("--gateway", "python"), {})
    else:
        yield PlaneNodes(nodes, ("--gateway", "native"), {"ANYCORE_GATEWAY_BIN": native_gateway(tmp_path)})
