"""Sealing at rest: what lands in node.db (and its WAL) is ciphertext of every secret,
body and kv value; a changed or moved value is refused, not returned; a clear database
from the previous schema is sealed on first open, all of it or (after a crash) none of
it; a database sealed under another key is refused; the storage actor waits for a
locked keystore, answering why, and opens once it is unlocked."""

from __future__ import annotations

import base64
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import zmq

from p2pm.common import errors, identity, wire
from p2pm.common.actor import ActorRuntime
from p2pm.common.client import open_client
from p2pm.common.home import Endpoints, Home
from p2pm.services.keystore.actor import Keystore
from p2pm.services.storage import schema, sealing
from p2pm.services.storage.actor import Storage
from p2pm.services.storage.store import Message, Store
from tests.helpers import make_home

KEY = bytes(range(1, 33))
OTHER_KEY = bytes(range(2, 34))
ROOM_SECRET = bytes(range(200, 232))
DM_SECRET = bytes(range(150, 182))
# Every script a chat sees, joined emoji, RTL and combining marks: distinctive enough
# that finding its bytes anywhere means it was stored in clear.
TEXTS = ["Привет, мир 🌍 — ünïcödé at rest",
         "مرحبا بالعالم ‮ עברית",
         "日本語のテキスト、中文消息，한국어 메시지",
         "👩‍👩‍👧‍👦 🏳️‍🌈 🇺🇦 e\u0301 ज़िंदगी",
         "ℌ𝔢𝔩𝔩𝔬 𝓦𝓸𝓻𝓵𝓭 ∮ ∑ ∞ at-rest-marker-9f3c"]


@pytest.fixture
def home() -> Iterator[Home]:
    h = make_home()
    h.data.mkdir(parents=True, exist_ok=True)
    try:
        yield h
    finally:
        shutil.rmtree(h.root, ignore_errors=True)


def db_path(home: Home) -> Path:
    return home.data / "node.db"


def on_disk(home: Home) -> bytes:
    """Every byte of the database's files (main, WAL, shared memory)."""
    return b"".join(p.read_bytes() for p in sorted(home.data.iterdir()) if p.is_file())


def secrets_leaked(blob: bytes, texts: list[str], secrets: list[bytes]) -> list[str]:
    found = [t for t in texts if t.encode() in blob]
    for s in secrets:
        for form in (s, base64.b64encode(s), base64.urlsafe_b64encode(s), s.hex().encode()):
            if form in blob:
                found.append(f"secret {s.hex()[:8]}.. as {form[:12]!r}")
    return found


def fill(store: Store) -> None:
    store.conversation_put("room1", "room", "lab", ROOM_SECRET, ["a", "b"], 1.0)
    store.conversation_put("dm1", "direct", "", DM_SECRET, ["a", "b"], 1.0)
    for i, text in enumerate(TEXTS):
        conv = "room1" if i % 2 else "dm1"
        store.message_put(Message(f"m{i}", conv, "a", i + 1, float(i), text.encode(),
                                  "received", 2.0))
    store.kv_put("gateway.note", TEXTS[0].encode(), 3.0)


def read_back(store: Store) -> None:
    assert store.conversation_get("room1").secret == ROOM_SECRET
    assert store.conversation_get("dm1").secret == DM_SECRET
    got = store.history("room1", None, 50)[0] + store.history("dm1", None, 50)[0]
    assert sorted(m.body.decode() for m in got) == sorted(TEXTS)
    assert store.kv_get("gateway.note")[0] == TEXTS[0].encode()


def raw(home: Home, sql: str, args: tuple = ()) -> list[tuple]:  # type: ignore[type-arg]
    conn = sqlite3.connect(db_path(home))
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def write_raw(home: Home, sql: str, args: tuple = ()) -> None:  # type: ignore[type-arg]
    conn = sqlite3.connect(db_path(home), isolation_level=None)
    try:
        conn.execute(sql, args)
    finally:
        conn.close()


# -- the sealer alone ----------------------------------------------------------------


