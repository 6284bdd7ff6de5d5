"""The chat commands against two real nodes (every actor its own process under
supervisord): invites, contacts, safety numbers, a direct chat with receipts, a room,
the inbox, parsed from --json; commands that keep working while an actor restarts;
clear errors for bad input and for a node that is down."""

from __future__ import annotations

import base64
import os
import signal
import time
from typing import Any

import nacl.signing
import orjson

from p2pm.common import identity
from p2pm.services.gossip import conversations as cv
from tests.helpers import Node, wait_for

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def ok_json(node: Node, *args: str) -> Any:
    proc = node.p2pm("--json", *args, timeout=60)
    assert proc.returncode == 0, f"p2pm {' '.join(args)}: {proc.returncode} {proc.stderr}"
    return orjson.loads(proc.stdout)


def has_message(node: Node, conversation: str, body: str) -> bool:
    return any(m["body"] == body for m in ok_json(node, "history", conversation))


def state_of(node: Node, conversation: str, message_id: str) -> str | None:
    for m in ok_json(node, "history", conversation):
        if m["id"] == message_id:
            return str(m["state"])
    return None


def room_invite_of(prefix: str, doc: dict[str, Any]) -> str:
    """A room invite really signed by its (made-up) inviter, saying what `doc` says."""
    key = nacl.signing.SigningKey(b"\x05" * 32)
    secret = cv.new_room_secret()
    doc = {"v": 2, "id": cv.Keys.derive("room", secret).id, "name": "old",
           "secret": base64.b64encode(secret).decode(), "addrs": [],
           "peer": identity.peer_id_from_public_key(bytes(key.verify_key)), **doc}
    payload = orjson.dumps({k: v for k, v in doc.items() if v is not None},
                           option=orjson.OPT_SORT_KEYS)
    signature = identity.sign(key, cv.INVITE_DOMAIN, payload)
    return prefix + ".".join(base64.urlsafe_b64encode(b).decode().rstrip("=")
                             for b in (payload, signature))


def test_two_nodes_chat_through_the_cli(node_factory: Any) -> None:
    alice, bob = node_factory.many(2, listen=LOOPBACK)
    inv = ok_json(alice, "invite", "--name", "alice")
    assert set(inv) >= {"invite"} and inv["invite"].startswith("p2pm-node:")
    ok_json(bob, "contacts", "add", "alice", inv["invite"])
    ok_json(alice, "contacts", "add", "bob", ok_json(bob, "invite")["invite"])
    assert [c["peer_id"] for c in ok_json(bob, "contacts", "list")] == [alice.peer_id]
    assert ok_json(alice, "contacts", "verify", "bob")["safety_number"] == \
        ok_json(bob, "contacts", "verify", "alice")["safety_number"]

    ok_json(bob, "history", "alice")  # bob opens the chat on his side too
    sent = ok_json(alice, "send", "bob", "hello over libp2p")
    assert set(sent) >= {"id", "state"}
    wait_for(lambda: has_message(bob, "alice", "hello over libp2p"), 30, "bob receiving")
    wait_for(lambda: state_of(alice, "bob", sent["id"]) == "delivered", 30, "the receipt")
    (unread,) = ok_json(bob, "inbox")
    assert unread["messages"][-1]["body"] == "hello over libp2p"

    room = ok_json(alice, "rooms", "create", "lab")
    assert set(room) == {"id", "name", "invite"}
    assert ok_json(bob, "rooms", "join", room["invite"])["id"] == room["id"]
    assert [r["name"] for r in ok_json(bob, "rooms", "list")] == ["lab"]
    posted = ok_json(bob, "post", "lab", "hi lab")
    assert set(posted) >= {"id", "state"}
    wait_for(lambda: has_message(alice, room["id"], "hi lab"), 30, "alice seeing the post")
    # A room invite lasts 7 days, or what --expires asks.
    default = cv.decode_invite(room["invite"], now=time.time())
    assert default.exp - default.ts == 7 * 86400
    hour = cv.decode_invite(ok_json(alice, "rooms", "invite", "lab", "--expires", "1h")[
        "invite"], now=time.time())
    assert (hour.id, hour.exp - hour.ts) == (room["id"], 3600)
    history = ok_json(alice, "history", "lab", "--limit", "5")
    assert [m["body"] for m in history] == ["hi lab"]
    assert set(history[0]) >= {"id", "author", "body", "ts", "state"}
    assert history[0]["author"] == bob.peer_id

    # Commands made while an actor restarts wait for it instead of failing.
    for actor in ("gateway", "gossip"):
        os.kill(bob.pids()[actor], signal.SIGKILL)
        again = ok_json(bob, "post", "lab", f"after {actor} restart")
        assert again["id"]
        wait_for(lambda actor=actor: has_message(alice, "lab", f"after {actor} restart"),
                 30, f"the post made while bob's {actor} restarted")

    # Bad input: one line, a non-zero exit, nothing changed.
    before = ok_json(alice, "call", "gateway", "conversations")
    for args, code, words in (
            (("send", "nobody", "hi"), 1, "no contact named 'nobody'"),
            (("send", "bob", ""), 2, "the message is empty"),
            (("post", "lab", "x" * 20000), 2, "at most"),
            (("contacts", "add", "eve", inv["invite"][:-6] + "AAAAAA"), 1, "invalid invite"),
            (("rooms", "join", "p2pm-invite1:broken"), 1, "invalid invite"),
            (("rooms", "join", room_invite_of("p2pm-invite2:", {
                "ts": time.time() - 8 * 86400, "exp": time.time() - 86400})), 1,
             "this room invite expired on"),
            (("rooms", "join", room_invite_of("p2pm-invite1:", {"v": 1})), 1,
             "comes from an older p2pm (invite version 1), which this one no longer "
             "accepts; ask for a new invite"),
            (("rooms", "invite", "lab", "--expires", "20m"), 2, "'--expires'")):
        proc = alice.p2pm(*args)
        assert proc.returncode == code and words in proc.stderr, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert ok_json(alice, "call", "gateway", "conversations") == before
    assert [c["name"] for c in ok_json(alice, "contacts", "list")] == ["bob"]

    # A node that is down: a clear error, quickly, and exit 3.
    bob.p2pm("down", check=True)
    proc = bob.p2pm("send", "alice", "anyone?")
    assert proc.returncode == 3
    assert proc.stderr.strip() == f"p2pm: the node in {bob.root} is not running " \
                                  "(p2pm up starts it)"
