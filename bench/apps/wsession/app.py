"""An echo `Session` (anycore only: the class lives in a worker, the gateway holds the socket),
next to the same plain ASGI echo as apps/wsecho on "/". VERSION changes on every deploy of the
WebSocket-swap scenario, so each deploy is a new release."""

from anycore import Session

VERSION = "A"


async def app(scope, receive, send):
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": VERSION.encode()})
        return
    if scope["type"] != "websocket":
        return
    while True:
        event = await receive()
        if event["type"] == "websocket.connect":
            await send({"type": "websocket.accept"})
        elif event["type"] == "websocket.receive":
            await send({"type": "websocket.send", "text": event.get("text") or ""})
        else:
            return


class Echo(Session):
    async def on_message(self, message):
        await self.send(message)
