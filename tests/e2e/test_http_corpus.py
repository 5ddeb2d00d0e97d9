"""HTTP/1.1 edge cases against a live gateway (issue 12, item 3), as a data corpus.

``http_corpus/{valid,invalid}/NAME.http``: the first line says what the gateway must
answer (``expect: 200 200`` for two pipelined responses, ``body: TEXT`` for the request body
the app must have seen, ``fin`` to half-close the socket right after sending), the rest is
the request with ``\\r``, ``\\n``, ``\\xNN`` written as escapes (real newlines are ignored),
as in gunicorn's ``tests/requests``. Every invalid case must be refused before it reaches a
worker: the app counts the requests it saw.

Then a bounded hypothesis fuzz run against the same node: no 5xx, no crash, the node keeps
serving. Both run against both data planes: the Python gateway and ``anycore-gateway``
(``--gateway native``; skipped where it is not built).
"""

from __future__ import annotations

import codecs
import re
import socket
from pathlib import Path

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import make_service, wait_for
from tests.e2e.planes import gateway  # noqa: F401 (a fixture)

CORPUS = Path(__file__).parent / "http_corpus"
APP = """
SEEN = {"n": 0}


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    if scope["path"] == "/seen":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(SEEN["n"]).encode()})
        return
    SEEN["n"] += 1
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"""


def load(path: Path) -> tuple[list[int], bytes | None, bool, bytes]:
    first, _, rest = path.read_text().partition("\n")
    spec = first.removeprefix("expect:").strip()
    fin = spec.endswith(" fin")
    spec = spec.removesuffix(" fin")
    statuses, _, body = spec.partition(" body: ")
    raw = codecs.escape_decode(rest.replace("\n", "").encode("latin-1"))[0]
    return [int(s) for s in statuses.split()], body.encode() if body else None, fin, raw


def exchange(port: int, raw: bytes, fin: bool, expected: int = 0, timeout: float = 10.0) -> bytes:
    """Send ``raw``; read until the gateway closes, ``expected`` whole responses came (a
    keep-alive connection stays open) or ``timeout``; return what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(raw)
        if fin:
            sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
                if expected and _complete(data, expected):
                    break
        except (socket.timeout, ConnectionResetError):
            pass
        return data


def _complete(data: bytes, expected: int) -> bool:
    try:
        return len(responses(data)) >= expected
    except (AssertionError, ValueError):
        return False


def responses(data: bytes) -> list[tuple[int, bytes]]:
    """Split the bytes the gateway sent into (status, body) pairs."""
    out = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            raise AssertionError(f"incomplete response head: {head[:200]!r}")
        lines = head.split(b"\r\n")
        match = re.match(rb"HTTP/1\.1 (\d{3}) ", lines[0] + b" ")
        assert match, f"bad status line {lines[0]!r}"
        headers = dict(line.lower().split(b": ", 1) for line in lines[1:])
        if b"content-length" in headers:
            size = int(headers[b"content-length"])
            body, data = data[:size], data[size:]
        elif headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, data = data.partition(b"\r\n")
                size = int(size_line, 16)
                body, data = body + data[:size], data[size + 2:]
                if not size:
                    break
        else:
            body = b""
        out.append((int(match.group(1)), body))
    return out


def seen(node) -> int:
    return int(httpx.get(node.url + "/seen", timeout=10).text)


def test_http_corpus_is_answered_like_the_best_servers(nodes, tmp_path, gateway):
    node = nodes.start(make_service(tmp_path, "corpus", APP, 'name = "corpus"\nworkers = 1\n'), **gateway)
    port = int(node.url.rsplit(":", 1)[1])
    failures = []
    answered: dict[int, int] = {}  # the error answers the client got, by status
    for path in sorted(CORPUS.glob("*/*.http")):
        statuses, body, fin, raw = load(path)
        before = seen(node)
        try:
            got = responses(exchange(port, raw, fin, len(statuses)))
        except AssertionError as exc:
            failures.append(f"{path.parent.name}/{path.name}: {exc}")
            continue
        for status, _ in got:
            if status >= 400:
                answered[status] = answered.get(status, 0) + 1
        ok = [s for s, _ in got] == statuses
        if ok and body is not None:
            ok = got[0][1] == body
        if path.parent.name == "invalid":
            reached = seen(node) - before
            if reached:
                failures.append(f"{path.parent.name}/{path.name}: reached the app {reached} time(s)")
        if not ok:
            failures.append(f"{path.parent.name}/{path.name}: expected {statuses} body={body!r}, got {got}")
    assert not failures, "\n".join(failures)
    assert node.proc.poll() is None
    # Each of them is a gateway error to the node (`ps`, the dashboard), refusals included.
    assert answered.get(400, 0) >= 10, answered

    def counted() -> bool:
        errors = {int(status): n for status, n in node.ps()["gateway_errors"].items()}
        return all(errors.get(status, 0) >= n for status, n in answered.items())
    wait_for(counted, what=f"the gateway errors to count {answered}")


# -- fuzz -------------------------------------------------------------------------------------

_TOKENS = st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"OPTIONS", b"G T", b"", b"\x00", b"PRI"])
_TARGETS = st.sampled_from([b"/", b"/a?b=c", b"*", b"http://a/", b"/%zz", b"/\xff", b"", b"/" + b"x" * 9000])
_VERSIONS = st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.10", b"HTTP/x", b"", b"http/1.1"])
_NAMES = st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Content-Type", b"Connection",
                          b"Expect", b"Upgrade", b"X_Under", b"X-A", b"Trailer", b" Host", b"Ho st", b""])
_VALUES = st.one_of(st.sampled_from([b"a", b"5", b"-1", b"chunked", b"close", b"100-continue", b"keep-alive",
                                     b"websocket", b"99999999999999999999", b"chunked, gzip", b"\x00", b""]),
                    st.binary(max_size=20))
_CHUNKS = st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n", b"5; a=b\r\nhello\r\n0\r\n\r\n", b"zz\r\n", b"0\r\nHost: x\r\n\r\n",
                           b"ffffffffffffffffff\r\n", b"3\r\nabc", b"", b"hello", b"0\r\n\r\nGET / HTTP/1.1\r\n\r\n"])


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    line = draw(_TOKENS) + b" " + draw(_TARGETS) + b" " + draw(_VERSIONS) + draw(st.sampled_from([b"\r\n", b"\n"]))
    headers = b"".join(draw(_NAMES) + draw(st.sampled_from([b": ", b":", b" : "])) + draw(_VALUES) + b"\r\n"
                       for _ in range(draw(st.integers(0, 5))))
    raw = line + headers + b"\r\n" + draw(_CHUNKS)
    if draw(st.booleans()):  # mutate a byte, or cut the request short
        at = draw(st.integers(0, max(len(raw) - 1, 0)))
        raw = raw[:at] + draw(st.binary(min_size=0, max_size=3)) + raw[at + 1:] if draw(st.booleans()) else raw[:at]
    return raw


def test_fuzzed_requests_never_get_a_5xx_nor_hurt_the_node(nodes, tmp_path, gateway):
    node = nodes.start(make_service(tmp_path, "corpus", APP, 'name = "corpus"\nworkers = 1\n'), **gateway)
    port = int(node.url.rsplit(":", 1)[1])

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(requests())
    def check(raw: bytes) -> None:
        data = exchange(port, raw, fin=True)
        for status in re.findall(rb"(?:^|\r\n\r\n)HTTP/1\.1 (\d{3}) ", data):
            assert int(status) < 500, (raw, data[:300])

    check()
    assert node.proc.poll() is None
    assert httpx.get(node.url + "/", timeout=10).status_code == 200
