"""A chat room per URL: connect to ws://HOST:PORT/rooms/<room>?name=<you> and type.

Every connection of a room lives on the same worker (the room is the session key), so a
message reaches every member with ``broadcast``. Each member's state (name, how many
messages it sent) survives deploys: edit this file, `anycore deploy examples/chat`, and
nobody is disconnected.
"""

from anycore import Session

PAGE = b"""<!doctype html><title>anycore chat</title>
<input id=room value=lobby> <input id=name value=guest> <button onclick=join()>join</button>
<pre id=log></pre><input id=text size=60 onkeydown="if(event.key=='Enter'){ws.send(this.value);this.value=''}">
<script>
let ws; function join(){ ws = new WebSocket(`ws://${location.host}/rooms/${room.value}?name=${name.value}`);
ws.onmessage = e => log.textContent += e.data + "\\n"; }
</script>"""


async def app(scope, receive, send):
    """The page (plain ASGI): anything else is a Session."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/html")]})
        await send({"type": "http.response.body", "body": PAGE})


class Room(Session):
    async def on_connect(self):
        self.name = self.query.get("name", "guest")
        self.sent = 0
        await self.broadcast(f"* {self.name} joined {self.key} ({len(list(self.members()))} here)")

    async def on_message(self, message):
        self.sent += 1
        await self.broadcast(f"{self.name}: {message}")

    async def on_close(self, code):
        await self.broadcast(f"* {self.name} left")


def notify(from_release, to_release):
    """Sent to every open connection when a new release goes live."""
    return f"* the server now runs {to_release}"
