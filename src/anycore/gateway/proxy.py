"""Proxy headers: the scope's ``scheme`` and ``client`` behind a reverse proxy
(``--proxy-headers`` with ``--forwarded-allow-ips``, uvicorn's names and rules).

``X-Forwarded-Proto`` and ``X-Forwarded-For`` count only when the peer that connected is
trusted (``*`` trusts every peer; entries are addresses or networks, ``10.0.0.0/8``).
The proto ``http``/``https`` (``ws``/``wss`` read as their HTTP scheme) replaces the
scheme. ``X-Forwarded-For`` is read from the right: the client is the first address that
is not itself a trusted proxy (all trusted, or ``*``: the leftmost), with port 0. The
native gateway keeps the same rules in ``native/src/proxy.rs``; both are pure.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

DEFAULT_ALLOW = "127.0.0.1"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _canonical(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    mapped = getattr(ip, "ipv4_mapped", None)
    return mapped if mapped is not None else ip


@dataclass(frozen=True)
class ProxyTrust:
    trusted: tuple[str, ...]  # as given: the native gateway parses the same list
    all: bool = False
    networks: tuple[Network, ...] = field(default=(), repr=False)
    literals: frozenset[str] = field(default=frozenset(), repr=False)

    @classmethod
    def parse(cls, allow: str) -> "ProxyTrust":
        """``allow``: comma-separated addresses, networks, or ``*``."""
        items = tuple(i.strip() for i in allow.split(",") if i.strip())
        networks: list[Network] = []
        literals: set[str] = set()
        for item in items:
            if item == "*":
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                literals.add(item)
        return cls(items, "*" in items, tuple(networks), frozenset(literals))

    def trusts(self, host: str) -> bool:
        if self.all:
            return True
        try:
            ip = _canonical(ipaddress.ip_address(host))
        except ValueError:
            return host in self.literals
        return any(ip in net for net in self.networks)

    def resolve(self, scheme: str, client: tuple[str, int] | None,
                headers: list[tuple[bytes, bytes]]) -> tuple[str, tuple[str, int] | None]:
        """The scope's (scheme, client) for a request on a connection from ``client``."""
        if client is None or not self.trusts(client[0]):
            return scheme, client
        forwarded: list[str] = []
        for name, value in headers:
            if name == b"x-forwarded-proto":
                proto = value.decode("latin-1").strip().lower()
                if proto in ("http", "ws"):
                    scheme = "http"
                elif proto in ("https", "wss"):
                    scheme = "https"
            elif name == b"x-forwarded-for":
                forwarded.extend(h.strip() for h in value.decode("latin-1").split(","))
        if self.all:
            host = forwarded[0] if forwarded else ""
        else:
            host = next((h for h in reversed(forwarded) if not self.trusts(h)), forwarded[0] if forwarded else "")
        return scheme, ((host, 0) if host else client)
