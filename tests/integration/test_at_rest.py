"""Sealed at rest, on real nodes: a passphrase-protected node chats in a direct
conversation and a room (both sides writing, so it holds messages it sent and ones it
received); then no file under its home (node.db, WAL, shared memory, every log)
contains any of the texts or any conversation secret, while it runs and after it is
stopped, and its history still shows every text."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

from tests.helpers import wait_for
from tests.integration.test_text_cli import bodies, ok_json

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
PASSPHRASE = "correct horse battery staple — sealed"
DM_TO_BOB = "Сообщение ✉️ для Боба: 秘密のメッセージ 🔐 dm-marker-51c7"
DM_TO_ALICE = "رسالة سرية لأليس 👩‍🔬 ‏שלום dm-marker-8e02"
ROOM_BY_ALICE = "Ελληνικά και हिन्दी 🧪🏳️‍🌈 room-marker-3a9d"
ROOM_BY_BOB = "한국어로 답장 🐉 ℤ∑∞ room-marker-d41b"
TEXTS = [DM_TO_BOB, DM_TO_ALICE, ROOM_BY_ALICE, ROOM_BY_BOB]


def files_under(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def leaks(root: Path, secrets: list[bytes]) -> list[str]:
    found = []
    for path, blob in files_under(root).items():
        for text in TEXTS:
            if text.encode() in blob:
                found.append(f"{path.relative_to(root)}: text {text[-15:]!r}")
        for secret in secrets:
            for form in (secret, base64.b64encode(secret), base64.urlsafe_b64encode(secret),
                         secret.hex().encode()):
                if form in blob:
                    found.append(f"{path.relative_to(root)}: a conversation secret")
    return found


def test_a_protected_node_keeps_no_text_or_key_in_clear(node_factory: Any) -> None:
    alice = node_factory(passphrase=PASSPHRASE, listen=LOOPBACK)
    bob = node_factory(listen=LOOPBACK)
    ok_json(bob, "contacts", "add", "alice", ok_json(alice, "invite")["invite"])
    ok_json(alice, "contacts", "add", "bob", ok_json(bob, "invite")["invite"])
    ok_json(bob, "history", "alice")

    ok_json(alice, "send", "bob", DM_TO_BOB)
    wait_for(lambda: DM_TO_BOB in bodies(bob, "alice"), 30, "bob receiving alice's DM")
    ok_json(bob, "send", "alice", DM_TO_ALICE)
    wait_for(lambda: DM_TO_ALICE in bodies(alice, "bob"), 30, "alice receiving bob's DM")

    room = ok_json(alice, "rooms", "create", "vault")
    ok_json(bob, "rooms", "join", room["invite"])
    ok_json(alice, "post", "vault", ROOM_BY_ALICE)
    wait_for(lambda: ROOM_BY_ALICE in bodies(bob, room["id"]), 30, "bob seeing the room post")
    ok_json(bob, "post", "vault", ROOM_BY_BOB)
    wait_for(lambda: ROOM_BY_BOB in bodies(alice, room["id"]), 30, "alice seeing bob's post")

    conversations = alice.call("storage", "conversation_list")["conversations"]
    assert {c["kind"] for c in conversations} == {"direct", "room"}
    secrets = [base64.b64decode(alice.call("storage", "conversation_get",
                                           {"id": c["id"]})["secret"])
               for c in conversations]
    assert all(len(s) >= 16 for s in secrets)

    # The scan finds what is there: the identity file holds its peer ID in clear.
    assert alice.peer_id.encode() in files_under(alice.home.root)[alice.home.identity_file]
    assert leaks(alice.home.root, secrets) == []
    assert sorted(bodies(alice, "bob") + bodies(alice, room["id"])) == sorted(TEXTS)
    # Bob's identity has no passphrase: his node seals all the same (under a key his
    # identity file alone gives, so it protects nothing against a copy of his home).
    assert leaks(bob.home.root, secrets) == []

    alice.p2pm("down", "--timeout", "20", check=True)
    assert (alice.home.data / "node.db").stat().st_size > 0
    assert leaks(alice.home.root, secrets) == []
