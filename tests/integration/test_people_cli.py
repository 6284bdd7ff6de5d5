"""Message requests and the everyday commands about people and conversations, as users
give them: real nodes (every actor its own process under supervisord), driven through
the `p2pm` command line and read back from its --json output.

A direct message from someone the recipient has not added waits as a request (the
sender sees "requested") until the recipient accepts it (it is delivered, the sender
sees "delivered") or blocks its sender (later messages are refused); two friends who
add each other and write at the same moment both get through; remove, rename, leave
and read each show in the next listing; a text piped on stdin arrives intact."""

from __future__ import annotations

import os
import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from tests.helpers import Node, wait_for

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]


def ok_json(node: Node, *args: str, **kw: Any) -> Any:
    proc = node.p2pm("--json", *args, timeout=60, **kw)
    assert proc.returncode == 0, f"p2pm {' '.join(args)}: {proc.returncode} {proc.stderr}"
    return orjson.loads(proc.stdout)


def invite(node: Node, name: str) -> str:
    return str(ok_json(node, "invite", "--name", name)["invite"])


def state_of(node: Node, conversation: str, message_id: str) -> str | None:
    for m in ok_json(node, "history", conversation):
        if m["id"] == message_id:
            return str(m["state"])
    return None


def bodies(node: Node, conversation: str) -> list[str]:
    return [m["body"] for m in ok_json(node, "history", conversation)]


def test_a_strangers_message_is_a_request_until_accepted(node_factory: Any) -> None:
    ann, bob = node_factory.many(2, listen=LOOPBACK)
    invite(ann, "Ann")
    # Ann adds Bob; Bob has never heard of Ann.
    ok_json(ann, "contacts", "add", "bob", invite(bob, "Bob"))
    first = ok_json(ann, "send", "bob", "hi Bob, it's Ann from the climbing gym")
    second = ok_json(ann, "send", "bob", "are you coming on Sunday?")

    # Bob is told, with Ann's peer ID and the name from her signed profile.
    (req,) = wait_for(lambda: [r for r in ok_json(bob, "requests")
                               if len(r["messages"]) == 2], 30, "bob's message request")
    assert req["peer_id"] == ann.peer_id and req["name"] == "Ann"
    assert [m["body"] for m in req["messages"]] == [
        "hi Bob, it's Ann from the climbing gym", "are you coming on Sunday?"]
    inbox = ok_json(bob, "inbox")
    assert [(i["kind"], i["peer_id"], i["unread"]) for i in inbox] == [
        ("request", ann.peer_id, 2)]
    out = bob.p2pm("requests").stdout
    assert "~Ann" in out and ann.peer_id in out and "are you coming on Sunday?" in out
    assert ok_json(bob, "contacts", "list") == []

    # Ann's side says it waits for Bob, in history and in message_state.
    for sent in (first, second):
        wait_for(lambda sent=sent: state_of(ann, "bob", sent["id"]) == "requested", 30,
                 "ann's message to show requested")
    assert ok_json(ann, "call", "gateway", "message_state",
                   orjson.dumps({"id": first["id"]}).decode())["members"] == {
        bob.peer_id: "requested"}
    assert "waiting for them to accept" in ann.p2pm("history", "bob").stdout

    # Bob accepts by the short id the list showed: both messages are his, Ann is a
    # contact under her own name, and Ann's messages turn delivered.
    got = ok_json(bob, "requests", "accept", req["id"])
    assert got["peer_id"] == ann.peer_id and got["name"] == "Ann" and got["messages"] == 2
    assert bodies(bob, "Ann") == ["hi Bob, it's Ann from the climbing gym",
                                  "are you coming on Sunday?"]
    assert [c["peer_id"] for c in ok_json(bob, "contacts", "list")] == [ann.peer_id]
    assert ok_json(bob, "requests") == []
    for sent in (first, second):
        wait_for(lambda sent=sent: state_of(ann, "bob", sent["id"]) == "delivered", 30,
                 "ann's message to turn delivered")
    # And the chat goes on both ways.
    reply = ok_json(bob, "send", "Ann", "yes! see you there")
    wait_for(lambda: "yes! see you there" in bodies(ann, "bob"), 30, "bob's reply")
    wait_for(lambda: state_of(bob, "Ann", reply["id"]) == "delivered", 30, "its receipt")


