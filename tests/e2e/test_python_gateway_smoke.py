"""The Python gateway's smoke subset: representative end-to-end tests run again on
`--gateway python`.

The suite runs on the default data plane, the native gateway when it is built; the
in-process Python gateway stays supported (no Rust toolchain, or `--gateway python`), so
one `pytest -q` also runs these on it: hello, streaming both ways, a deploy under load.
The modules that take tests/e2e/planes.py's ``gateway`` or ``nodes`` run on both planes
themselves (kill -9 retries and quarantine, WebSockets, Sessions through deploys, the
router, slow clients, the HTTP corpus, metrics, logs), and tests/cluster/test_dispatch.py
runs spill-over on every pair of data planes. Each is the original test function (the
swaps: three of test_swap.py's ten), collected here a second time with this module's ``nodes``, whose nodes default to
`--gateway python` (a test's own `--gateway` still wins). Where the default already is the
Python gateway, its own run covers them and this module is skipped."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import NodeFactory, default_data_plane
from tests.e2e.test_smoke import test_zero_config_service_serves_and_names_its_release  # noqa: F401
from tests.e2e.test_swap import swap_under_load
from tests.e2e.test_wsgi import test_wsgi_runner_streams_both_ways_and_always_closes  # noqa: F401

pytestmark = pytest.mark.skipif(default_data_plane() == "python",
                                reason="the default data plane is the Python gateway: the suite's own run covers these")


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[NodeFactory]:
    factory = NodeFactory(tmp_path, data_plane="python")
    yield factory
    factory.stop_all()


def test_three_swaps_under_load_lose_nothing(nodes: NodeFactory, tmp_path: Path) -> None:
    swap_under_load(nodes, tmp_path, 3)  # test_swap.py's ten, on the default plane


def test_the_smoke_nodes_run_on_the_python_gateway(nodes: NodeFactory, tmp_path: Path) -> None:
    from tests.conftest import HELLO, make_service

    node = nodes.start(make_service(tmp_path, "hello", HELLO))
    assert "(gateway: python" in node.output