def test_sealer_round_trip_binds_column_row_and_key() -> None:
    sealer = sealing.Sealer(KEY)
    for text in [*TEXTS, ""]:
        sealed = sealer.seal("messages.body", "m1", text.encode())
        assert text.encode() not in sealed or text == ""
        assert len(sealed) == len(text.encode()) + sealing.OVERHEAD
        assert sealer.open("messages.body", "m1", sealed) == text.encode()
    # A fresh nonce each time: equal texts do not give equal ciphertexts.
    assert sealer.seal("kv.value", "k", b"same") != sealer.seal("kv.value", "k", b"same")
    sealed = sealer.seal("messages.body", "m1", b"hello")
    for column, row, key in (("messages.body", "m2", KEY), ("kv.value", "m1", KEY),
                             ("messages.body", "m1", OTHER_KEY)):
        with pytest.raises(errors.BusError) as info:
            sealing.Sealer(key).open(column, row, sealed)
        assert info.value.code == errors.STORAGE and "integrity" in info.value.message
    for bad in (b"", sealed[:10], bytes([9]) + sealed[1:]):
        with pytest.raises(errors.BusError):
            sealer.open("messages.body", "m1", bad)
    with pytest.raises(ValueError, match="32 bytes"):
        sealing.Sealer(KEY[:16])


# -- what is on disk -----------------------------------------------------------------


def test_no_text_or_secret_reaches_the_files(home: Home) -> None:
    store = Store.open(db_path(home), "FULL", KEY)
    try:
        fill(store)
        # While open: the WAL holds the recent writes; it must be sealed too.
        assert (home.data / "node.db-wal").stat().st_size > 0
        assert secrets_leaked(on_disk(home), TEXTS, [ROOM_SECRET, DM_SECRET]) == []
        read_back(store)
        assert store.conn.execute("PRAGMA secure_delete").fetchone()[0] == 1
    finally:
        store.close()
    assert secrets_leaked(on_disk(home), TEXTS, [ROOM_SECRET, DM_SECRET]) == []
    # The ids, authors and states the database looks rows up by stay readable.
    assert raw(home, "SELECT id, author, state FROM messages WHERE id = 'm0'") == [
        ("m0", "a", "received")]


def test_a_clear_store_does_leak_which_is_what_the_test_above_rules_out(home: Home) -> None:
    store = Store.open(db_path(home), "FULL", None)
    try:
        fill(store)
    finally:
        store.close()
    assert secrets_leaked(on_disk(home), TEXTS, [ROOM_SECRET, DM_SECRET])


# -- tampering -----------------------------------------------------------------------