def test_a_blocked_stranger_is_refused(node_factory: Any) -> None:
    bob, eve = node_factory.many(2, listen=LOOPBACK)
    # A right-to-left override: a terminal would show "Totally Bob's Bank", reversed.
    spoof = "Totally \u202eknaB s'boB"
    invite(eve, spoof)
    ok_json(eve, "contacts", "add", "bob", invite(bob, "Bob"))
    ok_json(eve, "send", "bob", "your account is locked, click \u202eereh")
    (req,) = wait_for(lambda: ok_json(bob, "requests"), 30, "eve's request")
    assert req["peer_id"] == eve.peer_id and req["name"] == spoof
    # Printed for a person, her name and text are inert: the override shows as itself.
    for args in (("requests",), ("inbox",)):
        out = bob.p2pm(*args).stdout
        assert "\u202e" not in out and "~Totally \\u202eknaB" in out, out
        assert "click \\u202eereh" in out, out

    blocked = ok_json(bob, "requests", "block", req["id"])
    assert blocked == {"peer_id": eve.peer_id, "blocked": True}
    assert ok_json(bob, "requests") == [] and ok_json(bob, "inbox") == []
    later = ok_json(eve, "send", "bob", "last chance!!")
    # Eve is told (refused), Bob never sees it, and Bob's node counts the refusals.
    wait_for(lambda: state_of(eve, "bob", later["id"]) == "refused", 90,
             "eve's message to show refused")
    assert ok_json(bob, "requests") == [] and ok_json(bob, "inbox") == []
    status = ok_json(bob, "call", "gossip", "sys.status")
    assert status["strangers"]["requests_refused_blocked"] >= 1
    assert status["strangers"]["blocked"] == 1


def test_friends_who_add_each_other_and_write_at_once(node_factory: Any) -> None:
    ann, bob = node_factory.many(2, listen=LOOPBACK)
    ann_inv, bob_inv = invite(ann, "Ann"), invite(bob, "Bob")
    with ThreadPoolExecutor(2) as pool:
        added = pool.map(lambda a: ok_json(*a), [(ann, "contacts", "add", "bob", bob_inv),
                                                 (bob, "contacts", "add", "ann", ann_inv)])
        assert all(a["created"] for a in added)
        sent = list(pool.map(lambda a: ok_json(*a), [(ann, "send", "bob", "hi bob!"),
                                                     (bob, "send", "ann", "hi ann!")]))
    wait_for(lambda: "hi bob!" in bodies(bob, "ann"), 30, "bob receiving")
    wait_for(lambda: "hi ann!" in bodies(ann, "bob"), 30, "ann receiving")
    wait_for(lambda: state_of(ann, "bob", sent[0]["id"]) == "delivered", 30, "ann's receipt")
    wait_for(lambda: state_of(bob, "ann", sent[1]["id"]) == "delivered", 30, "bob's receipt")
    # Contacts: nobody's message was taken for a stranger's.
    assert ok_json(ann, "requests") == [] and ok_json(bob, "requests") == []


def test_remove_rename_leave_read_show_in_the_next_listing(node_factory: Any) -> None:
    ann, bob, cat = node_factory.many(3, listen=LOOPBACK)
    ok_json(ann, "contacts", "add", "bob", invite(bob, "Bob"))
    ok_json(bob, "contacts", "add", "ann", invite(ann, "Ann"))
    invite(cat, "Cat")

    ok_json(bob, "send", "ann", "lunch?")
    wait_for(lambda: [i for i in ok_json(ann, "inbox") if i["name"] == "bob"], 30,
             "bob's message in ann's inbox")
    ok_json(ann, "history", "bob")  # reading the history does not mark it read...
    assert [i["name"] for i in ok_json(ann, "inbox")] == ["bob"]
    ok_json(ann, "read", "bob")  # ...p2pm read does
    assert ok_json(ann, "inbox") == []

    renamed = ok_json(ann, "contacts", "rename", "bob", "Bobby")
    assert renamed == {"name": "Bobby", "peer_id": bob.peer_id, "old_name": "bob"}
    assert [c["name"] for c in ok_json(ann, "contacts", "list")] == ["Bobby"]
    assert bodies(ann, "Bobby") == ["lunch?"]
    proc = ann.p2pm("contacts", "rename", "nobody", "x")
    assert proc.returncode == 1 and "no contact named 'nobody'" in proc.stderr

    # A room: Cat joins Ann's room; Bob's node names her from her signed profile,
    # although she is not his contact.
    room = ok_json(ann, "rooms", "create", "climbing")
    ok_json(bob, "rooms", "join", room["invite"])
    ok_json(cat, "rooms", "join", room["invite"])
    ok_json(cat, "post", "climbing", "hello climbers")
    wait_for(lambda: "hello climbers" in bodies(bob, "climbing"), 30, "cat's post at bob")
    wait_for(lambda: [m for m in ok_json(bob, "history", "climbing")
                      if m["author_name"] == "~Cat"], 30, "cat's name from her profile")
    assert "~Cat: hello climbers" in bob.p2pm("history", "climbing").stdout

    left = ok_json(bob, "rooms", "leave", "climbing")
    assert left["id"] == room["id"] and left["left"]
    assert ok_json(bob, "rooms", "list") == []
    proc = bob.p2pm("post", "climbing", "still here?")
    assert proc.returncode == 1 and "climbing" in proc.stderr
    ok_json(ann, "post", "climbing", "after bob left")
    wait_for(lambda: "after bob left" in bodies(cat, "climbing"), 30, "cat hearing ann")
    assert all(i["name"] != "climbing" for i in ok_json(bob, "inbox"))

    removed = ok_json(ann, "contacts", "remove", "Bobby")
    assert removed["peer_id"] == bob.peer_id
    assert ok_json(ann, "contacts", "list") == []
    assert all(c["kind"] != "direct" for c in ok_json(ann, "call", "gateway",
                                                       "conversations"))
    # What Bob writes now reaches Ann as a request.
    ok_json(bob, "send", "ann", "did you delete me?")
    (req,) = wait_for(lambda: ok_json(ann, "requests"), 30, "bob's request")
    assert req["peer_id"] == bob.peer_id and req["name"] == "Bob"


