"""The WSGI runner's core (``anycore.worker.wsgi``) in memory: a ``Req`` frame in, the
frames the app thread writes out. No sockets, no processes; the app runs in a real thread
only where the test is about the hand-off between the loop and that thread."""

from __future__ import annotations

import sys
import threading
from typing import Any
from wsgiref.validate import validator

import msgspec
import pytest

from anycore import wire
from anycore.worker.wsgi import WsgiCycle, base_environ, build_environ, run_cycle
from anycore.worker.wsgi_io import ClientDisconnected
from anycore.worker.wsgi_threads import WsgiThreads

_decoder = msgspec.msgpack.Decoder(wire.Frame)


def frames(data: bytes) -> list[Any]:
    out, start = [], 0
    while start < len(data):
        size = int.from_bytes(data[start:start + 4], "big")
        out.append(_decoder.decode(data[start + 4:start + 4 + size]))
        start += 4 + size
    return out


def request(path: str = "/", body: bytes = b"", more: bool = False, method: str = "GET", root: str = "",
            headers: list[tuple[bytes, bytes]] | None = None, query: bytes = b"") -> wire.Req:
    return wire.Req(7, method, path, path.encode(), query, headers or [(b"host", b"example.org")], "1.1", "http",
                    ("10.0.0.1", 5555), ("127.0.0.1", 8000), root, body, more)


def run(app: Any, req: wire.Req, cycle: WsgiCycle | None = None) -> tuple[list[bytes], list[Any]]:
    """Run the app; returns (the separate writes, all frames in order)."""
    cycle = cycle or WsgiCycle(req)
    writes: list[bytes] = []
    tail = run_cycle(app, cycle, base_environ(True), writes.append)
    writes.append(tail)
    return writes, frames(b"".join(writes))


def wait_until(predicate: Any, timeout: float = 5.0) -> None:
    """The app runs in a real thread here: wait for what it does, bounded."""
    done = threading.Event()
    for _ in range(int(timeout / 0.005)):
        if predicate():
            return
        done.wait(0.005)
    raise AssertionError("timed out waiting for the app thread")


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def test_environ_follows_the_asgi_scope_rules_with_the_route_prefix_as_script_name() -> None:
    req = request("/api/caf\u00e9/x", root="/api", query=b"a=1&b=%20",
                  headers=[(b"host", b"example.org"), (b"content-type", b"text/plain"), (b"content-length", b"3"),
                           (b"x-forwarded-for", b"1.1.1.1"), (b"x-forwarded-for", b"2.2.2.2")])
    environ = build_environ(req, base_environ(False), None)
    assert environ["SCRIPT_NAME"] == "/api"
    assert environ["PATH_INFO"] == "/caf\u00e9/x".encode().decode("latin-1")  # bytes-in-str, per PEP 3333
    assert environ["QUERY_STRING"] == "a=1&b=%20"
    assert environ["CONTENT_TYPE"] == "text/plain" and environ["CONTENT_LENGTH"] == "3"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["HTTP_X_FORWARDED_FOR"] == "1.1.1.1,2.2.2.2"
    assert environ["HTTP_HOST"] == "example.org"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.0.0.1", "5555")
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1" and environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.multithread"] is False and environ["wsgi.version"] == (1, 0)


def test_a_small_response_is_one_write_with_done() -> None:
    writes, out = run(hello, request())
    assert len(writes) == 1 or writes[:-1] == [b""] * (len(writes) - 1)
    assert [type(f) for f in out] == [wire.Resp, wire.Done]
    assert out[0].status == 200 and out[0].body == b"hello" and out[0].more is False
    assert out[0].headers == [(b"content-type", b"text/plain")]
    assert out[1].error is None


