"""cli/edge.py: the TLS and proxy-header options become Limits fields, or one-line errors."""

from __future__ import annotations

import pytest

from anycore.cli.edge import Edge
from anycore.errors import ConfigError


def test_no_edge_options_change_nothing():
    assert Edge(None, None, False, "127.0.0.1").limits("python") == {"proxy": None, "tls": None}


def test_proxy_headers_trust_the_allowed_ips_on_either_gateway():
    for gateway in ("python", "native"):
        proxy = Edge(None, None, True, "127.0.0.1, 10.0.0.0/8").limits(gateway)["proxy"]
        assert proxy.trusted == ("127.0.0.1", "10.0.0.0/8") and proxy.trusts("10.2.3.4") and not proxy.trusts("11.0.0.1")


@pytest.mark.parametrize("edge, gateway, message", [
    (Edge("c.pem", None, False, ""), "native", "--tls-cert and --tls-key go together"),
    (Edge(None, "k.pem", False, ""), "native", "--tls-cert and --tls-key go together"),
    (Edge("c.pem", "k.pem", False, ""), "python", "cannot read the TLS certificate c.pem"),
])
def test_tls_options_that_cannot_work_are_refused_in_one_line(edge, gateway, message):
    with pytest.raises(ConfigError) as raised:
        edge.limits(gateway)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_the_python_gateway_loads_the_files_with_openssl(tmp_path):
    (tmp_path / "c.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    (tmp_path / "k.pem").write_text("nothing\n")
    with pytest.raises(ConfigError, match="OpenSSL cannot load them"):
        Edge(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"), False, "").limits("python")


def test_unreadable_tls_files_are_refused_before_the_gateway_is_asked(tmp_path, monkeypatch):
    monkeypatch.setenv("ANYCORE_GATEWAY_BIN", str(tmp_path / "no-such-binary"))
    with pytest.raises(ConfigError, match="cannot read the TLS certificate"):
        Edge(str(tmp_path / "missing.pem"), str(tmp_path / "missing.key"), False, "").limits("native")
