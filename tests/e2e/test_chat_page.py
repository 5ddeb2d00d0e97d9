"""examples/chat in a real headless browser (tests/browser.py): two people, each in their
own browser context, join the lobby from the page; each sees the other's name in the room
and in the messages (never "undefined"), and both see the notice of a deploy."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

from tests.browser import Browser

CHAT_DIR = Path(__file__).resolve().parents[2] / "examples" / "chat"


def test_chat_page_two_people_see_each_other_and_a_deploy(nodes, tmp_path) -> None:
    directory = tmp_path / "chat"
    shutil.copytree(CHAT_DIR, directory)
    node = nodes.start(directory, args=("--admin", "off"))

    async def join(browser: Browser, name: str):  # type: ignore[no-untyped-def]
        page = await browser.open(node.url + "/", context=await browser.new_context())
        await page.type("#name-input", name)
        await page.click("#join-button")
        await page.wait_for("!document.getElementById('room').hidden", 20, f"{name} in the room")
        return page

    def members(page) -> str:  # type: ignore[no-untyped-def]
        return "[...document.querySelectorAll('#members li')].map(li => li.textContent)"

    async def go() -> None:
        async with Browser(width=1100, height=700) as browser:
            ann = await join(browser, "ann")
            bob = await join(browser, "bob")
            for page in (ann, bob):
                await page.wait_for(f"JSON.stringify({members(page)}) === {json.dumps(json.dumps(['ann', 'bob'], separators=(',', ':')))}", 20,
                                    "both names in the room")
            await ann.type("#text", "hello bob")
            await ann.press_enter("#text")
            await bob.wait_for("document.getElementById('log').innerText.includes('ann')"
                               " && document.getElementById('log').innerText.includes('hello bob')", 20, "ann's message")
            await bob.type("#text", "hi ann")
            await bob.press_enter("#text")
            await ann.wait_for("document.getElementById('log').innerText.includes('hi ann')", 20, "bob's answer")
            said = await ann.evaluate("[...document.querySelectorAll('#log li .who')].map(s => s.textContent)")
            assert said == ["ann", "bob"], said
            (directory / "app.py").write_text((directory / "app.py").read_text().replace("Say something", "Say something nice"))
            deploy = await asyncio.to_thread(node.cli, "deploy", str(directory))
            assert deploy.returncode == 0, deploy.stderr
            release = node.service("chat")["release"]
            for page in (ann, bob):
                await page.wait_for(f"!document.getElementById('banner').hidden && "
                                    f"document.getElementById('banner').textContent.includes({release!r})", 20,
                                    "the deploy notice")
                text = await page.evaluate("document.body.innerText")
                assert "undefined" not in text, text
                assert await page.evaluate("document.getElementById('status').textContent") == "connected"
            await bob.type("#text", "still here")
            await bob.press_enter("#text")
            await ann.wait_for("document.getElementById('log').innerText.includes('still here')", 20, "a message after the deploy")
            await ann.screenshot("chat-ann.png", full_page=False)
            await bob.screenshot("chat-bob.png", full_page=False)
            for page in (ann, bob):
                page.assert_no_errors()
    asyncio.run(go())
