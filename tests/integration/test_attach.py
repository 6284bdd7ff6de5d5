"""`p2pm attach` driven two ways. Through prompt_toolkit's pipe input: typing a line
sends it, an incoming message appears with the sender's name, delivery marks update,
and the screen survives its node going away and coming back. As a user sees it: the
real program in a pseudo-terminal read through a terminal emulator (pyte), while
another node floods the conversation, scrolled with the keys and the wheel, with
help, a long message, tabs, a refused message and a hostile peer's text. The node's
gossip and dht are the spec'd fakes of tests/helpers/gateway_fakes.py; everything else is
real (and in the last test, everything is)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from p2pm.common.cli import bus
from p2pm.common.cli.attach import COMMANDS, HELP, AttachModel
from p2pm.common.cli.screen import run_attach
from p2pm.common.cli.chat import gateway
from p2pm.services.gateway.actor import MAX_TEXT_BYTES
from tests.helpers.gateway_fakes import FakeNetwork, FakeNode
from tests.helpers.node import clean_env, p2pm_argv
from tests.helpers.terminal import Terminal


async def until(condition: Callable[[], Any], what: str, timeout: float = 30.0,
                model: AttachModel | None = None) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            seen = "" if model is None else \
                f"; the notice: {model.notice!r}; the last messages: {model.message_lines()[-3:]}"
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{seen}")
        await asyncio.sleep(0.05)


async def call(node: Any, method: str, params: dict[str, Any] | None = None) -> Any:
    return await asyncio.to_thread(gateway, node.home, method, params)


@pytest.fixture
def pair() -> Iterator[tuple[FakeNode, FakeNode]]:
    with FakeNetwork().run("alice", "bob") as (alice, bob):
        for me, other, name in ((alice, bob, "bob"), (bob, alice, "alice")):
            inv = gateway(other.home, "invite", {"name": name})["invite"]
            gateway(me.home, "contact_add", {"name": name, "invite": inv})
        yield alice, bob


@asynccontextmanager
async def attached(node: Any) -> AsyncIterator[tuple[AttachModel, Any]]:
    """`p2pm attach` on `node`, fed by a pipe; the chat with bob open."""
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        model = AttachModel(node.home)
        app = asyncio.create_task(run_attach(model))
        try:
            await until(lambda: model.connected, "the gateway's heartbeat")
            keys.send_text("/open bob\r")
            await until(lambda: model.current is not None, "the chat with bob to open")
            yield model, keys
            keys.send_text("\x15/quit\r")  # Ctrl-U first: a refused line stays typed
            await asyncio.wait_for(app, 5)
        finally:
            app.cancel()


def lines_with(model: AttachModel, text: str) -> list[str]:
    return [line for line in model.message_lines() if text in line]


def test_typing_sends_and_incoming_messages_appear(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair

    async def drive() -> None:
        async with attached(alice) as (model, keys):
            assert "[connected]" in model.status_line()
            keys.send_text("hello from the terminal\r")

            async def bob_got_it() -> bool:
                history = await call(bob, "history", {"conversation": "alice"})
                return any(m["body"] == "hello from the terminal" for m in history)

            for _ in range(100):
                if await bob_got_it():
                    break
                await asyncio.sleep(0.05)
            assert await bob_got_it()
            # The delivery receipt turns the mark into a double tick.
            await until(lambda: any(line.endswith("✓✓") for line in
                                    lines_with(model, "hello from the terminal")),
                        "the delivered mark")
            await call(bob, "send", {"contact": "alice", "text": "hi from bob"})
            (line,) = await until(lambda: lines_with(model, "hi from bob"),
                                  "bob's message on alice's screen")
            assert "bob: hi from bob" in line
            keys.send_text("/nonsense\r")
            await until(lambda: "unknown command" in model.notice, "the error notice")

    asyncio.run(drive())


def test_screen_survives_its_node_restarting(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair

    async def drive() -> None:
        async with attached(alice) as (model, keys):
            await asyncio.to_thread(alice.stop)
            await until(lambda: not model.connected, "the screen to notice", 8)
            assert "reconnecting" in model.status_line()
            await asyncio.to_thread(alice.start)
            await until(lambda: model.connected, "the screen to reconnect", 15)
            keys.send_text("still here\r")
            await until(lambda: lines_with(model, "still here"), "the message after restart")

    asyncio.run(drive())


def test_attach_on_real_nodes(node_factory: Any) -> None:
    """The same through real processes: gossip over libp2p between two nodes."""
    alice, bob = node_factory.many(2, listen=["/ip4/127.0.0.1/tcp/0"])
    for me, other, name in ((alice, bob, "bob"), (bob, alice, "alice")):
        inv = gateway(other.home, "invite", {"name": name})["invite"]
        gateway(me.home, "contact_add", {"name": name, "invite": inv})
    gateway(bob.home, "open", {"conversation": "alice"})

    async def drive() -> None:
        async with attached(alice) as (model, keys):
            keys.send_text("typed on a real node\r")
            await until(lambda: any(line.endswith("✓✓") for line in
                                    lines_with(model, "typed on a real node")),
                        "bob's receipt", 30)
            history = await call(bob, "history", {"conversation": "alice"})
            assert [m["body"] for m in history] == ["typed on a real node"]
            await call(bob, "send", {"contact": "alice", "text": "answer from bob"})
            await until(lambda: lines_with(model, "answer from bob"), "bob's answer", 30)
            # Alice's gossip crashes; supervisord restarts it and the screen carries on.
            os.kill(alice.pids()["gossip"], signal.SIGKILL)
            keys.send_text("after a gossip crash\r")
            await until(lambda: any(line.endswith("✓✓") for line in
                                    lines_with(model, "after a gossip crash")),
                        "the receipt after the restart", 40, model)

    asyncio.run(drive())


# -- the real screen in a terminal ---------------------------------------------------

COLS, ROWS = 80, 24
PANE_LEFT = 27  # the conversation list and its border take the first 27 columns


@pytest.fixture
def screen(pair: tuple[FakeNode, FakeNode]) -> Iterator[tuple[Terminal, FakeNode]]:
    """`p2pm attach` on alice in an 80x24 terminal, the chat with bob open."""
    alice, bob = pair
    argv = p2pm_argv("--home", str(alice.home.root), "attach")
    with Terminal(argv, COLS, ROWS, env=clean_env(PROMPT_TOOLKIT_NO_CPR="1")) as term:
        term.wait_for(lambda t: "[connected]" in t.lines()[0], "the screen to connect")
        term.type("/open bob\r")
        term.wait_for(lambda t: "bob  (direct chat)" in t.lines()[1], "bob's chat's title")
        yield term, bob


def pane_rows(term: Terminal) -> list[str]:
    """The message pane's rows: under the status and title lines, above the notice
    (two rows) and the input line."""
    return [line[PANE_LEFT:] for line in term.lines()[2:ROWS - 3]]


def on_pane(term: Terminal, text: str) -> bool:
    return any(text in row for row in pane_rows(term))


def newer_below(term: Terminal) -> int:
    """The count of messages below the pane that the title shows when scrolled up."""
    found = re.search(r"\[(\d+) newer below: End\]", term.lines()[1])
    return int(found.group(1)) if found else 0


def page_up_to(term: Terminal, text: str, pages: int = 30) -> None:
    """Press PageUp until `text` is in view; every press must move the pane."""
    for _ in range(pages):
        if on_pane(term, text):
            return
        before = pane_rows(term)
        term.key("pageup")
        term.wait_for(lambda t: pane_rows(t) != before, "PageUp to move the pane")
    raise AssertionError(f"{text!r} not reached in {pages} pages:\n{term.text()}")


def send_from_bob(bob: FakeNode, text: str) -> None:
    gateway(bob.home, "send", {"contact": "alice", "text": text})


def test_a_flooded_chat_follows_the_newest_and_scrolls_back(
        screen: tuple[Terminal, FakeNode]) -> None:
    term, bob = screen
    for i in range(1, 101):
        send_from_bob(bob, f"message {i:03} from bob")
    # The newest arrives and is in view, at the bottom, without a key pressed.
    term.wait_for(lambda t: on_pane(t, "message 100 from bob"), "the 100th message")
    assert "message 100 from bob" in pane_rows(term)[-1]
    assert not on_pane(term, "message 001 from bob")

    # PageUp, page after page, reaches the first message; each page moves up.
    page_up_to(term, "message 001 from bob")
    assert "newer below: End]" in term.lines()[1]

    # A message arriving while scrolled up does not move the view (the title counts
    # one more message below)...
    shown, below = pane_rows(term), newer_below(term)
    send_from_bob(bob, "message 101 from bob")
    term.wait_for(lambda t: newer_below(t) == below + 1, "the title to count one more")
    assert pane_rows(term) == shown
    # ...End goes back to the newest, and the screen follows again.
    term.key("end")
    term.wait_for(lambda t: on_pane(t, "message 101 from bob"), "End to show the newest")
    assert "newer below" not in term.lines()[1]
    send_from_bob(bob, "message 102 from bob")
    term.wait_for(lambda t: "message 102 from bob" in pane_rows(t)[-1], "following again")

    # The mouse wheel scrolls too: up leaves the bottom, down comes back to it.
    for _ in range(3):
        term.wheel(True, 50, 10)
    term.wait_for(lambda t: not on_pane(t, "message 102 from bob"), "the wheel to scroll up")
    for _ in range(6):
        term.wheel(False, 50, 10)
    term.wait_for(lambda t: "message 102 from bob" in pane_rows(t)[-1],
                  "the wheel to scroll back down")


def test_help_shows_every_command_whole_at_80_columns(
        screen: tuple[Terminal, FakeNode]) -> None:
    term, _ = screen
    term.type("/help\r")
    term.wait_for(lambda t: "help" in t.lines()[1] and "/open NAME" in t.text(),
                  "the help view")
    assert term.lines()[ROWS - 1].strip() == ">"  # /help was done: the line is empty
    # Taller than the pane at 24 rows: page through it, collecting what was shown.
    seen: list[str] = []
    for _ in range(10):
        rows = term.lines()[2:ROWS - 3]
        seen += rows
        if any("Esc" in r and "close this view" in r for r in rows):
            break
        term.key("pagedown")
        term.wait_for(lambda t: t.lines()[2:ROWS - 3] != rows, "the help to scroll")
    for command in COMMANDS:
        assert any(row.strip().startswith(command) for row in seen), command
    # Every line of the help on one row, none cut or wrapped at 80 columns.
    for line in HELP.splitlines():
        if line.strip():
            assert any(row.strip() == line.strip() for row in seen), line
    term.key("esc")
    term.wait_for(lambda t: "bob  (direct chat)" in t.lines()[1], "Esc to close the help")


def test_long_messages_wrap_at_words_and_tabs_show_as_spaces(
        screen: tuple[Terminal, FakeNode]) -> None:
    term, bob = screen
    words = [f"w{i:04}-{'abc'[i % 3] * (1 + i % 5)}" for i in range(400)]
    long = " ".join(words)
    while len(long) < 3200:
        long += " tail"
    long = long[:3200].rstrip()
    assert len(long) >= 3190
    send_from_bob(bob, long)
    send_from_bob(bob, "after\tthe\tlong\tone")
    term.wait_for(lambda t: on_pane(t, "after"), "the message after the long one")
    rows = pane_rows(term)
    # The message after the long one is on screen, its tabs as spaces (no ^I).
    (after,) = [r for r in rows if "after" in r]
    assert "^I" not in term.text() and "\t" not in after
    assert after.split(": ", 1)[1].split() == ["after", "the", "long", "one"]
    # Every row of the long message breaks between words: each token is a whole word.
    known = set(long.split())
    body_rows = [r for r in rows if "after" not in r and r.strip()]
    assert len(body_rows) >= 10
    for row in body_rows:
        text = row.split(": ", 1)[1] if "] bob: " in row else row
        for token in text.split():
            assert token in known, f"{token!r} is cut in {row!r}"
    # The last words of the long message are right above the one after it.
    assert long.split()[-1] in rows[rows.index(after) - 1]


def test_a_refused_message_stays_in_the_input_line(
        screen: tuple[Terminal, FakeNode]) -> None:
    term, bob = screen
    too_long = "x" * MAX_TEXT_BYTES + " ENDMARK"
    term.paste(too_long)  # who types 16 KiB? it was pasted
    term.type("\r")
    term.wait_for(lambda t: "at most" in t.text() and "bytes" in t.text(),
                  "the reason for the refusal")
    assert "ENDMARK" in term.lines()[ROWS - 1]  # still typed, the cursor at its end
    assert not any(m["body"].endswith("ENDMARK") for m in
                   gateway(bob.home, "history", {"conversation": "alice"}))
    # Fixed (the tail kept, the rest removed), it goes out and the line empties.
    term.key("ctrl-u")
    term.type("short now\r")
    term.wait_for(lambda t: on_pane(t, "me: short now"), "the fixed message")
    term.wait_for(lambda t: t.lines()[ROWS - 1].strip() == ">", "the input to empty")


def test_a_hostile_peers_text_is_shown_not_obeyed(
        screen: tuple[Terminal, FakeNode]) -> None:
    term, bob = screen
    # Bob's node skips its gateway's checks: its gossip actor posts raw text.
    conv = gateway(bob.home, "open", {"conversation": "alice"})["id"]
    evil = "\x1b]0;pwned\x07title \x1b[2Jclear\rfake\u202eesrever\n[00:00:00] alice: i agree"
    bus.call(bob.home, "gossip", "post", {"conversation": conv, "text": evil})
    term.wait_for(lambda t: on_pane(t, "pwned"), "the hostile message")
    assert "pwned" not in term.title
    # Every control in view as a picture or an escape (rows joined where they wrapped).
    shown = " ".join(row.strip() for row in pane_rows(term))
    assert "bob: ␛]0;pwned␇title ␛[2Jclear␍fake\\u202eesrever" in shown
    assert "bob  (direct chat)" in term.lines()[1]  # nothing was cleared
    # The fake line from "alice" is indented under bob's message, not a message.
    (fake,) = [r for r in pane_rows(term) if "alice: i agree" in r]
    assert fake.startswith(" " * 11)


def test_the_real_screen_on_real_nodes(node_factory: Any) -> None:
    """100 messages from another real node (gossip over libp2p) into the screen."""
    alice, bob = node_factory.many(2, listen=["/ip4/127.0.0.1/tcp/0"])
    for me, other, name in ((alice, bob, "bob"), (bob, alice, "alice")):
        inv = gateway(other.home, "invite", {"name": name})["invite"]
        gateway(me.home, "contact_add", {"name": name, "invite": inv})
    argv = p2pm_argv("--home", str(alice.home.root), "attach")
    with Terminal(argv, COLS, ROWS, env=clean_env(PROMPT_TOOLKIT_NO_CPR="1")) as term:
        term.wait_for(lambda t: "[connected]" in t.lines()[0], "the screen to connect", 30)
        term.type("/open bob\r")
        term.wait_for(lambda t: "bob  (direct chat)" in t.lines()[1], "bob's chat's title")
        for i in range(1, 101):
            gateway(bob.home, "send", {"contact": "alice", "text": f"real {i:03} from bob"})
        term.wait_for(lambda t: "real 100 from bob" in pane_rows(t)[-1],
                      "the 100th message at the bottom", 90)
        page_up_to(term, "real 001 from bob")
        term.key("end")
        term.wait_for(lambda t: "real 100 from bob" in pane_rows(t)[-1], "End")
