"""The storage actor: schema migrations, message rules, paging, sync ranges, outbox,
validation and write failures. Methods are called directly after setup() and
open_sealed() (the keystore is a fake handing out KEY); the tests that need the bus
(parameter binding, events, liveness) run the actor in-process. Sealing at rest itself
is tested in test_storage_sealing.py."""

from __future__ import annotations

import shutil
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
import zmq

from p2pm.common import errors, wire
from p2pm.common.actor import ActorRuntime
from p2pm.common.client import Client, open_client
from p2pm.common.clients import KeystoreClient, fake
from p2pm.common.home import Endpoints, Home
from p2pm.common.zmqtrio import AsyncSocket
from p2pm.services.storage import schema
from p2pm.services.storage.actor import Storage
from p2pm.services.storage.store import Message, Store
from tests.helpers import make_home

SECRET = bytes(range(32))
KEY = bytes(range(100, 132))  # the at-rest key the fake keystore hands out
ALICE, BOB, CAROL = "12D3KooWAlice", "12D3KooWBob", "12D3KooWCarol"
ROOM_PARAMS = {"id": "room1", "kind": "room", "secret": wire.b64e(SECRET), "members": [ALICE]}


@pytest.fixture
def home() -> Any:
    h = make_home()
    try:
        yield h
    finally:
        shutil.rmtree(h.root, ignore_errors=True)


def run(fn: Callable[[Storage], Awaitable[None]], home: Home,
        config: dict[str, Any] | None = None) -> None:
    """Run `fn` against a set-up actor, called directly (no bus)."""

    async def main() -> None:
        actor = Storage(home, config or {})
        actor.keystore = fake(KeystoreClient, subkey=KEY)
        await actor.setup()
        await actor.open_sealed()
        try:
            await fn(actor)
        finally:
            await actor.teardown()

    trio.run(main)


@asynccontextmanager
async def on_bus(home: Home) -> AsyncIterator[tuple[Storage, Client, Endpoints]]:
    endpoints = Endpoints.inproc(f"storage-{uuid.uuid4().hex[:8]}")
    actor = Storage(home, {})
    actor.keystore = fake(KeystoreClient, subkey=KEY)
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(actor, endpoints).serve)
        with trio.fail_after(5):
            while actor.store is None:
                await trio.sleep(0.01)
        async with open_client(zmq.Context.instance(), endpoints.rpc("storage"),
                               "storage") as client:
            yield actor, client, endpoints
        nursery.cancel_scope.cancel()


async def code_of(call: Awaitable[Any]) -> str:
    with pytest.raises(errors.BusError) as info:
        await call
    return info.value.code


async def room(actor: Storage, cid: str = "room1") -> None:
    await actor.conversation_put(cid, "room", SECRET, [ALICE, BOB, CAROL], name="friends")


async def put(actor: Storage, author: str, seq: int, ts: float | None = None,
              cid: str = "room1", mid: str | None = None, body: bytes = b"env",
              state: str = "received") -> dict[str, Any]:
    return await actor.message_put(mid or f"{author}-{seq}", cid, author, seq,
                                   float(seq) if ts is None else ts, body, state)


# -- schema -------------------------------------------------------------------------


def test_fresh_database_gets_latest_schema_and_pragmas(home: Home) -> None:
    async def check(actor: Storage) -> None:
        conn = actor.store.conn
        assert schema.version(conn) == schema.LATEST == actor.status()["schema_version"]
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master "
                                             "WHERE type = 'table'")}
        assert {"kv", "contacts", "conversations", "messages", "outbox"} <= tables
        assert actor.status() == {"db": str(home.data / "node.db"),
                                  "schema_version": schema.LATEST, "messages": 0,
                                  "writes": 0, "commits": 0}

    run(check, home)


def test_synchronous_comes_from_config_and_bad_value_refuses_to_start(home: Home) -> None:
    async def check(actor: Storage) -> None:
        assert actor.store.conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL

    run(check, home, {"storage": {"synchronous": "normal"}})

    async def bad() -> None:
        with pytest.raises(ValueError, match="storage.synchronous: must be one of"):
            Storage(home, {"storage": {"synchronous": "SOMETIMES"}})

    trio.run(bad)


