"""The edge options of ``anycore up`` and ``anycore dev``: ``--tls-cert``/``--tls-key``
(gateway/tls.py) and ``--proxy-headers`` with ``--forwarded-allow-ips``
(gateway/proxy.py). ``edge_options`` gathers the four into one ``edge`` argument;
``Edge.limits(gateway)`` checks them (ConfigError: one line, exit 2, before anything
starts) and returns the ``Limits`` fields they set.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable

import click

from anycore.errors import ConfigError
from anycore.gateway.proxy import DEFAULT_ALLOW, ProxyTrust
from anycore.gateway.tls import TlsFiles


@dataclass(frozen=True)
class Edge:
    tls_cert: str | None
    tls_key: str | None
    proxy_headers: bool
    forwarded_allow_ips: str

    def limits(self, gateway: str) -> dict[str, Any]:
        """``proxy=`` and ``tls=`` for ``Limits``; the TLS files are read and loaded by the
        gateway binary's own TLS code here, so a bad file stops ``up`` before it starts."""
        proxy = ProxyTrust.parse(self.forwarded_allow_ips) if self.proxy_headers else None
        if not self.tls_cert and not self.tls_key:
            return {"proxy": proxy, "tls": None}
        if not (self.tls_cert and self.tls_key):
            raise ConfigError("--tls-cert and --tls-key go together: give the certificate chain and its key (PEM)")
        tls = TlsFiles(self.tls_cert, self.tls_key)
        if gateway != "native":
            tls.server_context()  # the Python gateway's own loader
            return {"proxy": proxy, "tls": tls}
        from anycore.node.native import find_binary

        binary = find_binary()
        if binary is None:
            tls.read()  # no binary to load them with: `up` says what to install
        else:
            tls.check(binary)
        return {"proxy": proxy, "tls": tls}


_options = [
    click.option("--tls-cert", metavar="PEM", default=None,
                 help="Serve HTTPS with this certificate chain (and its --tls-key); HTTP/2 by ALPN on --gateway native. "
                      "SIGHUP to the node reloads both files."),
    click.option("--tls-key", metavar="PEM", default=None, help="The private key of --tls-cert."),
    click.option("--proxy-headers", is_flag=True, default=False,
                 help="Take the scope's client and scheme from X-Forwarded-For/-Proto sent by --forwarded-allow-ips."),
    click.option("--forwarded-allow-ips", envvar="FORWARDED_ALLOW_IPS", default=DEFAULT_ALLOW, show_default=True,
                 help="Comma-separated addresses or networks trusted to send proxy headers ('*': all)."),
]


def edge_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def run(*args: Any, tls_cert: str | None, tls_key: str | None, proxy_headers: bool, forwarded_allow_ips: str,
            **kwargs: Any) -> Any:
        return fn(*args, edge=Edge(tls_cert, tls_key, proxy_headers, forwarded_allow_ips), **kwargs)

    for option in reversed(_options):
        run = option(run)
    return run
