"""A chat room per URL: open http://HOST:PORT/ in a browser, or connect to
ws://HOST:PORT/rooms/<room>?name=<you> and type.

Every connection of a room lives on the same worker (the room is the session key), so a
message reaches every member with ``broadcast``. Each member's state (name, how many
messages it sent) survives deploys: edit this file, `anycore deploy examples/chat`, and
nobody is disconnected — the page says the server was updated.

The protocol is text, one line per message: ``name: text`` for what a member said, and
lines starting with ``* `` from the room itself — ``* ann joined lobby (3 here)``,
``* ann left``, ``* here: ["ann", "bob"]`` (who is in the room, as JSON, after every join
and leave) and ``* the server now runs chat@...`` after a deploy.
"""

import json

from anycore import Session

MAX_NAME = 32

PAGE = b"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>anycore chat</title>
<style>
  :root { --bg: #f4f6f9; --panel: #fff; --line: #dde3ea; --text: #1c2430; --muted: #6b7785; --accent: #2f6fde; --notice: #8a5a00; }
  * { box-sizing: border-box; }
  body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; background: var(--bg); color: var(--text); }
  header { display: flex; align-items: center; gap: 14px; padding: 12px 20px; background: var(--panel); border-bottom: 1px solid var(--line); }
  header h1 { font-size: 17px; margin: 0; }
  header .status { margin-left: auto; font-size: 13px; color: var(--muted); }
  header .status.on::before { content: "\\25CF "; color: #23a55a; }
  header .status.off::before { content: "\\25CF "; color: #d33; }
  form#join { max-width: 420px; margin: 12vh auto; background: var(--panel); border: 1px solid var(--line); border-radius: 12px; padding: 24px; display: grid; gap: 12px; }
  form#join h2 { margin: 0 0 4px; font-size: 20px; }
  label { display: grid; gap: 4px; font-size: 13px; color: var(--muted); }
  input { font: inherit; padding: 8px 10px; border: 1px solid var(--line); border-radius: 8px; color: var(--text); }
  button { font: inherit; padding: 8px 14px; border: 0; border-radius: 8px; background: var(--accent); color: #fff; cursor: pointer; }
  main#room { display: grid; grid-template-columns: 220px 1fr; height: calc(100vh - 52px); }
  aside { border-right: 1px solid var(--line); background: var(--panel); padding: 14px 16px; overflow-y: auto; }
  aside h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--muted); margin: 0 0 10px; }
  aside ul { list-style: none; margin: 0; padding: 0; }
  aside li { padding: 4px 0; display: flex; align-items: center; gap: 8px; }
  aside li::before { content: ""; width: 8px; height: 8px; border-radius: 50%; background: #23a55a; }
  aside li.me { font-weight: 600; }
  section.chat { display: flex; flex-direction: column; min-height: 0; }
  #banner { margin: 12px 16px 0; padding: 8px 12px; border-radius: 8px; background: #fff4d6; color: var(--notice); border: 1px solid #f0d48a; font-size: 14px; }
  ol#log { list-style: none; margin: 0; padding: 12px 16px; overflow-y: auto; flex: 1; }
  ol#log li { padding: 3px 0; overflow-wrap: anywhere; }
  ol#log li .who { font-weight: 600; margin-right: 6px; }
  ol#log li.mine .who { color: var(--accent); }
  ol#log li.notice { color: var(--muted); font-size: 13px; font-style: italic; }
  ol#log li.deploy { color: var(--notice); font-size: 13px; }
  form#say { display: flex; gap: 8px; padding: 12px 16px; border-top: 1px solid var(--line); background: var(--panel); }
  form#say input { flex: 1; }
  [hidden] { display: none !important; }
</style></head>
<body>
<header><h1>anycore chat</h1><span id="where"></span><span id="status" class="status">not connected</span></header>
<form id="join">
  <h2>Join a room</h2>
  <label>Your name <input id="name-input" maxlength="32" autocomplete="nickname" required></label>
  <label>Room <input id="room-input" value="lobby" maxlength="64" required></label>
  <button type="submit" id="join-button">Join</button>
</form>
<main id="room" hidden>
  <aside><h2>In the room</h2><ul id="members"></ul></aside>
  <section class="chat">
    <div id="banner" hidden></div>
    <ol id="log"></ol>
    <form id="say"><input id="text" placeholder="Say something" autocomplete="off" maxlength="2000"><button type="submit">Send</button></form>
  </section>
</main>
<script>
"use strict";
// Elements are looked up by id, never through window globals: a global `name` is
// window.name (the old page sent "undefined" for every user that way).
const el = (id) => document.getElementById(id);
let ws = null, me = "";
el("name-input").value = localStorage.getItem("chat-name") || "";
el("join").addEventListener("submit", (event) => {
  event.preventDefault();
  me = el("name-input").value.trim() || "guest";
  const room = el("room-input").value.trim() || "lobby";
  localStorage.setItem("chat-name", me);
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  ws = new WebSocket(`${scheme}://${location.host}/rooms/${encodeURIComponent(room)}?name=${encodeURIComponent(me)}`);
  ws.onopen = () => { status("on", "connected"); el("join").hidden = true; el("room").hidden = false; el("text").focus(); };
  ws.onclose = () => status("off", "disconnected: reload to join again");
  ws.onmessage = (e) => receive(String(e.data));
  el("where").textContent = `room ${room} \\u00b7 you are ${me}`;
});
el("say").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = el("text").value;
  if (text.trim() && ws && ws.readyState === WebSocket.OPEN) ws.send(text);
  el("text").value = "";
});
function status(cls, text) { el("status").className = `status ${cls}`; el("status").textContent = text; }
function line(cls, parts) {
  const li = document.createElement("li");
  li.className = cls;
  for (const [text, klass] of parts) {
    const span = document.createElement("span");
    if (klass) span.className = klass;
    span.textContent = text;
    li.append(span);
  }
  const log = el("log");
  const atEnd = log.scrollHeight - log.scrollTop - log.clientHeight < 40;
  log.append(li);
  if (atEnd) log.scrollTop = log.scrollHeight;
}
function receive(text) {
  if (text.startsWith("* here: ")) {
    const names = JSON.parse(text.slice(8));
    el("members").replaceChildren(...names.map((n) => {
      const li = document.createElement("li");
      li.textContent = n;
      if (n === me) li.className = "me";
      return li;
    }));
    return;
  }
  if (text.startsWith("* the server now runs ")) {
    const release = text.slice("* the server now runs ".length);
    const when = new Date().toLocaleTimeString();
    el("banner").textContent = `The server was updated to ${release} at ${when}; you stayed connected.`;
    el("banner").hidden = false;
    line("deploy", [[`server updated to ${release}`, ""]]);
    return;
  }
  if (text.startsWith("* ")) return line("notice", [[text.slice(2), ""]]);
  const match = /^(.*?)(: |> )([\\s\\S]*)$/.exec(text);
  if (!match) return line("", [[text, ""]]);
  line(match[1] === me ? "mine" : "", [[match[1], "who"], [match[3], "text"]]);
}
</script>
</body></html>
"""


async def app(scope, receive, send):
    """The page (plain ASGI): anything else is a Session."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/html; charset=utf-8")]})
        await send({"type": "http.response.body", "body": PAGE})


class Room(Session):
    async def on_connect(self):
        self.name = (self.query.get("name") or "").strip()[:MAX_NAME] or "guest"
        self.sent = 0
        await self.broadcast(f"* {self.name} joined {self.key} ({len(list(self.members()))} here)")
        await self.broadcast(self.roster())

    async def on_message(self, message):
        self.sent += 1
        await self.broadcast(f"{self.name}: {message}")

    async def on_close(self, code):
        await self.broadcast(f"* {self.name} left")
        await self.broadcast(self.roster(leaving=self))

    def roster(self, leaving=None):
        names = sorted(m.name for m in self.members() if m is not leaving and hasattr(m, "name"))
        return "* here: " + json.dumps(names)


def notify(from_release, to_release):
    """Sent to every open connection when a new release goes live."""
    return f"* the server now runs {to_release}"