def test_a_flipped_byte_is_a_clear_error_and_nothing_is_returned(home: Home) -> None:
    store = Store.open(db_path(home), "FULL", KEY)
    fill(store)
    store.close()
    (body,) = raw(home, "SELECT body FROM messages WHERE id = 'm1'")[0]
    flipped = bytearray(body)
    flipped[len(flipped) // 2] ^= 0x01
    write_raw(home, "UPDATE messages SET body = ? WHERE id = 'm1'", (bytes(flipped),))
    (secret,) = raw(home, "SELECT secret FROM conversations WHERE id = 'dm1'")[0]
    write_raw(home, "UPDATE conversations SET secret = ? WHERE id = 'dm1'", (secret[:-1],))

    store = Store.open(db_path(home), "FULL", KEY)
    try:
        for call in (lambda: store.message_get("m1"),
                     lambda: store.history("room1", None, 50),
                     lambda: store.messages_by_author("room1", "a", 1, 10, 10),
                     lambda: store.conversation_get("dm1")):
            with pytest.raises(errors.BusError) as info:
                call()
            assert info.value.code == errors.STORAGE
            assert "integrity check" in info.value.message
        assert TEXTS[1] not in info.value.message
        # The untouched rows still read; the damaged one is not overwritten by a put.
        assert store.message_get("m3").body == TEXTS[3].encode()
        with pytest.raises(errors.BusError):
            store.message_put(Message("m1", "room1", "a", 2, 1.0, TEXTS[1].encode(),
                                      "received", 2.0))
    finally:
        store.close()


def test_values_swapped_between_rows_do_not_open(home: Home) -> None:
    store = Store.open(db_path(home), "FULL", KEY)
    fill(store)
    store.close()
    # An attacker with the file moves m0's body into m2 and the room's secret into
    # the DM: each is still valid ciphertext, under the right key, of another row.
    (m0,) = raw(home, "SELECT body FROM messages WHERE id = 'm0'")[0]
    write_raw(home, "UPDATE messages SET body = ? WHERE id = 'm2'", (m0,))
    (room,) = raw(home, "SELECT secret FROM conversations WHERE id = 'room1'")[0]
    write_raw(home, "UPDATE conversations SET secret = ? WHERE id = 'dm1'", (room,))
    (note,) = raw(home, "SELECT value FROM kv WHERE key = 'gateway.note'")[0]
    write_raw(home, "INSERT INTO kv VALUES ('dht.routing_table', ?, 1.0)", (note,))
    store = Store.open(db_path(home), "FULL", KEY)
    try:
        assert store.message_get("m0").body == TEXTS[0].encode()
        for call in (lambda: store.message_get("m2"), lambda: store.conversation_get("dm1"),
                     lambda: store.kv_get("dht.routing_table")):
            with pytest.raises(errors.BusError) as info:
                call()
            assert info.value.code == errors.STORAGE
    finally:
        store.close()


# -- the upgrade of a clear database -------------------------------------------------


def clear_v2_database(home: Home) -> None:
    """A node.db as the previous p2pm wrote it: schema step 2, every value in clear."""
    conn = sqlite3.connect(db_path(home), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    assert schema.migrate(conn, schema.MIGRATIONS[:2]) == (0, 2)
    conn.close()
    store = Store(sqlite3.connect(db_path(home), isolation_level=None), db_path(home))
    fill(store)  # no sealer: the old format
    store.outbox_add("m0", ["b"], 5.0, 5.0)
    store.close()
    assert len(secrets_leaked(on_disk(home), TEXTS, [ROOM_SECRET, DM_SECRET])) >= len(TEXTS)


def test_clear_database_is_sealed_on_first_open_with_nothing_left_in_clear(
        home: Home) -> None:
    clear_v2_database(home)
    store = Store.open(db_path(home), "FULL", KEY)
    try:
        assert store.migrated_from == 2 and store.schema_version() == schema.LATEST
        assert store.sealed_now == len(TEXTS) + 2 + 1  # messages, secrets, kv
        read_back(store)
        assert [e.recipient for e in store.outbox_get("m0")] == ["b"]
        # Vacuumed and checkpointed: the WAL is empty, the main file has no clear page.
        assert (home.data / "node.db-wal").stat().st_size == 0
        assert secrets_leaked(on_disk(home), TEXTS, [ROOM_SECRET, DM_SECRET]) == []
    finally:
        store.close()
    assert raw(home, "SELECT vacuumed FROM at_rest") == [(1,)]
    again = Store.open(db_path(home), "FULL", KEY)
    try:
        assert again.sealed_now == 0  # sealed once, never twice
        read_back(again)
    finally:
        again.close()


def test_a_crash_midway_through_sealing_leaves_it_to_the_next_open(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    clear_v2_database(home)
    real_seal = sealing.Sealer.seal
    calls = {"n": 0}

    def dies_on_the_fourth(self: sealing.Sealer, column: str, row: str, plain: bytes) -> bytes:
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError("power lost")
        return real_seal(self, column, row, plain)

    monkeypatch.setattr(sealing.Sealer, "seal", dies_on_the_fourth)
    with pytest.raises(OSError, match="power lost"):
        Store.open(db_path(home), "FULL", KEY)
    # All or nothing: every value still clear, no at_rest row, the schema step kept.
    assert raw(home, "SELECT COUNT(*) FROM at_rest") == [(0,)]
    assert raw(home, "SELECT body FROM messages WHERE id = 'm0'") == [(TEXTS[0].encode(),)]
    monkeypatch.setattr(sealing.Sealer, "seal", real_seal)
    store = Store.open(db_path(home), "FULL", KEY)
    try:
        assert store.sealed_now == len(TEXTS) + 3
        read_back(store)
    finally:
        store.close()
    assert secrets_leaked(on_disk(home), TEXTS, [ROOM_SECRET, DM_SECRET]) == []


def test_a_crash_after_sealing_but_before_the_vacuum_is_finished_next_time(
        home: Home) -> None:
    store = Store.open(db_path(home), "FULL", KEY)
    fill(store)
    store.close()
    write_raw(home, "UPDATE at_rest SET vacuumed = 0")
    store = Store.open(db_path(home), "FULL", KEY)
    try:
        assert store.sealed_now == 0
        read_back(store)
    finally:
        store.close()
    assert raw(home, "SELECT vacuumed FROM at_rest") == [(1,)]


# -- the wrong key -------------------------------------------------------------------


def test_a_database_sealed_under_another_key_is_refused_untouched(home: Home) -> None:
    store = Store.open(db_path(home), "FULL", KEY)
    fill(store)
    store.close()
    before = raw(home, "SELECT id, body FROM messages ORDER BY id")
    with pytest.raises(schema.SchemaError, match="another identity's key"):
        Store.open(db_path(home), "FULL", OTHER_KEY)
    with pytest.raises(schema.SchemaError, match="sealed"):
        Store.open(db_path(home), "FULL", None)
    assert raw(home, "SELECT id, body FROM messages ORDER BY id") == before
    store = Store.open(db_path(home), "FULL", KEY)
    try:
        read_back(store)
    finally:
        store.close()


# -- the actor and the keystore ------------------------------------------------------

PASSPHRASE = "sealed at rest"


async def test_storage_waits_for_a_locked_keystore_and_opens_once_unlocked(
        home: Home, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(identity.UNLOCK_KEY_ENV, raising=False)
    identity.create_identity(home.identity_file, PASSPHRASE)
    endpoints = Endpoints.inproc(f"seal-{uuid.uuid4().hex[:8]}")
    storage = Storage(home, {})
    ctx = zmq.Context.instance()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Keystore(home, {}), endpoints).serve)
        await nursery.start(ActorRuntime(storage, endpoints).serve)
        async with open_client(ctx, endpoints.rpc("storage"), "storage") as st, \
                open_client(ctx, endpoints.rpc("keystore"), "keystore") as ks:
            with trio.fail_after(10):
                while "locked" not in storage.status()["waiting"]:
                    await trio.sleep(0.02)
            status = await st.call("sys.status")
            assert not status["healthy"] and status["db"] is None
            with pytest.raises(errors.BusError) as info:
                await st.call("kv_get", {"key": "k"}, timeout=2.0, retries=0)
            assert info.value.code == errors.UNAVAILABLE
            assert "keystore is locked" in info.value.message
            assert not db_path(home).exists()  # nothing written while it waits

            await ks.call("unlock", {"passphrase": PASSPHRASE}, timeout=30.0, retries=0)
            with trio.fail_after(15):
                while not (await st.call("sys.status"))["healthy"]:
                    await trio.sleep(0.05)
            await st.call("kv_put", {"key": "k", "value": wire.b64e(TEXTS[3].encode())})
            got = await st.call("kv_get", {"key": "k"})
            assert wire.b64d(got["value"]) == TEXTS[3].encode()
        nursery.cancel_scope.cancel()
    assert TEXTS[3].encode() not in on_disk(home)
    # The database is sealed under this identity's subkey and nothing else.
    key = identity.derive_subkey(identity.open_identity(
        home.identity_file, identity.derive_unlock_key(home.identity_file, PASSPHRASE)),
        sealing.PURPOSE)
    Store.open(db_path(home), "FULL", key).close()
    with pytest.raises(schema.SchemaError):
        Store.open(db_path(home), "FULL", OTHER_KEY)