def older_database(home: Home, steps: int, messages: int) -> Path:
    """node.db as a p2pm of schema version `steps` left it: conversation 'c' with
    messages m1..m<messages> of author 'a', in clear."""
    home.data.mkdir(parents=True)
    path = home.data / "node.db"
    conn = sqlite3.connect(path, isolation_level=None)
    assert schema.migrate(conn, schema.MIGRATIONS[:steps]) == (0, steps)
    conn.execute("INSERT INTO conversations(id, kind, secret, created_at) "
                 "VALUES ('c', 'room', x'00', 1)")
    for seq in range(1, messages + 1):
        conn.execute("INSERT INTO messages VALUES (?, 'c', 'a', ?, 5.0, x'01', 'sent', 6)",
                     (f"m{seq}", seq))
    conn.close()
    return path


def test_upgrade_from_v1_keeps_data_and_adds_later_tables(home: Home) -> None:
    path = older_database(home, 1, 1)

    store = Store.open(path, "FULL", KEY)
    try:
        assert store.migrated_from == 1
        assert store.schema_version() == schema.LATEST
        assert store.message_get("m1").body == b"\x01"
        assert store.outbox_add("m1", [BOB], 1.0, 1.0) == 1
    finally:
        store.close()


def test_upgrade_to_kept_message_count_counts_what_is_stored(home: Home) -> None:
    # A database of the schema before the kept count (v3), messages already in it.
    path = older_database(home, 3, 3)

    store = Store.open(path, "FULL", KEY)
    try:
        assert store.migrated_from == 3 and store.schema_version() == schema.LATEST
        assert store.message_count() == 3
        store.message_put(Message("m4", "c", "a", 4, 6.0, b"x", "sent", 7.0))
        assert store.message_count() == 4
        # A cascade (the conversation's rows going with it) is counted too.
        store.conn.execute("DELETE FROM conversations WHERE id = 'c'")
        assert store.message_count() == 0
    finally:
        store.close()


def test_newer_schema_is_refused_untouched(home: Home) -> None:
    home.data.mkdir(parents=True)
    path = home.data / "node.db"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.close()
    with pytest.raises(schema.SchemaError, match="newer"):
        Store.open(path, "FULL", KEY)
    conn = sqlite3.connect(path)
    assert schema.version(conn) == schema.LATEST + 1
    assert conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()[0] == 0
    conn.close()


def test_failing_migration_step_rolls_back_every_step_and_the_version(home: Home) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    schema.migrate(conn, schema.MIGRATIONS[:1])
    broken = [*schema.MIGRATIONS, schema.Migration("broken", (
        "CREATE TABLE extra (x)", "THIS IS NOT SQL"))]
    with pytest.raises(sqlite3.OperationalError):
        schema.migrate(conn, broken)
    assert schema.version(conn) == 1
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
    assert "outbox" not in names and "extra" not in names
    # An appended step applies on top of the current schema, and only it.
    extended = [*schema.MIGRATIONS, schema.Migration("extra", ("CREATE TABLE extra (x)",))]
    assert schema.migrate(conn, extended) == (1, schema.LATEST + 1)
    assert schema.migrate(conn, extended) == (schema.LATEST + 1, schema.LATEST + 1)


# -- messages -----------------------------------------------------------------------


