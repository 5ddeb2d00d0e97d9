"""The peer table: joins, refreshes, expiry, leaving peers, candidates and local estimates."""

from __future__ import annotations

from anycore.cluster.membership import Heartbeat, PeerEvent, PeerTable, ServiceLoad


def beat(node: str, seq: int, free: int = 0, leaving: bool = False, service: str = "shop") -> Heartbeat:
    return Heartbeat(node=node, gateway=f"http://{node}", seq=seq, sent_at=0.0, leaving=leaving,
                     services={service: ServiceLoad(release=f"{service}@1", workers=1, slots=4, free=free)})


def test_join_refresh_and_own_heartbeat():
    table = PeerTable("me", expiry=3.0)
    assert table.observe(beat("me", 1), 0.0) is None
    assert table.observe(beat("b", 1), 0.0) is PeerEvent.JOINED
    assert table.observe(beat("b", 2), 1.0) is PeerEvent.REFRESHED
    assert list(table.peers) == ["b"]


def test_an_out_of_order_heartbeat_is_ignored_but_a_restart_is_taken():
    table = PeerTable("me")
    table.observe(beat("b", 5, free=2), 0.0)
    assert table.observe(beat("b", 4, free=0), 0.1) is PeerEvent.STALE
    assert table.candidates("shop") == ["b"]
    assert table.observe(beat("b", 1, free=0), 0.2) is PeerEvent.REFRESHED  # restarted with the same id
    assert table.candidates("shop") == []


def test_a_silent_peer_expires_after_the_expiry_and_not_before():
    table = PeerTable("me", expiry=3.0)
    table.observe(beat("b", 1), 0.0)
    table.observe(beat("c", 1), 2.0)
    assert table.expire(3.0) == []
    gone = table.expire(3.01)
    assert [p.node for p in gone] == ["b"] and list(table.peers) == ["c"]


def test_candidates_have_free_slots_most_free_first():
    table = PeerTable("me")
    table.observe(beat("b", 1, free=1), 0.0)
    table.observe(beat("c", 1, free=3), 0.0)
    table.observe(beat("d", 1, free=0), 0.0)
    table.observe(beat("e", 1, free=5, service="other"), 0.0)
    assert table.candidates("shop") == ["c", "b"]
    assert table.candidates("nothing") == []


def test_claims_update_the_estimate_until_the_next_heartbeat():
    table = PeerTable("me")
    table.observe(beat("b", 1, free=2), 0.0)
    table.claimed("b", "shop")
    assert table.peers["b"].free["shop"] == 1
    table.refused("b", "shop")
    assert table.candidates("shop") == [] and not table.any_free("shop")
    table.observe(beat("b", 2, free=2), 1.0)
    assert table.candidates("shop") == ["b"]


def test_a_leaving_peer_is_no_candidate_but_stays_until_silent():
    table = PeerTable("me", expiry=3.0)
    table.observe(beat("b", 1, free=4), 0.0)
    assert table.observe(beat("b", 2, free=4, leaving=True), 1.0) is PeerEvent.LEFT
    assert table.observe(beat("b", 3, free=4, leaving=True), 2.0) is PeerEvent.REFRESHED
    assert table.candidates("shop") == [] and table.alive("b")
    assert [p.node for p in table.expire(5.1)] == ["b"]


def test_the_claim_reply_and_finished_requests_keep_the_estimate_fresh():
    table = PeerTable("me")
    table.observe(beat("b", 1, free=1), 0.0)  # 4 slots, 1 free when it was sent
    table.claimed("b", "shop", free=2)  # the reply knows better than the heartbeat
    assert table.peers["b"].free["shop"] == 2
    table.claimed("b", "shop", free=0)
    assert table.candidates("shop") == []
    table.released("b", "shop")
    assert table.candidates("shop") == ["b"]
    for _ in range(10):
        table.released("b", "shop")
    assert table.peers["b"].free["shop"] == 4  # never above its slots