def test_send_reads_a_multiline_emoji_text_from_stdin(node_factory: Any) -> None:
    ann, bob = node_factory.many(2, listen=LOOPBACK)
    ok_json(ann, "contacts", "add", "bob", invite(bob, "Bob"))
    ok_json(bob, "contacts", "add", "ann", invite(ann, "Ann"))
    # Emoji sequences with joiners and variation selectors go through whole.
    text = ("shopping list 🛒\n- 2 avocados 🥑\n- café au lait ☕\n\tand 日本のお茶 🍵\n"
            "for 👩\u200d👩\u200d👧\u200d👦 and 🧑🏽\u200d💻, flag 🏳\ufe0f\u200d🌈")
    sent = ok_json(ann, "send", "bob", "-", input=text + "\n")
    wait_for(lambda: text in bodies(bob, "ann"), 30, "the piped text at bob")
    assert state_of(ann, "bob", sent["id"]) in ("sent", "delivered")
    room = ok_json(ann, "rooms", "create", "notes")
    ok_json(ann, "post", "notes", "-", input="line one\nline two 🎉\n")
    assert bodies(ann, room["id"]) == ["line one\nline two 🎉"]
    proc = ann.p2pm("send", "bob", "-", input="   \n")
    assert proc.returncode == 2 and "empty" in proc.stderr


def test_a_long_request_is_held_in_part_and_delivered_whole(node_factory: Any) -> None:
    from p2pm.services.gossip.requests import MAX_HELD_PER_SENDER

    ann, bob = node_factory.many(2, listen=LOOPBACK)
    invite(ann, "Ann")
    ok_json(ann, "contacts", "add", "bob", invite(bob, "Bob"))
    texts = [f"message {i} of a long story" for i in range(MAX_HELD_PER_SENDER + 4)]
    sent = [ok_json(ann, "send", "bob", t)["id"] for t in texts]
    # Bob's node keeps only the first ones of a stranger...
    (req,) = wait_for(lambda: [r for r in ok_json(bob, "requests")
                               if len(r["messages"]) == MAX_HELD_PER_SENDER], 60,
                      "bob's request to fill up")
    assert [m["body"] for m in req["messages"]] == texts[:MAX_HELD_PER_SENDER]
    # ...and Ann's side says which wait for Bob and which are not with him yet.
    states = wait_for(lambda: (lambda s: s if s.count("requested") == MAX_HELD_PER_SENDER
                               else None)([state_of(ann, "bob", i) for i in sent]),
                      60, "the held messages to show requested")
    assert set(states[MAX_HELD_PER_SENDER:]) <= {"pending", "sent"}
    # A request survives a crash of the actor that holds it.
    os.kill(bob.pids()["gossip"], signal.SIGKILL)
    def held_after_restart() -> bool:
        proc = bob.p2pm("--json", "requests")  # fails while gossip is starting again
        return proc.returncode == 0 and [m["body"] for r in orjson.loads(proc.stdout)
                                         for m in r["messages"]] == texts[:MAX_HELD_PER_SENDER]

    wait_for(held_after_restart, 60, "the request after a restart")
    # Accepted, every message arrives, in order, and each turns delivered.
    ok_json(bob, "requests", "accept", ann.peer_id, "--name", "ann")
    wait_for(lambda: bodies(bob, "ann") == texts, 60, "the whole story at bob")
    wait_for(lambda: all(state_of(ann, "bob", i) == "delivered" for i in sent), 60,
             "every message delivered")