def test_duplicate_message_put_is_harmless(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        assert await put(actor, ALICE, 1, state="sent") == {"stored": True}
        # The same message echoed back by gossip: nothing changes, not even its state.
        assert await put(actor, ALICE, 1, state="received") == {"stored": False}
        got = await actor.message_get(f"{ALICE}-1")
        assert got["state"] == "sent" and got["body"] == b"env" and got["seq"] == 1
        assert actor.status()["messages"] == 1
        assert actor.store.message_count() == 1

    run(check, home)


def test_conflicting_messages_are_refused_and_change_nothing(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        await put(actor, ALICE, 1)
        # Same author and seq under another id: an equivocating or buggy author.
        assert await code_of(put(actor, ALICE, 1, mid="other")) == errors.CONFLICT
        # Same id with another body.
        assert await code_of(put(actor, ALICE, 1, body=b"forged")) == errors.CONFLICT
        assert await code_of(actor.message_get("other")) == errors.NOT_FOUND
        assert (await actor.message_get(f"{ALICE}-1"))["body"] == b"env"
        # A message for a conversation we do not have.
        assert await code_of(put(actor, ALICE, 2, cid="nowhere")) == errors.NOT_FOUND
        assert actor.store.message_count() == 1 == actor.status()["messages"]

    run(check, home)


def test_history_pages_newest_first_oldest_first_within_a_page(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        await room(actor, "other")
        # Two messages share a timestamp: the id breaks the tie, so paging never
        # skips or repeats one.
        stamps = {1: 10.0, 2: 20.0, 3: 30.0, 4: 30.0, 5: 40.0, 6: 50.0, 7: 60.0}
        for seq, ts in reversed(stamps.items()):
            await put(actor, BOB, seq, ts)
        await put(actor, BOB, 1, 99.0, cid="other", mid="elsewhere")

        pages, before = [], None
        while True:
            page = await actor.history("room1", before=before, limit=3)
            pages.append([m["seq"] for m in page["messages"]])
            before = page["before"]
            if before is None:
                break
        assert pages == [[5, 6, 7], [2, 3, 4], [1]]

        older = await actor.history("room1", before_ts=30.0, limit=10)
        assert [m["seq"] for m in older["messages"]] == [1, 2]
        assert older["before"] is None
        everything = await actor.history("room1", limit=7)
        assert len(everything["messages"]) == 7 and everything["before"] is None
        assert await code_of(actor.history("nowhere")) == errors.NOT_FOUND

    run(check, home)


def test_author_ranges_report_gaps_per_author(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        assert await actor.author_ranges("room1") == {"authors": {}}
        for seq in (9, 1, 2, 3, 5, 6):
            await put(actor, ALICE, seq)
        for seq in (2, 3):
            await put(actor, BOB, seq)
        await put(actor, CAROL, 1)
        ranges = (await actor.author_ranges("room1"))["authors"]
        assert ranges == {
            ALICE: {"contiguous": 3, "max_seq": 9, "count": 6,
                    "ranges": [[1, 3], [5, 6], [9, 9]]},
            BOB: {"contiguous": 0, "max_seq": 3, "count": 2, "ranges": [[2, 3]]},
            CAROL: {"contiguous": 1, "max_seq": 1, "count": 1, "ranges": [[1, 1]]},
        }

    run(check, home)


def test_unread_counts_what_others_wrote_after_the_read_mark(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        for seq in range(1, 8):
            await put(actor, BOB, seq)  # ts = seq
        await put(actor, ALICE, 1, ts=7.5, state="sent")  # ours: never unread

        async def counts(marks: dict[str, Any], limit: int = 1000) -> dict[str, int]:
            return (await actor.unread_counts(marks, limit))["counts"]

        assert await counts({"room1": 0.0}) == {"room1": 7}
        assert await counts({"room1": 4.0}) == {"room1": 3}
        assert await counts({"room1": 4.0}, limit=2) == {"room1": 2}
        assert await counts({"room1": 7}) == {"room1": 0}
        # one not stored (left since, say) is left out, not an error for the others
        assert await counts({"room1": 4.0, "nope": 0.0}) == {"room1": 3}
        assert await counts({}) == {}
        for bad in ({"room1": -1.0}, {"": 0.0}, {"room1": float("nan")}):
            assert await code_of(actor.unread_counts(bad)) == errors.BAD_PARAMS, bad
        assert await code_of(actor.unread_counts({"room1": 0.0}, 0)) == errors.BAD_PARAMS

    run(check, home)


def test_unread_counts_refuses_marks_that_are_not_times_at_the_boundary(home: Home) -> None:
    # What a local client sends: each mark is checked as a number, as any param is.
    async def main() -> None:
        async with on_bus(home) as (actor, client, _):
            await client.call("conversation_put", ROOM_PARAMS)
            for bad in ({"room1": "yesterday"}, {"room1": True}, {"room1": None},
                        {"room1": [1.0]}, ["room1"]):
                assert await code_of(client.call("unread_counts", {"marks": bad})) \
                    == errors.BAD_PARAMS, bad
            # a client asking for more conversations than any node holds is refused whole
            flood = {f"c{i}": 0.0 for i in range(10_001)}
            assert await code_of(client.call("unread_counts", {"marks": flood})) \
                == errors.BAD_PARAMS
            got = await client.call("unread_counts", {"marks": {ROOM_PARAMS["id"]: 0}})
            assert got == {"counts": {ROOM_PARAMS["id"]: 0}}

    trio.run(main)


def test_messages_by_author_range_and_limit(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        for seq in (1, 2, 4, 5, 6):
            await put(actor, ALICE, seq)
        await put(actor, BOB, 3)
        got = await actor.messages_by_author("room1", ALICE, from_seq=2, to_seq=5)
        assert [m["seq"] for m in got["messages"]] == [2, 4, 5] and got["more"] is False
        got = await actor.messages_by_author("room1", ALICE, from_seq=2, limit=2)
        assert [m["seq"] for m in got["messages"]] == [2, 4] and got["more"] is True
        assert await code_of(actor.messages_by_author(
            "room1", ALICE, from_seq=5, to_seq=4)) == errors.BAD_PARAMS

    run(check, home)


def test_message_state_moves_forward_only(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        await put(actor, ALICE, 1, state="pending")
        mid = f"{ALICE}-1"
        assert await actor.message_set_state(mid, "delivered") == {
            "changed": True, "state": "delivered"}
        # A late "sent" acknowledgement does not undo "delivered".
        assert await actor.message_set_state(mid, "sent") == {
            "changed": False, "state": "delivered"}
        assert await code_of(actor.message_set_state(mid, "received")) == errors.CONFLICT
        assert await code_of(actor.message_set_state("nope", "sent")) == errors.NOT_FOUND
        assert (await actor.message_get(mid))["state"] == "delivered"

    run(check, home)


# -- conversations, contacts, kv ----------------------------------------------------


def test_conversations_update_members_but_never_kind_or_secret(home: Home) -> None:
    async def check(actor: Storage) -> None:
        assert await actor.conversation_put("d1", "direct", SECRET, [ALICE, BOB]) == {
            "created": True, "changed": True}
        assert await actor.conversation_put("d1", "direct", SECRET, [BOB, ALICE]) == {
            "created": False, "changed": False}
        assert await code_of(actor.conversation_put(
            "d1", "direct", bytes(32), [ALICE, BOB])) == errors.CONFLICT
        await room(actor)
        assert (await actor.conversation_put("room1", "room", SECRET, [ALICE, CAROL],
                                             name="renamed"))["changed"] is True
        got = await actor.conversation_get("room1")
        assert got["members"] == [ALICE, CAROL] and got["name"] == "renamed"
        assert got["secret"] == SECRET
        with_bob = (await actor.conversation_list(member=BOB))["conversations"]
        assert [c["id"] for c in with_bob] == ["d1"]
        assert "secret" not in with_bob[0]
        assert await code_of(actor.conversation_put(
            "d2", "direct", SECRET, [ALICE, BOB, CAROL])) == errors.BAD_PARAMS

    run(check, home)


def test_contacts(home: Home) -> None:
    async def check(actor: Storage) -> None:
        assert await actor.contact_add("alice", ALICE, ["/ip4/10.0.0.1/tcp/4001"]) == {
            "created": True}
        assert await actor.contact_add("alice", ALICE, [], verified=True) == {
            "created": False}
        assert await code_of(actor.contact_add("alice", BOB)) == errors.CONFLICT
        await actor.contact_add("bob", BOB)
        got = await actor.contact_get(peer_id=ALICE)
        assert (got["name"], got["addrs"], got["verified"]) == ("alice", [], True)
        assert [c["name"] for c in (await actor.contact_list())["contacts"]] == [
            "alice", "bob"]
        assert await code_of(actor.contact_get()) == errors.BAD_PARAMS
        assert await actor.contact_remove(name="alice") == {"removed": True}
        assert await actor.contact_remove(name="alice") == {"removed": False}
        assert await code_of(actor.contact_get(name="alice")) == errors.NOT_FOUND

    run(check, home)


def test_kv(home: Home) -> None:
    async def check(actor: Storage) -> None:
        assert await code_of(actor.kv_get("dht.table")) == errors.NOT_FOUND
        await actor.kv_put("dht.table", b"\x00snapshot")
        await actor.kv_put("dht.table", b"newer")
        assert (await actor.kv_get("dht.table"))["value"] == b"newer"
        assert await actor.kv_delete("dht.table") == {"deleted": True}
        assert await actor.kv_delete("dht.table") == {"deleted": False}

    run(check, home)


# -- outbox -------------------------------------------------------------------------


def test_outbox_retries_until_done_or_given_up(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        await put(actor, ALICE, 1, state="pending")
        mid = f"{ALICE}-1"
        assert await actor.outbox_add(mid, [BOB, CAROL], next_attempt_at=100.0) == {
            "added": 2}
        assert await actor.outbox_add(mid, [BOB], next_attempt_at=5.0) == {"added": 0}
        assert (await actor.outbox_due(now=99.0))["entries"] == []
        due = (await actor.outbox_due(now=100.0))["entries"]
        assert [e["recipient"] for e in due] == [BOB, CAROL]

        entry = await actor.outbox_failed(mid, BOB, "dial timeout", next_attempt_at=130.0)
        assert (entry["attempts"], entry["state"], entry["last_error"]) == (
            1, "pending", "dial timeout")
        assert [e["recipient"] for e in (await actor.outbox_due(now=120.0))["entries"]] == [
            CAROL]
        assert await actor.outbox_done(mid, CAROL) == {"done": True}
        assert await actor.outbox_done(mid, CAROL) == {"done": False}
        gave_up = await actor.outbox_failed(mid, BOB, "no route", next_attempt_at=None)
        assert (gave_up["attempts"], gave_up["state"]) == (2, "failed")
        assert (await actor.outbox_due(now=1e12))["entries"] == []
        states = {e["recipient"]: e["state"] for e in (await actor.outbox_get(mid))["entries"]}
        assert states == {BOB: "failed", CAROL: "done"}
        assert await code_of(actor.outbox_add("nope", [BOB])) == errors.NOT_FOUND
        assert await code_of(actor.outbox_done(mid, "nobody")) == errors.NOT_FOUND

    run(check, home)


def test_outbox_due_pages_through_every_entry_once(home: Home) -> None:
    """More pending deliveries than one call returns: `after` (the last entry of a
    page) continues with the next, in the same order, each entry exactly once."""
    async def check(actor: Storage) -> None:
        await room(actor)
        for seq in range(1, 6):
            await put(actor, ALICE, seq, state="sent")
            # Two entries share a time, so the cursor must also order by message id.
            await actor.outbox_add(f"{ALICE}-{seq}", [BOB, CAROL],
                                   next_attempt_at=float(100 + seq // 2))
        whole = (await actor.outbox_due(now=1e9, limit=1000))["entries"]
        assert len(whole) == 10
        paged = []
        after = None
        for _ in range(5):
            page = (await actor.outbox_due(now=1e9, limit=3, after=after))["entries"]
            paged += page
            if len(page) < 3:
                break
            after = {k: page[-1][k] for k in ("next_attempt_at", "message_id", "recipient")}
        assert paged == whole
        for bad in ({"message_id": f"{ALICE}-1", "recipient": BOB},
                    {"next_attempt_at": "soon", "message_id": f"{ALICE}-1", "recipient": BOB},
                    {"next_attempt_at": 100.0, "message_id": 7, "recipient": BOB},
                    {"next_attempt_at": -1.0, "message_id": f"{ALICE}-1", "recipient": BOB}):
            assert await code_of(actor.outbox_due(now=1e9, after=bad)) == errors.BAD_PARAMS

    run(check, home)


def test_unqueued_lists_own_messages_no_delivery_was_ever_queued_for(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        for seq, state in enumerate(("sent", "pending", "delivered", "sent", "sent"), 1):
            await put(actor, ALICE, seq, state=state)
        await put(actor, BOB, 1)
        await actor.outbox_add(f"{ALICE}-4", [BOB])  # queued once: not listed
        got = await actor.messages_unqueued("room1", ALICE, limit=1)
        assert ([m["id"] for m in got["messages"]], got["more"]) == ([f"{ALICE}-1"], True)
        got = await actor.messages_unqueued("room1", ALICE, from_seq=2)
        assert ([m["id"] for m in got["messages"]], got["more"]) == (
            [f"{ALICE}-2", f"{ALICE}-5"], False)
        assert (await actor.messages_unqueued("room1", BOB))["messages"] == []
        assert await code_of(actor.messages_unqueued("nope", ALICE)) == errors.NOT_FOUND
        assert await code_of(actor.messages_unqueued("room1", ALICE, from_seq=0)) == \
            errors.BAD_PARAMS

    run(check, home)


# -- the bus: validation, events, failures ------------------------------------------


def test_bad_params_are_refused_and_change_nothing(home: Home) -> None:
    ok = {"id": "m1", "conversation": "room1", "author": ALICE, "seq": 1, "ts": 1.0,
          "body": wire.b64e(b"env"), "state": "received"}
    bad = [
        {**ok, "seq": 0}, {**ok, "seq": "1"}, {**ok, "seq": True}, {**ok, "ts": -1.0},
        {**ok, "state": "read"}, {**ok, "body": "not base64!"}, {**ok, "id": ""},
        {**ok, "id": "x" * 200}, {**ok, "author": "has space"},
        {**ok, "body": wire.b64e(b"x" * (1024 * 1024 + 1))}, {**ok, "extra": 1},
        {k: v for k, v in ok.items() if k != "body"},
    ]

    async def main() -> None:
        async with on_bus(home) as (actor, client, _):
            await client.call("conversation_put", ROOM_PARAMS)
            for params in bad:
                assert await code_of(client.call("message_put", params)) == errors.BAD_PARAMS
            for params in ({"key": "k", "value": wire.b64e(b"v" * (1024 * 1024 + 1))},
                           {"key": "", "value": ""}):
                assert await code_of(client.call("kv_put", params)) == errors.BAD_PARAMS
            assert await code_of(client.call("conversation_put", {
                **ROOM_PARAMS, "id": "c2", "kind": "group"})) == errors.BAD_PARAMS
            assert await code_of(client.call("history", {
                "conversation": "room1", "before": "garbage"})) == errors.BAD_PARAMS
            assert await code_of(client.call("history", {
                "conversation": "room1", "limit": 0})) == errors.BAD_PARAMS
            assert (await client.call("history", {"conversation": "room1"}))["messages"] == []
            assert (await client.call("sys.status"))["messages"] == 0
            assert await client.call("message_put", ok) == {"stored": True}

    trio.run(main)


def test_events_follow_commits(home: Home) -> None:
    async def main() -> None:
        async with on_bus(home) as (actor, client, endpoints):
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"storage.message.")
            sub.connect(endpoints.events("storage"))
            events = AsyncSocket(sub)
            try:
                await client.call("conversation_put", ROOM_PARAMS)
                params = {"id": "m1", "conversation": "room1", "author": ALICE, "seq": 1,
                          "ts": 1.0, "body": wire.b64e(b"env"), "state": "pending"}
                # inproc SUB joins at once, but give the subscription a moment to land.
                with trio.fail_after(5):
                    while True:
                        await client.call("message_put", params)
                        with trio.move_on_after(0.05):
                            topic, payload = await events.recv_multipart()
                            break
                        params = {**params, "id": params["id"] + "x",
                                  "seq": params["seq"] + 1}
                assert topic == b"storage.message.stored"
                data = wire.loads(payload)["data"]
                assert data == {"id": params["id"], "conversation": "room1",
                                "author": ALICE, "seq": params["seq"]}
                # A duplicate publishes nothing; a state change does.
                await client.call("message_put", params)
                await client.call("message_set_state", {"id": params["id"],
                                                        "state": "sent"})
                with trio.fail_after(5):
                    topic, payload = await events.recv_multipart()
                assert topic == b"storage.message.state"
                assert wire.loads(payload)["data"] == {"id": params["id"], "state": "sent"}
            finally:
                events.close(linger_ms=0)

    trio.run(main)


def test_read_only_database_gives_storage_error_and_actor_keeps_answering(
        home: Home) -> None:
    async def main() -> None:
        async with on_bus(home) as (actor, client, _):
            await client.call("kv_put", {"key": "k", "value": wire.b64e(b"before")})
            path = actor.store.path
            actor.store.close()
            ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None,
                                 check_same_thread=False)
            actor.store = Store(ro, path, sealer=actor.store.sealer)
            with pytest.raises(errors.BusError) as info:
                await client.call("kv_put", {"key": "k", "value": wire.b64e(b"after")})
            assert info.value.code == errors.STORAGE
            assert "readonly" in info.value.message
            assert (await client.call("sys.ping"))["pong"] is True
            got = await client.call("kv_get", {"key": "k"})
            assert wire.b64d(got["value"]) == b"before"

    trio.run(main)


def test_full_disk_leaves_no_partial_write(home: Home) -> None:
    async def check(actor: Storage) -> None:
        conn = actor.store.conn
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages}")
        # The conversation row fits; its thousand member rows do not.
        members = [f"12D3KooWPeer{i:04d}" + "x" * 100 for i in range(1000)]
        err = await code_of(actor.conversation_put("big", "room", SECRET, members))
        assert err == errors.STORAGE
        assert await code_of(actor.conversation_get("big")) == errors.NOT_FOUND
        conn.execute("PRAGMA max_page_count = 1073741823")
        assert (await actor.conversation_put("big", "room", SECRET, members))["created"]
        assert len((await actor.conversation_get("big"))["members"]) == 1000

    run(check, home)


def test_concurrent_writes_share_commits_and_keep_their_own_outcome(home: Home) -> None:
    async def check(actor: Storage) -> None:
        await room(actor)
        await put(actor, ALICE, 1)
        outcomes: dict[int, str] = {}

        async def write(seq: int) -> None:
            # seq 1 is taken by another id: only this write is refused.
            mid = "clash" if seq == 1 else None
            try:
                await put(actor, ALICE, seq, mid=mid)
                outcomes[seq] = "stored"
            except errors.BusError as exc:
                outcomes[seq] = exc.code

        before = actor.commits
        async with trio.open_nursery() as nursery:
            for seq in range(1, 41):
                nursery.start_soon(write, seq)
        assert outcomes == {1: errors.CONFLICT, **{s: "stored" for s in range(2, 41)}}
        assert actor.commits - before < 40  # they did share commits
        ranges = (await actor.author_ranges("room1"))["authors"][ALICE]
        assert ranges["ranges"] == [[1, 40]]
        assert await code_of(actor.message_get("clash")) == errors.NOT_FOUND
        assert actor.status()["messages"] == actor.store.message_count() == 40

    run(check, home)


def test_full_disk_in_a_shared_commit_fails_only_the_write_that_did_not_fit(
        home: Home) -> None:
    async def check(actor: Storage) -> None:
        conn = actor.store.conn
        await actor.kv_put("warm", b"x")
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        outcomes: dict[str, str] = {}

        async def write(key: str, size: int) -> None:
            try:
                await actor.kv_put(key, b"v" * size)
                outcomes[key] = "ok"
            except errors.BusError as exc:
                outcomes[key] = exc.code

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(write, f"small{i}", 10)
            nursery.start_soon(write, "huge", 512 * 1024)
        assert outcomes == {"huge": errors.STORAGE, **{f"small{i}": "ok" for i in range(5)}}
        assert await code_of(actor.kv_get("huge")) == errors.NOT_FOUND
        assert (await actor.kv_get("small4"))["value"] == b"v" * 10

    run(check, home)


def test_a_write_cancelled_while_waiting_for_its_commit_never_happens(home: Home) -> None:
    async def check(actor: Storage) -> None:
        doomed = trio.CancelScope()

        async def cancelled_write() -> None:
            with doomed:
                await actor.kv_put("dropped", b"1")

        await actor._lock.acquire()  # as if a commit were under way
        async with trio.open_nursery() as nursery:
            nursery.start_soon(actor.kv_put, "kept", b"1")
            nursery.start_soon(cancelled_write)
            await trio.testing.wait_all_tasks_blocked()
            doomed.cancel()
            await trio.testing.wait_all_tasks_blocked()
            actor._lock.release()
        assert (await actor.kv_get("kept"))["value"] == b"1"
        assert await code_of(actor.kv_get("dropped")) == errors.NOT_FOUND

    run(check, home)