def test_content_length_reached_completes_the_response_and_close_is_called() -> None:
    closed = []

    class Body:
        def __iter__(self):
            yield b"abc"
            yield b"def"
            raise AssertionError("iterated past Content-Length")

        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Body:
        start_response("201 Created", [("Content-Type", "text/plain"), ("Content-Length", "6")])
        return Body()

    writes, out = run(app, request())
    assert [type(f) for f in out] == [wire.Resp, wire.Body, wire.Done]
    assert out[1].more is False and b"".join([out[0].body, out[1].data]) == b"abcdef"
    assert closed == [True] and out[-1].error is None


def test_an_exception_before_the_response_is_a_500_with_the_traceback_logged(capsys: pytest.CaptureFixture[str]) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        raise ValueError("boom")

    _, out = run(app, request("/x"))
    assert out[0].status == 500 and out[-1].error == "ValueError: boom"
    assert 'raise ValueError("boom")' in capsys.readouterr().err


def test_exc_info_replaces_headers_before_they_are_sent_and_is_raised_after() -> None:
    def recovering(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        try:
            raise KeyError("x")
        except KeyError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"sorry"]

    _, out = run(recovering, request())
    assert out[0].status == 503 and out[0].body == b"sorry"

    def late(environ: dict[str, Any], start_response: Any) -> Any:
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"partial")
        try:
            raise KeyError("late")
        except KeyError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"never"]

    _, out = run(late, request())
    assert out[0].status == 200 and out[0].body == b"partial" and out[0].more is True
    assert out[-1].error == "KeyError: 'late'"  # re-raised: the response is cut, not restarted

    def twice(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        start_response("200 OK", [])
        return []

    _, out = run(twice, request())
    assert out[0].status == 500 and "second time" in out[-1].error


def test_a_streamed_response_waits_for_credit_and_a_disconnect_stops_it_and_closes() -> None:
    produced, closed = [], threading.Event()
    chunk = b"x" * (256 * 1024)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [("Content-Type", "application/octet-stream")])

        def gen():
            try:
                for i in range(100):
                    produced.append(i)
                    yield chunk
            finally:
                closed.set()
        return gen()

    req = request()
    cycle = WsgiCycle(req)
    writes: list[bytes] = []
    thread = threading.Thread(target=lambda: writes.append(run_cycle(app, cycle, base_environ(True), writes.append)))
    thread.start()
    # The window is 1 MiB: the thread stops after 4 chunks of 256 KiB until credit comes.
    wait_until(lambda: len(produced) == 4 and cycle.active_since == 0.0)  # waiting on us, not stuck
    thread.join(0.1)
    assert thread.is_alive() and len(produced) == 4
    cycle.add_credit(len(chunk))
    wait_until(lambda: len(produced) == 5 and cycle.active_since == 0.0)
    cycle.disconnect()
    thread.join(5)
    assert not thread.is_alive() and closed.is_set()
    assert len(produced) <= 6  # no chunk asked for after the disconnect was seen
    assert type(frames(b"".join(writes))[-1]) is wire.Done


def test_a_streamed_body_blocks_the_app_thread_and_returns_credit() -> None:
    seen: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        stream = environ["wsgi.input"]
        seen.append(stream.readline())
        seen.append(stream.read(4))
        seen.append(stream.read())
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    req = request(method="POST", body=b"line one\nab", more=True)
    pool_writes: list[bytes] = []
    pool = WsgiThreads(app, 1, pool_writes.append)
    pool.start()
    pool.submit(req)
    cycle = pool.cycles[req.id]
    cycle.feed(b"cdef", True)
    wait_until(lambda: pool_writes)  # the Credit for "cdef", written by the app thread
    cycle.feed(b"ghij", False)
    wait_until(lambda: req.id not in pool.cycles)
    pool.close()
    assert seen == [b"line one\n", b"abcd", b"efghij"]
    out = frames(b"".join(pool_writes))
    assert [f.n for f in out if type(f) is wire.Credit] == [4]  # the last chunk needs no credit back
    assert out[-1] == wire.Done(req.id, None)


