"""node/native.py's ``Handoffs``: a ``dataplane.Upgrade`` from the gateway's end of the
control socket, with a real client TCP connection as its SCM_RIGHTS fd, is served by the
node's own Python HTTP code (the route miss answers here; the WebSocket path itself is
tests/unit/gateway/test_handoff.py and the e2e suites on both data planes)."""

from __future__ import annotations

import asyncio
import io
import os
import socket

from anycore import dataplane
from anycore.gateway.http import Limits
from anycore.log import NodeLog
from anycore.node.native import NativeGateway
from tests.unit.node.fakes import run

HANDSHAKE = (b"GET /nowhere HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """(the client's end, the accepted end the gateway would hold)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        accepted, _ = listener.accept()
    return client, accepted


async def answer(client: socket.socket) -> bytes:
    client.setblocking(False)
    loop = asyncio.get_running_loop()
    data = b""
    while not data.endswith(b"\n"):
        chunk = await asyncio.wait_for(loop.sock_recv(client, 4096), 5)
        if not chunk:
            break
        data += chunk
    return data


def native() -> tuple[NativeGateway, socket.socket]:
    gateway = NativeGateway(NodeLog(io.StringIO()), Limits(), "anycore-gateway")
    gateway_end, node_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    gateway.attach(node_end)
    gateway.handoffs.start()
    return gateway, gateway_end


@run
async def test_an_upgrade_with_its_socket_is_answered_by_the_node_from_the_buffered_head():
    gateway, gateway_end = native()
    gateway.starting = False
    client, accepted = tcp_pair()
    # The gateway read the whole head (and stopped); the node must not wait for the socket.
    message = dataplane.Upgrade("", HANDSHAKE, ("127.0.0.1", 1), ("127.0.0.1", 2))
    socket.send_fds(gateway_end, [dataplane.encode(message)], [accepted.fileno()])
    accepted.close()  # the gateway forgets it once sent
    reply = await answer(client)
    assert reply.startswith(b"HTTP/1.1 404") and b"no service is routed at example/nowhere" in reply
    assert gateway.handoffs.adopted == 1
    client.close()
    await gateway.handoffs.stop(1.0)


@run
async def test_fds_on_a_message_that_takes_none_are_closed():
    gateway, gateway_end = native()
    client, accepted = tcp_pair()
    socket.send_fds(gateway_end, [dataplane.encode(dataplane.WorkerIdle(9))], [accepted.fileno()])
    accepted.close()
    client.setblocking(False)
    assert await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 16), 5) == b""  # closed: EOF
    assert gateway.handoffs.adopted == 0 and 9 in gateway.idle
    client.close()
    await gateway.handoffs.stop(1.0)


@run
async def test_an_upgrade_whose_fd_is_no_socket_is_dropped_and_the_control_socket_reads_on():
    gateway, gateway_end = native()
    read_end, write_end = os.pipe()
    message = dataplane.Upgrade("", HANDSHAKE, ("127.0.0.1", 1), None)
    socket.send_fds(gateway_end, [dataplane.encode(message)], [read_end])
    gateway_end.send(dataplane.encode(dataplane.WorkerIdle(3)))
    os.close(read_end)
    deadline = asyncio.get_running_loop().time() + 5
    while 3 not in gateway.idle:
        assert asyncio.get_running_loop().time() < deadline, "the control socket stopped being read"
        await asyncio.sleep(0.01)
    assert gateway.handoffs.adopted == 0
    try:  # the node's copy of the read end is closed too: nobody reads the pipe any more
        os.write(write_end, b"x")
        raise AssertionError("the fd passed with the Upgrade leaked in the node")
    except BrokenPipeError:
        pass
    os.close(write_end)
    await gateway.handoffs.stop(1.0)
