"""The ``gateway`` fixture for e2e tests that run against both data planes: the node's
Python gateway, and ``anycore-gateway`` (``--gateway native``; skipped where it is not
built). It gives ``nodes.start`` keyword arguments; import it into a test module."""

from __future__ import annotations

import pytest

from anycore.node.native import find_binary


@pytest.fixture(params=["python", "native"])
def gateway(request: pytest.FixtureRequest) -> dict:
    if request.param == "python":
        return {}
    binary = find_binary()
    if binary is None:
        pytest.skip("anycore-gateway is not built (needs cargo and the Debian crates: see README, Native gateway)")
    return {"args": ("--gateway", "native"), "env": {"ANYCORE_GATEWAY_BIN": binary}}