def test_a_disconnect_during_the_body_raises_in_the_app() -> None:
    req = request(method="POST", body=b"", more=True)
    cycle = WsgiCycle(req)
    errors = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        cycle.disconnect()  # the client leaves while the app runs
        try:
            environ["wsgi.input"].read()
        except ClientDisconnected as exc:
            errors.append(exc)
            raise
        return []

    _, out = run(app, req, cycle)
    assert errors and out == [wire.Done(req.id, f"ClientDisconnected: {errors[0]}")]


def test_the_validator_accepts_what_the_runner_gives_and_does() -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return environ["wsgi.file_wrapper"](__import__("io").BytesIO(body), 2)

    _, out = run(validator(app), request(method="POST", body=b"abcde",
                                         headers=[(b"host", b"h"), (b"content-length", b"5")]))
    assert b"".join(f.body if type(f) is wire.Resp else f.data for f in out[:-1]) == b"abcde"
    assert out[-1].error is None


def test_the_channel_writer_waits_for_a_full_socket_and_never_interleaves_frames() -> None:
    import socket

    from anycore.worker.wsgi_threads import ChannelWriter

    ours, theirs = socket.socketpair()
    ours.setblocking(False)  # as the loop leaves it
    writer = ChannelWriter(ours.fileno())
    payloads = [bytes([i]) * 300_000 for i in range(4)]  # each larger than the socket's buffer
    threads = [threading.Thread(target=writer.write, args=(p,)) for p in payloads]
    for thread in threads:
        thread.start()
    received = bytearray()
    theirs.settimeout(5)
    while len(received) < sum(map(len, payloads)):
        received += theirs.recv(1 << 16)
    for thread in threads:
        thread.join(5)
    # Whole buffers, one after the other, in whatever order the threads took the lock.
    blocks = [bytes(received[i:i + 300_000]) for i in range(0, len(received), 300_000)]
    assert sorted(blocks) == sorted(payloads)
    ours.close()
    theirs.close()


def test_a_thread_that_keeps_control_counts_as_stuck_and_one_waiting_for_the_client_does_not() -> None:
    release, reading = threading.Event(), threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ["PATH_INFO"] == "/busy":
            release.wait(5)  # stands for a handler that never comes back to the runner
        else:
            reading.set()
            environ["wsgi.input"].read()  # waits for body frames that do not come: not stuck
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"done"]

    written: list[bytes] = []
    pool = WsgiThreads(app, 2, written.append)
    pool.start()
    import time

    pool.submit(wire.Req(1, "POST", "/upload", b"/upload", b"", [], "1.1", "http", None, None, "", b"", True))
    wait_until(lambda: reading.is_set() and pool.cycles[1].active_since == 0.0)  # in the body wait
    assert pool.stuck_for(time.monotonic() + 10) == 0.0
    pool.submit(wire.Req(2, "GET", "/busy", b"/busy", b"", [], "1.1", "http", None, None, "", b"", False))
    wait_until(lambda: pool.cycles[2].active_since > 0)
    later = time.monotonic() + 10
    assert 9.9 < pool.stuck_for(later) < 11
    release.set()
    pool.cycles[1].feed(b"", False)
    wait_until(lambda: not pool.cycles)
    assert pool.stuck_for(later) == 0.0
    pool.close()


def test_str_body_data_is_refused_with_a_500_and_a_cancelled_request_never_runs() -> None:
    def text_app(environ: dict[str, Any], start_response: Any) -> list[Any]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return ["not bytes"]

    _, out = run(text_app, request())
    assert out[0].status == 500 and "PEP 3333 wants bytes" in out[-1].error

    calls = []
    cycle = WsgiCycle(request())
    cycle.disconnect()
    _, out = run(lambda environ, start_response: calls.append(1) or [], cycle.req, cycle)
    assert calls == [] and out == [wire.Done(cycle.id, "cancelled")]
