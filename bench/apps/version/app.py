"""Answers its VERSION: the swap scenario rewrites this line and replaces the code under load."""

VERSION = "A"


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": VERSION.encode()})
