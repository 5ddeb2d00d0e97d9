"""TLS, HTTP/2 and proxy headers (issue 15, stage 2): real nodes, the real gateway binary,
certificates made by the ``openssl`` CLI for each test.

- ``--tls-cert``/``--tls-key`` on the native gateway: a client that verifies the chain
  against the test's CA gets HTTP/2 by ALPN, and HTTP/1.1 when it offers only that; the
  scope says https; a wss WebSocket is relayed to the node and echoes both ways; a client that never starts the handshake is closed. A SIGHUP after the files change: new connections get the new
  certificate, and an HTTP/2 connection opened before goes on serving requests.
- The Python gateway: HTTP/1.1 over TLS (Python's ssl), wss, the same SIGHUP reload.
- WebSockets over HTTP/2 (RFC 8441): the native gateway advertises extended CONNECT; a
  WebSocket stream is served by the node's Python code (handshake translated, bytes
  relayed), a refusal keeps its status, and a quiet WebSocket keeps its connection open;
  chromium opens a page's wss WebSocket that way, on the page's HTTP/2 connection.
- Bad TLS files: one line, exit 2, nothing started (on either gateway).
- ``--proxy-headers``: X-Forwarded-For/-Proto set the scope's client and scheme from a
  trusted peer only (both gateways; 127.0.0.2 is an untrusted peer on the loopback).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from anycore.node.native import find_binary
from tests.conftest import make_service, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl CLI")]

ECHO = """
import asyncio
import json

async def app(scope, receive, send):
    if scope["type"] == "websocket":  # says its scheme and client, then echoes until the client leaves
        await receive()
        if scope["path"] == "/refuse":  # closed before accept: the handshake's answer is 403
            await send({"type": "websocket.close"})
            return
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps({"scheme": scope["scheme"], "client": scope["client"],
                                                                  "http_version": scope["http_version"]})})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "bytes": message.get("bytes") or message["text"].encode()})
        return
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/sleep":
        await asyncio.sleep(float(scope["query_string"] or 0))
    headers = dict(scope["headers"])
    body = json.dumps({"scheme": scope["scheme"], "client": scope["client"], "http_version": scope["http_version"],
                       "host": headers.get(b"host", b"").decode(), "size": size})
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body.encode()})
"""


def native_binary() -> str:
    binary = find_binary()
    if binary is None:
        pytest.skip("anycore-gateway is not built (needs cargo and the Debian crates: see README, Native gateway)")
    return binary


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


class Pki:
    """A CA and server certificates for 127.0.0.1 it signs, in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
                "-subj", "/CN=anycore test CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=root)
        self.ca = root / "ca.pem"

    def server(self, name: str) -> tuple[Path, Path]:
        """A certificate (CN ``name``, SAN IP 127.0.0.1) and its key."""
        (self.root / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=self.root)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "2", "-extfile", "san.ext", "-out", f"{name}.pem", cwd=self.root)
        return self.root / f"{name}.pem", self.root / f"{name}.key"

    def install(self, name: str, cert: Path, key: Path) -> None:
        """A new certificate ``name`` and its key, written where the node reads its TLS files."""
        made_cert, made_key = self.server(name)
        shutil.copy(made_cert, cert)
        shutil.copy(made_key, key)

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca))


