"""The services of the call tests (tests/e2e/test_calls.py, tests/cluster/test_calls.py):
one ASGI app, deployed under several names, that calls the others through anycore.call."""

APP = r'''
import asyncio, json, os, time
from urllib.parse import unquote
import anycore


def params(scope):
    out = {}
    for part in scope["query_string"].decode().split("&"):
        if part:
            k, _, v = part.partition("=")
            out[k] = unquote(v)
    return out


async def body_of(receive):
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


async def answer(send, status, body, headers=()):
    if not isinstance(body, bytes):
        body = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": list(headers)})
    for i in range(0, max(len(body), 1), 65536):
        await send({"type": "http.response.body", "body": body[i:i + 65536], "more_body": i + 65536 < len(body)})


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    q = params(scope)
    route = scope["path"][len(scope["root_path"]):]
    body = await body_of(receive)
    if route == "/relay":  # call q[service] q[method] q[path] with our body; answer with its answer
        r = await anycore.call(q["service"], q.get("method", "GET"), q["path"], content=body or None)
        await answer(send, 200, r.content, [(b"x-call-status", str(r.status_code).encode()),
                                            (b"x-call-node", r.headers.get("anycore-node", "").encode()),
                                            (b"content-type", r.headers.get("content-type", "").encode())])
    elif route == "/echo":  # what a callee sees of its request
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        await answer(send, 200, {"path": scope["path"], "root_path": scope["root_path"], "query": q,
                                 "headers": headers, "left": anycore.time_left(), "pid": os.getpid()})
    elif route == "/upload":  # the body back, and its size
        await answer(send, 200, body, [(b"x-size", str(len(body)).encode())])
    elif route == "/big":
        await answer(send, 200, bytes(range(256)) * (int(q["size"]) // 256))
    elif route == "/slow":  # sleep; record a cancel in q[mark]
        try:
            await asyncio.sleep(float(q["sleep"]))
        except asyncio.CancelledError:
            if "mark" in q:
                open(q["mark"], "w").write("cancelled")
            raise
        await answer(send, 200, b"slept")
    elif route == "/once":  # the first run writes its pid to q[file] and hangs; a retry answers
        if not os.path.exists(q["file"]):
            open(q["file"], "w").write(str(os.getpid()))
            await asyncio.sleep(60)
        await answer(send, 200, b"retried and answered")
    elif route == "/deadline":  # wait until q[left] seconds are left, then call a slow service
        while anycore.time_left() > float(q["left"]):
            await asyncio.sleep(0.01)
        left = anycore.time_left()
        started = time.monotonic()
        r = await anycore.call(q["service"], "GET", q["path"])
        result = {"status": r.status_code, "elapsed": time.monotonic() - started, "left": left, "body": r.json()}
        open(q["result"], "w").write(json.dumps(result))  # our own deadline is as near as the call's was
        await answer(send, 200, result)
    elif route == "/loop":  # call ourselves: how deep does it go?
        r = await anycore.call(q["service"], "GET", "/loop?service=" + q["service"])
        inner = r.json() if r.headers.get("content-type") == "application/json" else {}
        depth = inner.get("depth", 0) + 1 if r.status_code == 200 else 0
        await answer(send, 200, {"depth": depth, "refused": inner.get("refused", r.status_code),
                                 "error": inner.get("error", r.text if r.status_code != 200 else "")},
                     [(b"content-type", b"application/json")])
    elif route == "/httpx":  # the httpx transport
        import httpx
        async with httpx.AsyncClient(transport=anycore.transport(), base_url="http://" + q["service"]) as client:
            r = await client.post("/upload", content=body)
        await answer(send, 200, r.content, [(b"x-call-status", str(r.status_code).encode())])
    else:
        await answer(send, 404, b"no such route")
'''

WSGI = r'''
import anycore


def app(environ, start_response):
    r = anycore.call_sync("b", "GET", "/echo?from=wsgi")
    start_response("200 OK", [("content-type", "application/json"), ("x-call-status", str(r.status_code))])
    return [r.content]
'''
