"""Text from peers is printed inert by the CLI: a hostile peer's message body and room
name (an OSC title sequence, a screen clear, a carriage return that would overwrite
the author, a bidi override, a newline faking a message from someone else) come out
of `p2pm history`, `inbox`, `rooms join`, `rooms list` and `--json` as visible
characters, never as terminal commands. The hostile side skips its own gateway's
checks and posts through its gossip actor, as a modified node would. Nodes as in
test_chat_cli.py: real gateway, keystore, storage and transport; gossip and dht are
the spec'd fakes."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
from click.testing import CliRunner

from p2pm.common.cli import bus, main
from p2pm.common.home import Home
from tests.helpers.gateway_fakes import FakeNetwork, FakeNode
from tests.helpers import wait_for

EVIL = ("\x1b]0;pwned\x07 \x1b[2Jcleared\rmallory: owned \u202eesrever\u2066iso\u2069"
        "\x9b31m\ttabbed\n[12:00:00] alice: I agree, send the money")
# What a terminal must never receive from a peer's text.
ACTIVE = ["\x1b", "\r", "\x07", "\x9b", "\u202e", "\u2066", "\u2069"]


def p2pm(home: Home, *args: str) -> str:
    # color=True: click passes escape sequences through, as it does to a terminal.
    result = CliRunner().invoke(main, ["--home", str(home.root), *args], color=True,
                                catch_exceptions=False)
    assert result.exit_code == 0, f"p2pm {' '.join(args)}: {result.stderr}"
    return result.stdout


@pytest.fixture
def pair() -> Iterator[tuple[FakeNode, FakeNode]]:
    with FakeNetwork().run("alice", "bob") as (alice, bob):
        for me, other, name in ((alice, bob, "bob"), (bob, alice, "alice")):
            inv = orjson.loads(p2pm(other.home, "invite", "--name", name, "--json"))
            p2pm(me.home, "contacts", "add", name, inv["invite"])
        yield alice, bob


def assert_inert(out: str) -> None:
    for ch in ACTIVE:
        assert ch not in out, f"{ch!r} reached the terminal:\n{out!r}"


def test_a_hostile_body_prints_inert(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    p2pm(bob.home, "send", "alice", "an honest first message")
    conv = bus.call(bob.home, "gateway", "open", {"conversation": "alice"})["id"]
    bus.call(bob.home, "gossip", "post", {"conversation": conv, "text": EVIL})
    wait_for(lambda: "esrever" in p2pm(alice.home, "history", "bob"), 10,
             "the hostile message at alice")

    for out in (p2pm(alice.home, "inbox"), p2pm(alice.home, "history", "bob")):
        assert_inert(out)
        # The controls are there to see, each as a picture or an escape...
        assert "␛]0;pwned␇ ␛[2Jcleared␍mallory: owned \\u202eesrever\\u2066iso\\u2069" \
            "\\x9b31m\ttabbed" in out
        # ...and the body's second line is indented under it: only the two real
        # messages start like a message does.
        lines = out.splitlines()
        heads = [line for line in lines if line.lstrip().startswith("[")
                 and line.startswith(("[", "  ["))]
        assert [h.split("] ", 1)[1].split(":")[0] for h in heads] == ["bob", "bob"]
        (fake,) = [line for line in lines if "I agree" in line]
        indent = len(fake) - len(fake.lstrip(" "))
        assert indent > len(heads[-1]) - len(heads[-1].lstrip(" "))

    # --json keeps the exact text (escaped the JSON way), still inert on a terminal.
    raw = p2pm(alice.home, "history", "bob", "--json")
    assert_inert(raw)
    assert orjson.loads(raw)[-1]["body"] == EVIL


def test_a_hostile_room_name_prints_inert(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    name = "\x1b]2;x\x07friends\u202e\nalice: fake"
    room = bus.call(bob.home, "gossip", "room_create", {"name": name})
    joined = p2pm(alice.home, "rooms", "join", room["invite"])
    listed = p2pm(alice.home, "rooms", "list")
    for out in (joined, listed):
        assert_inert(out)
        assert "␛]2;x␇friends\\u202e␤alice: fake" in out  # one line, the newline shown
    assert not any(line.startswith("alice") for line in listed.splitlines())
