"""The WebSocket hand-off of ``anycore-gateway`` (native/src/handoff.rs), driven by the
stand-in node of tests/e2e/native_fake.py: a head asking ``Upgrade: websocket`` that routes
to a service is not served by the gateway; the node gets ``dataplane.Upgrade`` with every
byte read and not consumed (from that head on) and the client's socket, and from then on
the client talks to the node alone. Other upgrades and unrouted ones are plain requests."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from anycore import dataplane
from tests.conftest import wait_for

from .native_fake import BINARY, FakeNode

pytestmark = pytest.mark.skipif(not BINARY.is_file(), reason="anycore-gateway not built: cargo build --release in native/")

WS_HEAD = (b"GET /chat?room=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


@pytest.fixture(scope="module")
def node() -> Iterator[FakeNode]:
    n = FakeNode(threads=1)
    n.listen()
    n.service("app", ["/"])
    n.add_worker(1, "app", slots=4)
    n.stats("app", lambda s: len(s.inflight) == 1)
    yield n
    n.close()


def read_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, data
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    while len(rest) < length:
        rest += sock.recv(4096)
    return head + b"\r\n\r\n" + rest


def test_a_websocket_upgrade_hands_the_socket_and_the_unread_bytes_to_the_node(node: FakeNode) -> None:
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as client:
        # A request before it on the same connection is answered by the gateway first.
        client.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\n\r\n" + WS_HEAD + b"\x81\x02hi")
        assert read_response(client).startswith(b"HTTP/1.1 200")
        upgrade, theirs = node.upgraded()
        with theirs:
            assert upgrade.service == "app"
            assert upgrade.buffered == WS_HEAD + b"\x81\x02hi"  # from its head on, the frame after it too
            assert upgrade.client == ("127.0.0.1", client.getsockname()[1])
            assert upgrade.server == ("127.0.0.1", node.port)
            # The node speaks for the connection now, both ways.
            theirs.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
            assert client.recv(4096).startswith(b"HTTP/1.1 101")
            client.sendall(b"\x81\x03bye")
            assert theirs.recv(4096) == b"\x81\x03bye"
        # The gateway kept no copy of the socket: the node's close is the client's EOF.
        assert client.recv(4096) == b""
    assert node.proc.poll() is None


def test_unrouted_and_other_upgrades_are_answered_as_plain_requests(node: FakeNode) -> None:
    before = len([m for m in node.messages if isinstance(m, dataplane.Upgrade)])
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as client:
        client.sendall(b"GET /hello HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
        response = read_response(client)
        assert response.startswith(b"HTTP/1.1 200") and b"connection: close" in response.lower()
        assert client.recv(4096) == b""  # what follows an h2c upgrade would not be HTTP/1.1
    n = FakeNode(threads=1)  # a node whose only route is a host route: /chat on host x routes nowhere
    try:
        n.listen()
        n.service("api", ["only.example/api"], release="a1")

        def answer() -> bytes | None:  # 503 "starting" until the gateway has applied the Service
            with socket.create_connection(("127.0.0.1", n.port), timeout=10) as client:
                client.sendall(WS_HEAD)
                response = read_response(client)
            return None if b'"error": "starting"' in response else response

        assert wait_for(answer, what="the gateway to apply the Service").startswith(b"HTTP/1.1 404")
        assert not any(isinstance(m, dataplane.Upgrade) for m in n.messages)
    finally:
        n.close()
    assert len([m for m in node.messages if isinstance(m, dataplane.Upgrade)]) == before