def peer_name(port: int, context: ssl.SSLContext) -> str:
    """The CN of the certificate a new connection is served, verified against the CA."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            subject = dict(item[0] for item in tls.getpeercert()["subject"])  # type: ignore[index]
            return str(subject["commonName"])


def test_tls_serves_http2_by_alpn_and_http11_and_a_sighup_reload_keeps_open_connections(nodes, tmp_path):
    binary = native_binary()
    pki = Pki(tmp_path / "pki")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    pki.install("first", cert, key)
    echo = make_service(tmp_path, "echo", ECHO, 'name = "echo"\nworkers = 1\n')
    node = nodes.start(echo, args=("--gateway", "native", "--tls-cert", str(cert), "--tls-key", str(key),
                                   "--header-timeout", "1", "--access-log", "combined"), env={"ANYCORE_GATEWAY_BIN": binary})
    assert node.url.startswith("https://127.0.0.1:")
    port = int(node.url.rsplit(":", 1)[1])
    context = pki.context()
    assert peer_name(port, context) == "first"
    with httpx.Client(base_url=node.url, http2=True, verify=context, timeout=10) as h2, \
            httpx.Client(base_url=node.url, verify=context, timeout=10) as h1:
        answer = h2.get("/x")
        assert answer.http_version == "HTTP/2" and answer.status_code == 200
        before = answer.json()
        assert before["scheme"] == "https" and before["http_version"] == "2" and before["client"][0] == "127.0.0.1"
        assert before["host"] == f"127.0.0.1:{port}"  # :authority, as the host header
        payload = b"z" * 3_000_000  # a body past the credit window, over HTTP/2
        answer = h2.post("/x", content=payload)
        assert answer.status_code == 200 and answer.json()["size"] == len(payload) and answer.http_version == "HTTP/2"
        # Each HTTP/2 stream has its access line, with the bytes its answer's body had.
        line = node.wait_output(r'"POST /x HTTP/2" 200 (\d+)')
        assert int(line.group(1)) == len(answer.content)
        answer = h1.get("/x")
        assert answer.http_version == "HTTP/1.1" and answer.json()["scheme"] == "https"
        assert answer.json()["http_version"] == "1.1"
        # A WebSocket over TLS: the node's Python code serves it, the gateway relays the bytes.
        with connect(node.url.replace("https://", "wss://") + "/ws", ssl=pki.context(), open_timeout=10) as ws:
            greeting = json.loads(ws.recv(timeout=10))
            assert greeting["scheme"] == "wss" and greeting["http_version"] == "1.1"
            big = os.urandom(300_000)  # past the relay's and the sockets' buffers, both ways
            for message in (b"ping", big):
                ws.send(message)
                assert ws.recv(timeout=10) == message
        with pytest.raises(httpx.ConnectError):  # a client that does not know the CA refuses the chain
            httpx.get(node.url + "/x", timeout=10)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as silent:  # no ClientHello: closed, bounded
            assert silent.recv(1) == b""  # by the header timeout (the handshake holds a connection slot)

        pki.install("second", cert, key)
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for(lambda: peer_name(port, context) == "second", 15, what="new connections served the new certificate")

        (tmp_path / "garbage.pem").write_text("not a key\n")  # a reload the gateway refuses: the last one stays
        shutil.copy(tmp_path / "garbage.pem", key)
        os.kill(node.proc.pid, signal.SIGHUP)
        node.wait_output("TLS certificate refused")
        assert peer_name(port, context) == "second"

        after = h2.get("/x")  # the HTTP/2 connection opened before the reloads still serves
        assert after.status_code == 200 and after.http_version == "HTTP/2"
        assert after.json()["client"] == before["client"]  # the same connection (same client port)
        assert node.proc.poll() is None
    assert "tls.reloaded" in node.output


def test_the_python_gateway_serves_http11_over_tls_and_reloads_on_sighup(nodes, tmp_path):
    pki = Pki(tmp_path / "pki")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    pki.install("first", cert, key)
    echo = make_service(tmp_path, "echo", ECHO, 'name = "echo"\nworkers = 1\n')
    node = nodes.start(echo, args=("--gateway", "python", "--tls-cert", str(cert), "--tls-key", str(key)))
    assert node.url.startswith("https://127.0.0.1:")
    port = int(node.url.rsplit(":", 1)[1])
    context = pki.context()
    with httpx.Client(base_url=node.url, http2=True, verify=context, timeout=10) as client:
        before = client.get("/x")  # offered h2, given HTTP/1.1 by ALPN
        assert before.http_version == "HTTP/1.1" and before.json()["scheme"] == "https"
        wss = pki.context()
        with connect(node.url.replace("https://", "wss://") + "/ws", ssl=wss, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["scheme"] == "wss"
        pki.install("second", cert, key)
        os.kill(node.proc.pid, signal.SIGHUP)
        wait_for(lambda: peer_name(port, context) == "second", 15, what="new connections served the new certificate")
        after = client.get("/x")  # the keep-alive connection opened before the reload
        assert after.status_code == 200 and after.json()["client"] == before.json()["client"]
    assert "tls.reloaded" in node.output


def goaway_or_close(port: int, context: ssl.SSLContext) -> str:
    """Open an HTTP/2 connection, make no request, and read until the server ends it."""
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions

    context.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            assert tls.selected_alpn_protocol() == "h2"
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            tls.sendall(conn.data_to_send())
            while True:
                data = tls.recv(65536)  # the socket's timeout bounds the wait
                if not data:
                    return "closed"
                try:
                    events = conn.receive_data(data)
                except h2.exceptions.ProtocolError:  # GOAWAY then hyper's PING in one read: h2 is closed by the first
                    if conn.state_machine.state is h2.connection.ConnectionState.CLOSED:
                        return "goaway"
                    raise
                if any(isinstance(e, h2.events.ConnectionTerminated) for e in events):
                    return "goaway"
                tls.sendall(conn.data_to_send())


def native_tls_node(nodes, tmp_path: Path, name: str, source: str, *args: str) -> tuple[Any, Pki, int]:
    """A node on the native gateway with TLS (a certificate ``name`` from a fresh CA),
    serving ``source`` as a one-worker service: the node, the CA, the port."""
    binary = native_binary()
    pki = Pki(tmp_path / "pki")
    cert, key = pki.server(name)
    service = make_service(tmp_path, name, source, f'name = "{name}"\nworkers = 1\n')
    node = nodes.start(service, args=("--gateway", "native", "--tls-cert", str(cert), "--tls-key", str(key), *args),
                       env={"ANYCORE_GATEWAY_BIN": binary})
    return node, pki, int(node.url.rsplit(":", 1)[1])


class H2WebSocket:
    """A WebSocket over one HTTP/2 stream (RFC 8441), spoken with the ``h2`` library and
    hand-made frames (RFC 6455: the client masks; each message is one frame)."""

    def __init__(self, port: int, context: ssl.SSLContext, path: str) -> None:
        import h2.config
        import h2.connection
        import h2.events
        import h2.settings

        self.events = h2.events
        self.terminated = False  # a GOAWAY came
        context.set_alpn_protocols(["h2"])
        self.tls = context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="127.0.0.1")
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        self.tls.sendall(self.conn.data_to_send())
        settings = self.until(h2.events.RemoteSettingsChanged)
        assert settings.changed_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL].new_value == 1
        self.stream = self.conn.get_next_available_stream_id()
        self.conn.send_headers(self.stream, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "https"),
                                             (":path", path), (":authority", f"127.0.0.1:{port}"),
                                             ("sec-websocket-version", "13")])
        self.tls.sendall(self.conn.data_to_send())
        answer = self.until(h2.events.ResponseReceived)
        self.status = int(dict(answer.headers)[b":status"])
        self.data = b""

    def until(self, kind: type) -> Any:
        """Reads until an event of ``kind`` arrives (the connection has only our stream),
        keeping the stream's data in ``self.data`` and noting a GOAWAY."""
        while True:
            data = self.tls.recv(65536)  # the socket's timeout bounds the wait
            assert data, "the connection closed"
            for event in self.conn.receive_data(data):
                if isinstance(event, self.events.ConnectionTerminated):
                    self.terminated = True
                if isinstance(event, self.events.DataReceived):
                    self.data += event.data
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                if isinstance(event, kind):
                    self.tls.sendall(self.conn.data_to_send())
                    return event
            self.tls.sendall(self.conn.data_to_send())

    def send(self, payload: bytes, opcode: int = 2) -> None:
        size = len(payload)
        length = bytes([0x80 | size]) if size < 126 else bytes([0x80 | 127]) + size.to_bytes(8, "big")
        mask = os.urandom(4) * (size // 4 + 1)
        frame = bytes([0x80 | opcode]) + length + mask[:4] + (int.from_bytes(payload, "big") ^
                                                               int.from_bytes(mask[:size], "big")).to_bytes(size, "big")
        view = memoryview(frame)
        while view:  # within the stream's and the connection's flow-control windows
            window = min(self.conn.local_flow_control_window(self.stream), self.conn.max_outbound_frame_size)
            if window <= 0:
                self.until(self.events.WindowUpdated)
                continue
            self.conn.send_data(self.stream, view[:window].tobytes())
            self.tls.sendall(self.conn.data_to_send())
            view = view[window:]

    def recv(self) -> tuple[int, bytes]:
        """The next server frame (unmasked, unfragmented): its opcode and payload."""
        while True:
            data = self.data
            if len(data) >= 2:
                size, start = data[1] & 0x7F, 2
                if size == 126:
                    size, start = int.from_bytes(data[2:4], "big"), 4
                elif size == 127:
                    size, start = int.from_bytes(data[2:10], "big"), 10
                if len(data) >= start + size:
                    self.data = data[start + size:]
                    return data[0] & 0x0F, data[start:start + size]
            self.until(self.events.DataReceived)

    def close(self) -> None:
        self.tls.close()


def test_a_websocket_over_http2_is_served_by_extended_connect(nodes, tmp_path):
    node, pki, port = native_tls_node(nodes, tmp_path, "echo", ECHO, "--keepalive-timeout", "1", "--access-log", "combined")
    ws = H2WebSocket(port, pki.context(), "/ws")
    try:
        assert ws.status == 200
        opcode, greeting = ws.recv()
        # The app's scope says HTTP/2, though the node's WebSocket code was handed HTTP/1.1.
        assert opcode == 1 and json.loads(greeting)["scheme"] == "wss" and json.loads(greeting)["http_version"] == "2"
        ws.send(b"ping")
        assert ws.recv() == (2, b"ping")
        big = os.urandom(300_000)  # past the h2 windows and the relay's buffers, both ways
        ws.send(big)
        assert ws.recv() == (2, big)
        # Quiet past the keep-alive timeout: two new idle connections, one after the other,
        # are ended for it meanwhile (waited for, bounded), while the connection with an
        # open WebSocket stream gets no GOAWAY.
        for _ in range(2):
            assert goaway_or_close(port, pki.context()) in ("goaway", "closed")
        ws.send(b"text message", opcode=1)
        assert ws.recv() == (2, b"text message")
        assert not ws.terminated
        ws.send(b"\x03\xe8", opcode=8)  # close, 1000: the node closes back
        assert ws.recv()[0] == 8
    finally:
        ws.close()
    refused = H2WebSocket(port, pki.context(), "/refuse")  # closed by the app before accept
    try:
        assert refused.status == 403
    finally:
        refused.close()
    # Each WebSocket's access line, when it ends, names the protocol the client spoke.
    assert node.wait_output(r'"GET /ws HTTP/2" 101 ') and node.wait_output(r'"GET /refuse HTTP/2" 403 ')


PAGE = """
import json

PAGE = b\"\"\"<html><body><script>
const ws = new WebSocket("wss://" + location.host + "/ws");
ws.onmessage = (e) => { if (!window.first) { window.first = e.data; ws.send("hello"); } else { window.echo = e.data; ws.close(); } };
ws.onerror = () => { window.failed = true; };
</script></body></html>\"\"\"

async def app(scope, receive, send):
    if scope["type"] == "websocket":  # says the first header names it got, then echoes
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": json.dumps([k.decode() for k, _ in scope["headers"]][:4])})
        while (message := await receive())["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": "echo " + message["text"]})
        return
    await receive()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
    await send({"type": "http.response.body", "body": PAGE})
"""


def test_chromium_opens_its_websocket_over_the_pages_http2_connection(nodes, tmp_path):
    """Chromium, having loaded the page over HTTP/2 from a server that advertises extended
    CONNECT, opens the page's wss WebSocket on that connection (RFC 8441): the head the node
    serves is the one h2ws.rs writes (its first four headers), and messages echo."""
    import asyncio

    from tests.browser import Browser

    node, _, _ = native_tls_node(nodes, tmp_path, "page", PAGE)

    async def go() -> tuple[str, str]:
        async with Browser() as browser:
            page = await browser.open("about:blank", context=await browser.new_context())
            await page.send("Security.setIgnoreCertificateErrors", {"ignore": True})  # the test's own CA
            await page.goto(node.url + "/")
            await page.wait_for("window.echo || window.failed", 20, "the WebSocket's echo")
            return await page.evaluate("window.first"), await page.evaluate("window.echo")

    first, echo = asyncio.run(go())
    assert json.loads(first) == ["host", "connection", "upgrade", "sec-websocket-key"]  # written by h2ws.rs
    assert echo == "echo hello"


def test_an_idle_http2_connection_is_closed_after_the_keepalive_timeout_but_not_while_a_request_is_open(nodes, tmp_path):
    node, pki, port = native_tls_node(nodes, tmp_path, "echo", ECHO, "--keepalive-timeout", "1")
    assert goaway_or_close(port, pki.context()) in ("goaway", "closed")
    with httpx.Client(base_url=node.url, http2=True, verify=pki.context(), timeout=20) as h2:
        slow = h2.get("/sleep?2.5")  # silent for longer than the keep-alive timeout, with a stream open
        assert slow.status_code == 200 and slow.http_version == "HTTP/2"
        again = h2.get("/x")
        assert again.json()["client"] == slow.json()["client"]  # the same connection: it was not idle


def up(tmp_path: Path, binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "ANYCORE_HOME": str(tmp_path / "home"), "ANYCORE_GATEWAY_BIN": binary}
    proc = subprocess.Popen([sys.executable, "-m", "anycore.cli.main", "up", "--listen", "127.0.0.1:0", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started after all: stop it in order, then fail
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        raise AssertionError(f"`anycore up {' '.join(args)}` started instead of refusing:\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_bad_tls_files_fail_in_one_line_before_anything_starts(tmp_path):
    binary = native_binary()
    pki = Pki(tmp_path / "pki")
    cert, key = pki.server("one")
    _, other_key = pki.server("two")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    cases = [
        (("--tls-cert", str(tmp_path / "missing.pem"), "--tls-key", str(key)), "cannot read the TLS certificate"),
        (("--tls-cert", str(garbage), "--tls-key", str(key)), "no CERTIFICATE"),
        (("--tls-cert", str(cert), "--tls-key", str(garbage)), "no PRIVATE KEY"),
        (("--tls-cert", str(cert), "--tls-key", str(other_key)), "does not go with the certificate"),
        (("--tls-cert", str(cert)), "--tls-cert and --tls-key go together"),
    ]
    for args, expected in cases:
        result = up(tmp_path, binary, "--gateway", "native", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and expected in lines[0], (args, result.stderr)
        assert lines[0].startswith("anycore: ")
    for args, expected in cases[1:]:  # the Python gateway loads them with OpenSSL: one line too
        result = up(tmp_path, binary, "--gateway", "python", *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("anycore: --tls-"), (args, result.stderr)
    assert not (tmp_path / "home" / "node.json").exists()  # nothing started


@pytest.mark.parametrize("gateway", ["native", "python"])
def test_proxy_headers_set_scheme_and_client_only_from_a_trusted_peer(nodes, tmp_path, gateway):
    env = {"ANYCORE_GATEWAY_BIN": native_binary()} if gateway == "native" else {}
    echo = make_service(tmp_path, "echo", ECHO, 'name = "echo"\nworkers = 1\n')
    node = nodes.start(echo, args=("--gateway", gateway, "--proxy-headers", "--forwarded-allow-ips", "127.0.0.1, 10.0.0.0/8"),
                       env=env)
    forwarded = {"x-forwarded-for": "198.51.100.9, 203.0.113.7, 10.1.2.3", "x-forwarded-proto": "https"}
    with httpx.Client(base_url=node.url, timeout=10) as trusted:
        seen = trusted.get("/x", headers=forwarded).json()
        assert seen["scheme"] == "https" and seen["client"] == ["203.0.113.7", 0]  # the first untrusted from the right
        seen = trusted.get("/x").json()
        assert seen["scheme"] == "http" and seen["client"][0] == "127.0.0.1" and seen["client"][1] > 0
    untrusted_transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=node.url, timeout=10, transport=untrusted_transport) as untrusted:
        seen = untrusted.get("/x", headers=forwarded).json()
        assert seen["scheme"] == "http" and seen["client"][0] == "127.0.0.2"
    if gateway == "python":  # on native, WebSockets are handed to the same Python code (the node's)
        ws_url = node.url.replace("http://", "ws://") + "/ws"
        with connect(ws_url, additional_headers=forwarded, open_timeout=10) as ws:
            seen = json.loads(ws.recv(timeout=10))
        assert seen == {"scheme": "wss", "client": ["203.0.113.7", 0], "http_version": "1.1"}
        with connect(ws_url, additional_headers={"x-forwarded-proto": "http"}, open_timeout=10) as ws:
            assert json.loads(ws.recv(timeout=10))["scheme"] == "ws"
