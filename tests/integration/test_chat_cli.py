"""The chat commands end to end: `p2pm` (click, --json, exit codes) -> the real gateway
-> real keystore, storage and transport, with the gossip and dht actors replaced by the
spec'd fakes of tests/helpers/gateway_fakes.py (two nodes in one process, on their
homes' ipc sockets). Against real gossip: test_gateway_nodes.py."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import nacl.signing
import orjson
import pytest
from click.testing import CliRunner

from p2pm.common import identity
from p2pm.common import invite as invites
from p2pm.common.cli import main
from p2pm.common.home import Home
from p2pm.services.gateway.actor import MAX_TEXT_BYTES
from tests.helpers.gateway_fakes import FakeNetwork, FakeNode
from tests.helpers import wait_for


def p2pm(home: Home, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, ["--home", str(home.root), *args],
                                catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def ok_json(home: Home, *args: str) -> Any:
    code, out, err = p2pm(home, *args, "--json")
    assert code == 0, f"p2pm {' '.join(args)} exited {code}: {err}"
    return orjson.loads(out)


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[FakeNode, FakeNode]]:
    with FakeNetwork().run("alice", "bob") as (alice, bob):
        # Alice and Bob trade invites once for the whole module.
        inv = ok_json(alice.home, "invite", "--name", "Alice")["invite"]
        ok_json(bob.home, "contacts", "add", "alice", inv)
        inv = ok_json(bob.home, "invite", "--name", "Bob")["invite"]
        ok_json(alice.home, "contacts", "add", "bob", inv)
        yield alice, bob


def test_invite_contacts_and_matching_safety_numbers(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    listed = ok_json(alice.home, "contacts", "list")
    assert [(c["name"], c["peer_id"]) for c in listed] == [("bob", bob.peer_id)]
    code, out, _ = p2pm(alice.home, "contacts", "list")
    assert code == 0 and "bob" in out and bob.peer_id in out
    a = ok_json(alice.home, "contacts", "verify", "bob")["safety_number"]
    b = ok_json(bob.home, "contacts", "verify", "alice")["safety_number"]
    assert a == b and len(a.replace(" ", "")) == 60
    assert not listed[0]["verified"]
    assert ok_json(alice.home, "contacts", "verify", "bob", "--confirmed")["verified"]
    assert ok_json(alice.home, "contacts", "list")[0]["verified"]
    # The invite carries the current addresses and the remembered name.
    again = ok_json(alice.home, "invite")
    assert again["name"] == "Alice" and again["addrs"] and again["peer_id"] == alice.peer_id


def test_qr_invite_prints_the_invite_and_a_code(pair: tuple[FakeNode, FakeNode]) -> None:
    code, out, _ = p2pm(pair[0].home, "invite", "--qr")
    assert code == 0
    first, *rest = out.splitlines()
    assert first.startswith("p2pm-node:") and len(rest) > 10


def test_direct_messages_are_delivered_with_receipts(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    sent = ok_json(alice.home, "send", "bob", "hello bob")
    assert sent["state"] in ("pending", "sent", "delivered") and sent["id"]

    def bob_has_it() -> Any:
        return [m for m in ok_json(bob.home, "history", "alice") if m["id"] == sent["id"]]

    (got,) = wait_for(bob_has_it, 15, "bob to receive the message")
    assert got["body"] == "hello bob" and got["author"] == alice.peer_id
    assert got["author_name"] == "alice"
    mine = wait_for(lambda: [m for m in ok_json(alice.home, "history", "bob")
                             if m["id"] == sent["id"] and m["state"] == "delivered"],
                    15, "the delivery receipt")
    assert set(mine[0]) >= {"id", "author", "body", "ts", "state"}
    code, out, _ = p2pm(alice.home, "history", "bob", "--limit", "1")
    assert code == 0 and "me: hello bob" in out and "(delivered)" in out


def test_inbox_lists_unread_until_read(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    ok_json(bob.home, "send", "alice", "are you there?")
    inbox = wait_for(lambda: ok_json(alice.home, "inbox"), 15, "an unread message")
    (conv,) = inbox
    assert conv["unread"] >= 1
    assert conv["messages"][-1]["body"] == "are you there?"
    code, _, _ = p2pm(alice.home, "call", "gateway", "mark_read", '{"conversation": "bob"}')
    assert code == 0
    assert ok_json(alice.home, "inbox") == []


def test_rooms_by_invite_and_by_name(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    room = ok_json(alice.home, "rooms", "create", "friends")
    assert set(room) == {"id", "name", "invite"} and room["name"] == "friends"
    joined = ok_json(bob.home, "rooms", "join", room["invite"])
    assert joined["id"] == room["id"]
    listed = ok_json(bob.home, "rooms", "list")
    assert [(r["id"], r["name"]) for r in listed] == [(room["id"], "friends")]
    posted = ok_json(bob.home, "post", "friends", "hi all")
    assert set(posted) >= {"id", "state"}
    got = wait_for(lambda: ok_json(alice.home, "history", room["id"]), 15, "the room post")
    assert [m["body"] for m in got] == ["hi all"] and got[0]["author_name"] == "bob"


@pytest.mark.parametrize("args, code, words", [
    (("send", "nobody", "hi"), 1, "no contact named 'nobody'"),
    (("post", "nowhere", "hi"), 1, "no conversation, room or contact named 'nowhere'"),
    (("history", "nowhere"), 1, "no conversation, room or contact"),
    (("contacts", "verify", "nobody"), 1, "no contact named"),
    (("send", "bob", "   "), 2, "the message is empty"),
    (("send", "bob", "x" * (MAX_TEXT_BYTES + 1)), 2, f"at most {MAX_TEXT_BYTES} bytes"),
    (("contacts", "add", "eve", "p2pm-node:garbage"), 1, "invalid invite"),
    (("contacts", "add", "eve", "hello"), 2, "nor a peer ID"),
    (("rooms", "join", "p2pm-fake-room:unknown"), 2, "not a valid room invite"),
])
def test_bad_input_is_one_clear_line_and_changes_nothing(
        pair: tuple[FakeNode, FakeNode], args: tuple[str, ...], code: int,
        words: str) -> None:
    alice = pair[0]
    before = (ok_json(alice.home, "contacts", "list"),
              ok_json(alice.home, "call", "gateway", "conversations"))
    got, out, err = p2pm(alice.home, *args)
    assert got == code, err
    assert out == "" and err.count("\n") == 1 and words in err and err.startswith("p2pm: ")
    after = (ok_json(alice.home, "contacts", "list"),
             ok_json(alice.home, "call", "gateway", "conversations"))
    assert after == before


def test_tampered_invite_is_refused_and_no_contact_is_added(
        pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    good = ok_json(bob.home, "invite")["invite"]
    body, sig = good.split(".")
    # One character of the signed payload changed: still base64, no longer Bob's words.
    pos = len("p2pm-node:") + 5
    tampered = body[:pos] + ("A" if body[pos] != "A" else "B") + body[pos + 1:] + "." + sig
    code, _, err = p2pm(alice.home, "contacts", "add", "mallory", tampered)
    assert code == 1 and "invalid invite" in err
    own = ok_json(alice.home, "invite")["invite"]
    code, _, err = p2pm(alice.home, "contacts", "add", "me-again", own)
    assert code == 2 and "own" in err
    assert [c["name"] for c in ok_json(alice.home, "contacts", "list")] == ["bob"]


def test_contact_by_peer_id_alone_is_found_in_the_dht(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    got = ok_json(alice.home, "contacts", "add", "bob", bob.peer_id)
    assert got["peer_id"] == bob.peer_id and got["addrs"] and not got["created"]
    # The same peer under a second name would silently rename a contact: refused.
    code, _, err = p2pm(alice.home, "contacts", "add", "bobby", bob.peer_id)
    assert code == 1 and "already your contact 'bob'" in err
    assert [c["name"] for c in ok_json(alice.home, "contacts", "list")] == ["bob"]


def test_a_node_that_is_down_is_a_clear_error(short_tmp: Any) -> None:
    code, out, err = p2pm(Home(short_tmp), "send", "bob", "hi")
    assert code == 3 and out == ""
    assert err.strip() == f"p2pm: the node in {short_tmp} is not running (p2pm up starts it)"


def test_inbox_shows_only_what_others_wrote(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair
    ok_json(alice.home, "call", "gateway", "mark_read", '{"conversation": "bob"}')
    ok_json(bob.home, "send", "alice", "one")
    wait_for(lambda: ok_json(alice.home, "inbox"), 15, "bob's message")
    ok_json(alice.home, "send", "bob", "my reply")
    ok_json(bob.home, "send", "alice", "two")
    (conv,) = wait_for(lambda: [c for c in ok_json(alice.home, "inbox") if c["unread"] == 2],
                       15, "two unread")
    assert [m["body"] for m in conv["messages"]] == ["one", "two"]


# -- invites that expire -------------------------------------------------------------

DAY = 86400.0
CAROL = nacl.signing.SigningKey(b"\x0c" * 32)
CAROL_ID = identity.peer_id_from_public_key(bytes(CAROL.verify_key))


def _carol_invite(doc: dict[str, Any]) -> str:
    """An invite Carol really signed, with whatever times (and version) it says."""
    payload = orjson.dumps({"peer_id": CAROL_ID, "name": "Carol",
                            "addrs": ["/ip4/127.0.0.1/tcp/9"], **doc})
    signature = identity.sign(CAROL, invites.DOMAIN, payload)
    return invites.PREFIX + ".".join(
        base64.urlsafe_b64encode(b).decode().rstrip("=") for b in (payload, signature))


def test_an_invite_lasts_seven_days_unless_asked_otherwise(
        pair: tuple[FakeNode, FakeNode]) -> None:
    alice = pair[0]
    made = ok_json(alice.home, "invite")
    got = invites.decode(made["invite"])
    assert got.exp - got.ts == 7 * DAY and made["expires"] == got.exp
    assert abs(got.ts - time.time()) < 60
    two_days = ok_json(alice.home, "invite", "--expires", "2d")
    got = invites.decode(two_days["invite"])
    assert got.exp - got.ts == 2 * DAY and two_days["expires"] == got.exp
    code, out, err = p2pm(alice.home, "invite", "--expires", "36h")
    assert code == 0 and invites.decode(out.strip()).exp - invites.decode(out.strip()).ts \
        == 36 * 3600
    assert err.startswith("good until ") and err.strip().endswith("UTC")


@pytest.mark.parametrize("value, words", [
    ("0", "from 1h to 365d, not 0s"), ("30m", "not 30m"), ("400d", "not 400d"),
    ("soon", "'soon' is not a duration"), ("-2d", "not a duration")])
def test_a_bad_expiry_option_is_refused_naming_it(
        pair: tuple[FakeNode, FakeNode], value: str, words: str) -> None:
    for args in (("invite",), ("rooms", "invite", "anything")):
        code, out, err = p2pm(pair[0].home, *args, "--expires", value)
        assert code == 2 and out == "" and err.count("\n") == 1, err
        assert "'--expires'" in err and words in err, err


def test_an_invite_past_its_time_adds_nothing(pair: tuple[FakeNode, FakeNode]) -> None:
    alice = pair[0]
    now = time.time()
    before = ok_json(alice.home, "contacts", "list")
    expired_at = now - DAY
    for text, words in (
            (_carol_invite({"v": 2, "ts": now - 8 * DAY, "exp": expired_at}),
             f"expired on {invites.format_time(expired_at)}; ask for a new one"),
            (_carol_invite({"v": 1, "ts": now - 8 * DAY}),
             f"expired on {invites.format_time(now - DAY)}; ask for a new one"),
            (_carol_invite({"v": 2, "ts": now + 3600, "exp": now + 2 * DAY}),
             "issued in the future")):
        code, out, err = p2pm(alice.home, "contacts", "add", "carol", text)
        assert code == 1 and out == "" and err.count("\n") == 1, err
        assert err.startswith("p2pm: this invite ") and words in err, err
        assert ok_json(alice.home, "contacts", "list") == before
    # The same signer's fresh invites work, of either version.
    for doc in ({"v": 1, "ts": now - 3600}, {"v": 2, "ts": now, "exp": now + 3600}):
        got = ok_json(alice.home, "contacts", "add", "carol", _carol_invite(doc))
        assert got["peer_id"] == CAROL_ID
        ok_json(alice.home, "contacts", "remove", "carol")
    assert ok_json(alice.home, "contacts", "list") == before


def test_the_setting_sets_how_long_invites_last() -> None:
    with FakeNetwork().run("dora") as (dora,):
        dora.stop()
        dora.config["gateway"]["invite_ttl_s"] = 7200.0
        dora.start()
        got = invites.decode(ok_json(dora.home, "invite")["invite"])
        assert got.exp - got.ts == 7200
        # An explicit --expires still wins over the setting.
        got = invites.decode(ok_json(dora.home, "invite", "--expires", "1w")["invite"])
        assert got.exp - got.ts == 7 * DAY
