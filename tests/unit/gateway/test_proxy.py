"""gateway/proxy.py: whose X-Forwarded-For/-Proto count, and what they make of the scope
(the same table as native/src/proxy.rs's tests)."""

from __future__ import annotations

import pytest

from anycore.gateway.proxy import ProxyTrust

PROXIED = [(b"x-forwarded-for", b"203.0.113.7"), (b"x-forwarded-proto", b"https")]
CHAIN = [(b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"), (b"x-forwarded-for", b"10.0.0.2")]


@pytest.mark.parametrize("allow, peer, headers, expected", [
    ("127.0.0.1", "127.0.0.1", PROXIED, ("https", ("203.0.113.7", 0))),
    ("127.0.0.1", "::ffff:127.0.0.1", PROXIED, ("https", ("203.0.113.7", 0))),
    ("*", "198.51.100.1", PROXIED, ("https", ("203.0.113.7", 0))),
    ("127.0.0.1", "198.51.100.1", PROXIED, ("http", ("198.51.100.1", 5555))),  # untrusted peer: ignored
    ("10.0.0.0/8", "11.0.0.1", PROXIED, ("http", ("11.0.0.1", 5555))),
    ("127.0.0.1, 10.0.0.0/8", "127.0.0.1", CHAIN, ("http", ("2.2.2.2", 0))),  # from the right, past trusted proxies
    ("127.0.0.1, 10.0.0.0/8, 2.2.2.2, 1.1.1.1", "127.0.0.1", CHAIN, ("http", ("1.1.1.1", 0))),  # all trusted: leftmost
    ("*", "127.0.0.1", CHAIN, ("http", ("1.1.1.1", 0))),
    ("127.0.0.1", "127.0.0.1", [(b"x-forwarded-proto", b"gopher"), (b"x-forwarded-for", b"")], ("http", ("127.0.0.1", 5555))),
    ("127.0.0.1", "127.0.0.1", [(b"x-forwarded-proto", b" WSS ")], ("https", ("127.0.0.1", 5555))),
])
def test_resolve(allow, peer, headers, expected):
    assert ProxyTrust.parse(allow).resolve("http", (peer, 5555), headers) == expected


def test_trust_entries():
    assert not ProxyTrust.parse("10.0.0.0/40").trusts("10.0.0.1")  # a bad prefix is a literal, not a network
    assert ProxyTrust.parse("::1, fd00::/8").trusts("fd12::1")
    assert ProxyTrust.parse("0.0.0.0/0").trusts("8.8.8.8")
    assert ProxyTrust.parse("unix:/run/proxy").trusts("unix:/run/proxy")
    assert ProxyTrust.parse("127.0.0.1").resolve("https", None, PROXIED) == ("https", None)
