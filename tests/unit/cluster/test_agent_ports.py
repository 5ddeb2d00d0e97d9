"""The cluster agent and follow through their ports, with fakes (no NATS, no node).

- A peer lost under a request: the one crash rule (``router.crash``) decides — a safe
  request not yet started on the client's side is requeued here, anything else is
  answered 502, a request already answered is left alone; requests on other peers are
  untouched.
- ``RemoteSlot`` is a ``ports.Channel``: a request's first frame goes to the peer.
- ``follow`` changes the node only through ``NodeView.command`` (the command queue).
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from anycore import wire
from anycore.cluster.agent import ClusterAgent
from anycore.cluster.dispatch import RemoteSlot
from anycore.cluster.follow import follow
from anycore.commands import Command
from anycore.log import NodeLog


class FakeService:
    """ports.ServiceView, as far as the peer-loss path uses it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.release_id = f"{name}@1"
        self.release = object()
        self.requeued: list[Any] = []

    def requeue(self, exchange: Any) -> None:
        self.requeued.append(exchange)


class FakeNode:
    """ports.NodeView"""

    def __init__(self, services: dict[str, Any]) -> None:
        self.node_id = "me"
        self.log = NodeLog()
        self.nc = None
        self.gateway_url = "http://127.0.0.1:1"
        self.services = services
        self.commands: list[Command] = []

    def command(self, command: Command) -> None:
        self.commands.append(command)


class FakeExchange:
    _ids = iter(range(1, 1000))

    def __init__(self, service: FakeService, method: str = "GET", node: str = "peer", attempts: int = 1,
                 response_started: bool = False, body_forwarded: int = 0, closed: bool = False) -> None:
        self.id = next(self._ids)
        self.request_id = f"rid-{self.id}"
        self.service = service
        self.method = method
        self.raw_path = b"/x"
        self.node = node
        self.attempts = attempts
        self.response_started = response_started
        self.response_complete = False
        self.body_forwarded = body_forwarded
        self.conn = SimpleNamespace(closed=closed)
        self.failed: tuple[int, str, str] | None = None

    def fail(self, status: int, error: str, detail: str) -> None:
        self.failed = (status, error, detail)


def lose_peer(exchanges: list[FakeExchange], service: FakeService,
              events: list[tuple[str, dict[str, object]]] | None = None) -> ClusterAgent:
    async def run() -> ClusterAgent:
        node = FakeNode({service.name: service})
        if events is not None:
            node.log.watchers.append(lambda now, event, svc, fields: events.append((event, fields)))
        agent = ClusterAgent(node, deployer=None)  # type: ignore[arg-type]
        for exchange in exchanges:
            agent.sent[exchange.id] = exchange
        agent._peer_gone("peer")
        return agent

    return asyncio.run(run())


def test_a_safe_request_on_a_lost_peer_is_requeued_here() -> None:
    shop = FakeService("shop")
    get = FakeExchange(shop)
    agent = lose_peer([get], shop)
    assert shop.requeued == [get] and get.failed is None and not agent.sent


def test_a_request_of_a_service_replaced_meanwhile_is_not_requeued_into_the_new_one() -> None:
    """Its client_gone would cancel it in the old service's queue: the new one's is not its."""
    old, new = FakeService("shop"), FakeService("shop")
    get = FakeExchange(old)
    lose_peer([get], new)
    assert not new.requeued and not old.requeued and get.failed is not None and get.failed[:2] == (502, "node lost")


@pytest.mark.parametrize("kwargs, why", [
    ({"method": "POST"}, "unsafe to retry"),
    ({"response_started": True}, "response already started"),
    ({"body_forwarded": 10}, "unsafe to retry"),
    ({"attempts": 2}, "unsafe to retry"),  # retried once already: the rule allows one retry
])
def test_anything_else_on_a_lost_peer_is_answered_502(kwargs: dict[str, Any], why: str) -> None:
    shop = FakeService("shop")
    exchange = FakeExchange(shop, **kwargs)
    lose_peer([exchange], shop)
    assert not shop.requeued
    assert exchange.failed is not None and exchange.failed[:2] == (502, "node lost") and why in exchange.failed[2]


def test_the_node_lines_about_a_lost_peer_s_requests_name_their_request_ids() -> None:
    shop = FakeService("shop")
    get, post = FakeExchange(shop), FakeExchange(shop, method="POST")
    events: list[tuple[str, dict[str, object]]] = []
    lose_peer([get, post], shop, events)
    assert ("request.retried", get.request_id) in [(e, f.get("request_id")) for e, f in events]
    failed = [f for e, f in events if e == "request.failed"]
    assert [(f["request_id"], f["status"]) for f in failed] == [(post.request_id, 502)]


def test_an_answered_request_and_those_on_other_peers_are_left_alone() -> None:
    shop = FakeService("shop")
    gone = FakeExchange(shop, method="POST", closed=True)
    elsewhere = FakeExchange(shop, node="other")
    agent = lose_peer([gone, elsewhere], shop)
    assert gone.failed is None and not shop.requeued
    assert elsewhere.failed is None and list(agent.sent.values()) == [elsewhere]


def test_the_remote_slot_is_a_channel_to_the_peer() -> None:
    sent: list[wire.Frame] = []
    link = SimpleNamespace(send=sent.append)
    first = SimpleNamespace(id=7)
    slot = RemoteSlot(link, "peer", "shop@1", first)  # type: ignore[arg-type]
    assert (slot.id, slot.release) == (-1, "shop@1")
    again = SimpleNamespace(id=8)
    req = wire.Req(8, "GET", "/", b"/", b"", [], "1.1", "http", None, None, "", b"", False)
    slot.start_request(again, req)
    slot.send(wire.Cancel(8))
    assert slot.exchanges == {7: first, 8: again}
    assert sent == [req, wire.Cancel(8)]


class FakeStore:
    def __init__(self, services: list[Any]) -> None:
        self.services = services

    async def all_services(self) -> list[Any]:
        return self.services

    async def get_release(self, release: str) -> Any:
        return None


def test_follow_stops_and_starts_through_the_command_queue_once_per_desired_state() -> None:
    running, stopped = FakeService("shop"), FakeService("blog")
    stopped.release = None
    store = FakeStore([SimpleNamespace(name="shop", live="shop@1", stopped=True),
                       SimpleNamespace(name="blog", live="blog@1", stopped=False)])
    deployer = SimpleNamespace(store=store, deploys={}, start=None)
    node = FakeNode({"shop": running, "blog": stopped})
    failed: set[tuple[str, str, str]] = set()
    asyncio.run(follow(node, deployer, failed))  # type: ignore[arg-type]
    asyncio.run(follow(node, deployer, failed))  # type: ignore[arg-type]
    assert [(c.kind, c.args) for c in node.commands] == [("stop", {"service": "shop"}), ("start", {"service": "blog"})]
