"""The gateway's HTTP/1.1 contract with real clients on real sockets (issue 2, "Workers" and
"Gateway limits"): malformed, oversized and slow requests are refused without hurting the
node; 1 GiB bodies stream both ways in bounded memory; keep-alive and pipelining keep
responses in order; a client disconnect reaches the app as ``http.disconnect`` or takes
a queued request out of the queue; routing by path prefix and host; a connection cap."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Iterator

import httpx

from anycore.gateway.http import HALF_CLOSE_WINDOW
from tests.conftest import RunningNode, make_service, wait_for

APP = """
import asyncio, json, os, sys


async def respond(send, body, status=200, headers=()):
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), *headers]})
    await send({"type": "http.response.body", "body": body})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    path = scope["path"]
    query = scope["query_string"].decode()
    if path == "/upload":
        # Count the body as it arrives; never hold more than one chunk.
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await respond(send, str(total).encode())
    elif path == "/download":
        chunk = b"x" * 65536
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/octet-stream")]})
        for _ in range(int(query) // len(chunk)):
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    elif path == "/slow":
        await asyncio.sleep(float(query or "0.5"))
        await respond(send, b"slow")
    elif path == "/hold":
        # Hold the slot until the test creates the release file (bounded).
        release = os.environ["MARKER"] + ".release"
        for _ in range(1000):
            if os.path.exists(release):
                break
            await asyncio.sleep(0.02)
        await respond(send, b"held")
    elif path == "/mark":
        with open(os.environ["MARKER"] + ".queued", "w") as f:
            f.write("ran")
        await respond(send, b"marked")
    elif path == "/wait-disconnect":
        print("waiting for disconnect", flush=True)
        for _ in range(10000):
            message = await receive()
            if message["type"] == "http.disconnect":
                with open(os.environ["MARKER"] + ".disconnect", "w") as f:
                    f.write("disconnected")
                print("saw http.disconnect", flush=True)
                return
        await respond(send, b"never disconnected")
    else:
        client_port = str(scope["client"][1]).encode()
        await respond(send, path.encode(), headers=[(b"x-client-port", client_port)])
"""


def _service(tmp_path: Path, name: str = "gw", extra: str = "") -> Path:
    config = f'workers = 1\nenv = {{ MARKER = "{tmp_path / "marker"}" }}\n{extra}'
    return make_service(tmp_path, name, APP, config)


def _address(node: RunningNode) -> tuple[str, int]:
    url = urllib.parse.urlsplit(node.url)
    return url.hostname or "127.0.0.1", url.port or 80


def _connect(node: RunningNode, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(_address(node), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (or ``limit`` seconds); (data, closed)."""
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        sock.settimeout(max(deadline - time.monotonic(), 0.01))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


class ResponseReader:
    """Reads HTTP/1.1 responses one by one off a raw socket (content-length or chunked)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError("connection closed mid-response")
        self.buffer += chunk

    def _take_line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def _take(self, n: int) -> bytes:
        while len(self.buffer) < n:
            self._fill()
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def read(self) -> tuple[int, dict[str, str], bytes]:
        status = int(self._take_line().split(b" ", 2)[1])
        headers: dict[str, str] = {}
        while line := self._take_line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = self._take(int(headers["content-length"]))
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while size := int(self._take_line(), 16):
                body += self._take(size)
                self._take(2)
            self._take(2)
        else:
            body = b""
        return status, headers, body


def _status(data: bytes) -> int:
    assert data.startswith(b"HTTP/1.1 "), data[:200]
    return int(data.split(b" ", 2)[1])


def _still_serves(node: RunningNode) -> None:
    assert node.proc.poll() is None, node.output
    response = httpx.get(node.url + "/alive", timeout=10)
    assert response.status_code == 200
    assert response.text == "/alive"


# -- 1. limits -------------------------------------------------------------------------------

def test_malformed_request_gets_400_and_the_connection_is_closed(nodes, tmp_path):
    node = nodes.start(_service(tmp_path))
    for garbage in (b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
                    b"GET / HTTP/1.1\r\nContent-Length: nope\r\n\r\n", b"\x00\x01\x02\xff\r\n\r\n"):
        with _connect(node) as sock:
            sock.sendall(garbage)
            data, closed = _read_until_closed(sock)
        assert _status(data) == 400, garbage
        assert b"connection: close" in data.lower()
        assert json.loads(data.split(b"\r\n\r\n", 1)[1])["status"] == 400
        assert closed, f"connection left open after 400 for {garbage!r}"
        _still_serves(node)


def test_100_kb_header_gets_431(nodes, tmp_path):
    node = nodes.start(_service(tmp_path))
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (100 * 1024) + b"\r\n\r\n"
    with _connect(node) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the gateway may refuse before reading it all; its answer is still there
        data, closed = _read_until_closed(sock)
    assert _status(data) == 431
    assert closed
    # Many headers that add up past the limit, each small, are refused the same way.
    many = b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"b" * 1000) for i in range(100)) + b"\r\n"
    with _connect(node) as sock:
        try:
            sock.sendall(many)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data, closed = _read_until_closed(sock)
    assert _status(data) == 431
    assert closed
    _still_serves(node)


def test_slowloris_client_gets_408_within_the_header_timeout(nodes, tmp_path):
    node = nodes.start(_service(tmp_path), args=("--header-timeout", "1"))
    trickle = b"Host: x\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"
    with _connect(node) as sock:
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\n")
        answered = False
        # One byte every 0.1 s: the headers would take 20+ s to complete.
        for byte in trickle:
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.1)
            if readable:
                answered = True
                break
            if time.monotonic() - started > 10:
                break
        assert answered, "the slow client was never answered nor closed"
        data, closed = _read_until_closed(sock)
        elapsed = time.monotonic() - started
    assert _status(data) == 408, data[:200]  # the request line came, so it is answered, not just cut
    assert closed
    assert elapsed < 5.0, f"slowloris connection held {elapsed:.1f}s with --header-timeout 1"
    # An idle connection that never sends a byte is closed by the same timer.
    with _connect(node) as sock:
        started = time.monotonic()
        data, closed = _read_until_closed(sock, limit=6)
        assert closed and time.monotonic() - started < 5.0
    _still_serves(node)


def test_body_over_max_body_gets_413_with_content_length_and_chunked(nodes, tmp_path):
    node = nodes.start(_service(tmp_path, extra="max_body = 1000\n"))
    # Under the limit: served, both ways.
    assert httpx.post(node.url + "/upload", content=b"x" * 1000).text == "1000"
    assert httpx.post(node.url + "/upload", content=iter([b"x" * 500, b"x" * 500])).text == "1000"

    # Content-Length over the limit: refused from the headers alone.
    response = httpx.post(node.url + "/upload", content=b"x" * 2000, timeout=10)
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert "max_body" in response.json()["detail"]
    _still_serves(node)

    # Chunked: refused once the bytes received pass the limit, while the client still sends.
    with _connect(node) as sock:
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        answered = False
        for _ in range(200):  # up to 200 x 500 bytes; the limit is 1000
            try:
                sock.sendall(b"1f4\r\n" + b"y" * 500 + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                answered = True
                break
            if select.select([sock], [], [], 0.01)[0]:
                answered = True
                break
        assert answered, "a chunked body 100x over max_body was never refused"
        data, closed = _read_until_closed(sock)
    assert _status(data) == 413, data[:200]
    assert b"max_body" in data
    assert closed
    _still_serves(node)

    # The same through httpx's chunked upload (a generator body).
    def chunks() -> Iterator[bytes]:
        for _ in range(4):
            yield b"z" * 400

    try:
        response = httpx.post(node.url + "/upload", content=chunks(), timeout=10)
        assert response.status_code == 413
    except (httpx.WriteError, httpx.RemoteProtocolError, httpx.ReadError):
        pass  # the node closed while httpx was still writing; the raw-socket case above proves the 413
    _still_serves(node)


# -- 2. streaming ------------------------------------------------------------------------------

GIB = 1024 * 1024 * 1024
RSS_BOUND_MIB = 200


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """Samples the RSS of some processes in a background thread while a transfer runs."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.peak = {pid: _rss_mib(pid) for pid in pids}
        self.samples = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stopped.wait(0.05):
            for pid in self.pids:
                self.peak[pid] = max(self.peak[pid], _rss_mib(pid))
            self.samples += 1

    def __enter__(self) -> "PeakRss":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(5)


def _stream_node(nodes, tmp_path: Path) -> tuple[RunningNode, list[int]]:
    node = nodes.start(_service(tmp_path, "stream", "max_body = 2000000000\ntimeout = 120\n"))
    worker = wait_for(lambda: node.ready_workers("stream"), what="a ready worker")[0]
    return node, [node.record["pid"], worker["pid"]]


def test_1_gib_upload_streams_without_being_buffered_whole(nodes, tmp_path):
    node, pids = _stream_node(nodes, tmp_path)
    chunk = b"\0" * 65536

    def body() -> Iterator[bytes]:
        for _ in range(GIB // len(chunk)):
            yield chunk

    with PeakRss(pids) as rss:
        started = time.monotonic()
        response = httpx.post(node.url + "/upload", content=body(), timeout=120)  # chunked
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert int(response.text) == GIB  # the app saw every byte, as it arrived
    assert rss.samples > 5
    for pid, peak in rss.peak.items():
        assert peak < RSS_BOUND_MIB, f"pid {pid} peaked at {peak:.0f} MiB during a 1 GiB upload ({elapsed:.1f}s)"
    print(f"1 GiB upload: {elapsed:.1f}s, peak RSS node={rss.peak[pids[0]]:.0f} MiB worker={rss.peak[pids[1]]:.0f} MiB")


def test_1_gib_download_streams_without_being_buffered_whole(nodes, tmp_path):
    node, pids = _stream_node(nodes, tmp_path)
    received = 0
    with PeakRss(pids) as rss:
        started = time.monotonic()
        with httpx.stream("GET", node.url + f"/download?{GIB}", timeout=120) as response:
            assert response.status_code == 200
            assert response.headers["transfer-encoding"] == "chunked"
            for data in response.iter_raw(65536):
                received += len(data)
        elapsed = time.monotonic() - started
    assert received == GIB
    assert rss.samples > 5
    for pid, peak in rss.peak.items():
        assert peak < RSS_BOUND_MIB, f"pid {pid} peaked at {peak:.0f} MiB during a 1 GiB download ({elapsed:.1f}s)"
    print(f"1 GiB download: {elapsed:.1f}s, peak RSS node={rss.peak[pids[0]]:.0f} MiB worker={rss.peak[pids[1]]:.0f} MiB")


# -- 3. keep-alive and pipelining ----------------------------------------------------------------

def test_keep_alive_serves_several_requests_on_one_connection(nodes, tmp_path):
    node = nodes.start(_service(tmp_path))
    with httpx.Client(base_url=node.url, timeout=10) as client:
        ports = set()
        for i in range(10):
            response = client.get(f"/r{i}")
            assert response.status_code == 200
            assert response.text == f"/r{i}"
            ports.add(response.headers["x-client-port"])
    assert len(ports) == 1, f"10 keep-alive requests came from {len(ports)} client connections"
    # Raw socket: three requests one after another on the same connection, one with a body.
    with _connect(node) as sock:
        reader = ResponseReader(sock)
        sock.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\n")
        assert reader.read()[2] == b"/one"
        sock.sendall(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        assert reader.read()[2] == b"5"
        sock.sendall(b"GET /three HTTP/1.1\r\nHost: x\r\n\r\n")
        status, headers, body = reader.read()
        assert (status, body) == (200, b"/three")
        assert headers.get("connection") != "close"


def test_pipelined_requests_get_their_responses_in_order(nodes, tmp_path):
    node = nodes.start(_service(tmp_path))  # 8 slots: the worker could answer the fast ones first
    pipeline = (b"GET /slow?0.5 HTTP/1.1\r\nHost: x\r\n\r\n"
                b"GET /fast HTTP/1.1\r\nHost: x\r\n\r\n"
                b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
                b"POST /upload HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                b"GET /last HTTP/1.1\r\nHost: x\r\n\r\n")
    with _connect(node) as sock:
        sock.sendall(pipeline)  # one write
        reader = ResponseReader(sock)
        bodies = [reader.read()[2] for _ in range(5)]
    assert bodies == [b"slow", b"/fast", b"11", b"3", b"/last"]
    _still_serves(node)


# -- 4, 5. client disconnects ------------------------------------------------------------------

def test_client_disconnect_becomes_http_disconnect_in_the_app(nodes, tmp_path):
    node = nodes.start(_service(tmp_path))
    marker = tmp_path / "marker.disconnect"
    with _connect(node) as sock:
        sock.sendall(b"GET /wait-disconnect HTTP/1.1\r\nHost: x\r\n\r\n")
        node.wait_output(r"waiting for disconnect")
        assert not marker.exists()
        # A FIN within HALF_CLOSE_WINDOW of the request is a half-close, answered by design:
        # this client leaves later (the app's line can be read sooner than that).
        time.sleep(5 * HALF_CLOSE_WINDOW)
    # The socket is closed: the app's receive() must now return http.disconnect.
    wait_for(marker.exists, 10, what="the app to see http.disconnect")
    assert marker.read_text() == "disconnected"
    node.wait_output(r"saw http.disconnect")
    wait_for(lambda: node.service("gw")["inflight"] == 0, 10, what="the request to leave its slot")
    _still_serves(node)


def test_disconnect_of_a_queued_request_removes_it_from_the_queue(nodes, tmp_path):
    node = nodes.start(_service(tmp_path, "q", "slots = 1\n"))
    queued_marker = tmp_path / "marker.queued"
    holder = _connect(node, timeout=30)
    try:
        holder.sendall(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_for(lambda: node.service("q")["inflight"] == 1, 10, what="the slow request to occupy the slot")
        with _connect(node) as queued:
            queued.sendall(b"GET /mark HTTP/1.1\r\nHost: x\r\n\r\n")
            wait_for(lambda: node.service("q")["queued"] == 1, 10, what="the second request to be queued")
            # A FIN within HALF_CLOSE_WINDOW of the request is a half-close, answered by design
            # (test_http_corpus); this client leaves later. The node read the request before
            # `ps` showed it queued, so this much after that is later for the node's clock too.
            time.sleep(5 * HALF_CLOSE_WINDOW)
        # Its client is gone: it leaves the queue while the slot is still held.
        wait_for(lambda: node.service("q")["queued"] == 0, 10, what="the queue to empty")
        assert node.service("q")["inflight"] == 1
        (tmp_path / "marker.release").write_text("go")
        status, _, body = ResponseReader(holder).read()
        assert (status, body) == (200, b"held")
    finally:
        holder.close()
    # FIFO with one slot: anything still queued would run before this one.
    response = httpx.get(node.url + "/after", timeout=10)
    assert response.status_code == 200
    assert not queued_marker.exists(), "the handler of a request whose client left the queue ran anyway"
    assert node.service("q")["queued"] == 0


# -- 6. routing ------------------------------------------------------------------------------------

ROUTED = """
import json

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = json.dumps({"service": "NAME", "path": scope["path"], "root_path": scope["root_path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})
"""


def test_services_are_routed_by_path_prefix_and_host(nodes, tmp_path):
    dir_a = make_service(tmp_path, "svc-a", ROUTED.replace("NAME", "a"), 'routes = ["/a"]\nworkers = 1\n')
    dir_b = make_service(tmp_path, "svc-b", ROUTED.replace("NAME", "b"), 'routes = ["/b", "api.local"]\nworkers = 1\n')
    node = nodes.start(dir_a, dir_b)
    with httpx.Client(base_url=node.url, timeout=10) as client:
        def get(path: str, host: str | None = None) -> httpx.Response:
            return client.get(path, headers={"host": host} if host else None)

        cases = [
            ("/a", None, "svc-a", "/a", "/a"),
            ("/a/x/y", None, "svc-a", "/a/x/y", "/a"),
            ("/b/items", None, "svc-b", "/b/items", "/b"),
            ("/anything", "api.local", "svc-b", "/anything", ""),
            ("/a/x", "api.local:8080", "svc-b", "/a/x", ""),  # a host route beats a host-less prefix
        ]
        for path, host, service, seen_path, root_path in cases:
            response = get(path, host)
            assert response.status_code == 200, (path, host, response.text)
            assert response.headers["anycore-release"].startswith(service + "@"), (path, host)
            assert response.json() == {"service": service[-1], "path": seen_path, "root_path": root_path}
        for path in ("/", "/c", "/ab", "/bx/y"):
            response = get(path)
            assert response.status_code == 404, path
            assert response.headers["content-type"] == "application/json"
            assert response.json()["status"] == 404
            assert response.headers.get("anycore-release", "") == ""  # no service, so no release answered


# -- 7. connection cap ---------------------------------------------------------------------------

def test_connection_over_max_connections_gets_503_and_the_node_recovers(nodes, tmp_path):
    node = nodes.start(_service(tmp_path), args=("--max-connections", "5", "--keepalive-timeout", "30"))

    def open_idle(n: int) -> list[socket.socket]:
        socks = []
        for i in range(n):
            sock = _connect(node)
            sock.sendall(b"GET /idle%d HTTP/1.1\r\nHost: x\r\n\r\n" % i)
            status, headers, body = ResponseReader(sock).read()
            assert (status, body) == (200, b"/idle%d" % i)
            assert headers.get("connection") != "close"
            socks.append(sock)
        return socks

    idle = open_idle(5)
    try:
        with _connect(node) as sixth:
            data, closed = _read_until_closed(sixth)
        assert _status(data) == 503
        assert b"retry-after" in data.lower()
        assert closed
    finally:
        for sock in idle:
            sock.close()
    # Closed connections free their places: five new idle ones fit again.
    def served() -> bool:
        try:
            return httpx.get(node.url + "/again", timeout=10).status_code == 200
        except httpx.TransportError:
            return False  # still full: refused on accept

    wait_for(served, 10, what="a place for a new connection")
    for sock in open_idle(5):
        sock.close()
    assert node.proc.poll() is None
