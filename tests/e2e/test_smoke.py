"""The node starts, serves a zero-config service, and stops cleanly on SIGTERM."""

import httpx

from tests.conftest import HELLO, make_service


def test_zero_config_service_serves_and_names_its_release(nodes, tmp_path):
    node = nodes.start(make_service(tmp_path, "hello", HELLO))
    response = httpx.get(node.url + "/")
    assert response.status_code == 200
    assert response.text == "hello"
    assert response.headers["anycore-release"].startswith("hello@")
    assert node.stop() == 0
    assert "event=node.stopped" in node.output
