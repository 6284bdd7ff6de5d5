"""Bad input to the people commands (contacts rename/remove/block, requests, rooms
leave, text from stdin): one clear line, the documented exit code, nothing changed.
Against nodes whose gossip and dht are the spec'd fakes (services/gateway/testing.py),
which is quick; the behaviour itself is tested on real nodes in test_people_cli.py."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from p2pm.common.cli import main
from tests.helpers.gateway_fakes import FakeNetwork, FakeNode
from tests.helpers import wait_for
from tests.integration.test_chat_cli import ok_json as _ok_json


def p2pm(node: FakeNode, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(node.home.root), *args], input=stdin,
                                catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def ok_json(node: FakeNode, *args: str) -> Any:
    return _ok_json(node.home, *args)


@pytest.fixture(scope="module")
def trio_of_nodes() -> Iterator[tuple[FakeNode, FakeNode, FakeNode]]:
    with FakeNetwork().run("ann", "bob", "cat") as (ann, bob, cat):
        for who, other, name in ((ann, bob, "bob"), (ann, cat, "cat"), (bob, ann, "ann")):
            ok_json(who, "contacts", "add", name, ok_json(other, "invite")["invite"])
        ok_json(ann, "history", "bob")  # opens the direct chat
        yield ann, bob, cat


@pytest.mark.parametrize("args, stdin, code, words", [
    (("contacts", "rename", "bob", "cat"), None, 1, "already used"),
    (("contacts", "rename", "bob", "   "), None, 2, "not blank"),
    (("contacts", "rename", "nobody", "x"), None, 1, "no contact named 'nobody'"),
    (("contacts", "remove", "nobody"), None, 1, "no contact named 'nobody'"),
    (("contacts", "block", "nobody"), None, 1, "no contact named 'nobody'"),
    (("requests", "accept", "abc"), None, 2, "last 6+ characters"),
    (("requests", "accept", "zzzzzzzz"), None, 1, "no message request matching"),
    (("requests", "block", "zzzzzzzz"), None, 1, "no message request matching"),
    (("rooms", "leave", "bob"), None, 2, "is a direct chat, not a room"),
    (("rooms", "leave", "nowhere"), None, 1, "no conversation, room or contact"),
    (("send", "bob", "-"), b"caf\xe9\n", 2, "stdin is not UTF-8"),
    (("send", "bob", "-"), b"", 2, "the message is empty"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(
        trio_of_nodes: tuple[FakeNode, FakeNode, FakeNode], args: tuple[str, ...],
        stdin: bytes | None, code: int, words: str) -> None:
    ann = trio_of_nodes[0]
    before = (ok_json(ann, "contacts", "list"), ok_json(ann, "call", "gateway",
                                                        "conversations"))
    got, out, err = p2pm(ann, *args, stdin=stdin)
    assert (got, out) == (code, "") and words in err and err.count("\n") == 1, err
    assert before == (ok_json(ann, "contacts", "list"),
                      ok_json(ann, "call", "gateway", "conversations"))


def test_a_blocked_contact_can_neither_write_nor_be_written_to(
        trio_of_nodes: tuple[FakeNode, FakeNode, FakeNode]) -> None:
    ann, bob, _cat = trio_of_nodes
    assert ok_json(ann, "contacts", "block", "bob")["blocked"]
    assert [c["blocked"] for c in ok_json(ann, "contacts", "list")
            if c["name"] == "bob"] == [True]
    code, out, _ = p2pm(ann, "contacts", "list")
    assert code == 0 and "blocked" in out
    code, _, err = p2pm(ann, "send", "bob", "hi")
    assert code == 1 and "bob is blocked" in err
    ok_json(bob, "send", "ann", "let me in")
    assert all(c["name"] != "bob" for c in ok_json(ann, "inbox"))
    assert ok_json(ann, "contacts", "unblock", "bob") == {
        "name": "bob", "peer_id": bob.peer_id, "blocked": False}
    ok_json(ann, "send", "bob", "hello again")
    wait_for(lambda: any(m["body"] == "hello again" for m in ok_json(bob, "history", "ann")),
             15, "bob receiving after the unblock")
