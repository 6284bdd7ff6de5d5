"""The node database as plain, blocking Python: one SQLite connection, no event loop.

`Store` holds the SQL and the rules that need the current state to decide (idempotent
message ids, sequence conflicts, state that only moves forward). It trusts its inputs
to be well-formed: the actor validates every request at the boundary before it gets
here. Every write runs in its own `BEGIN IMMEDIATE ... COMMIT`, so a method either
commits all it changes or nothing; with `synchronous=FULL` the commit has reached the
disk when the method returns.

Secrets, bodies and kv values are sealed on their way in and opened on their way out
(`sealing.py`): callers see clear values, the file holds only ciphertext of them.

Not thread-safe by itself: the actor serialises all calls (see `actor.py`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from p2pm.common import errors
from p2pm.common.settings import SYNCHRONOUS_MODES

from . import schema, sealing


BUSY_TIMEOUT_MS = 5000

MESSAGE_STATES = ("pending", "sent", "delivered", "received")
# Outgoing messages only move forward: a late "sent" must not undo "delivered".
_OUTGOING_RANK = {"pending": 0, "sent": 1, "delivered": 2}


@dataclass(frozen=True)
class Message:
    id: str
    conversation: str
    author: str
    seq: int
    ts: float
    body: bytes
    state: str
    received_at: float


@dataclass(frozen=True)
class Contact:
    name: str
    peer_id: str
    addrs: list[str]
    added_at: float
    verified: bool


@dataclass(frozen=True)
class Conversation:
    id: str
    kind: str
    name: str
    secret: bytes
    created_at: float
    members: list[str]


@dataclass(frozen=True)
class OutboxEntry:
    message_id: str
    recipient: str
    state: str
    attempts: int
    next_attempt_at: float | None
    last_error: str
    created_at: float


_MESSAGE_COLS = "id, conversation, author, seq, ts, body, state, received_at"
_OUTBOX_COLS = "message_id, recipient, state, attempts, next_attempt_at, last_error, created_at"


def _contact(row: sqlite3.Row) -> Contact:
    return Contact(row["name"], row["peer_id"], json.loads(row["addrs"]), row["added_at"],
                   bool(row["verified"]))


def _outbox(row: sqlite3.Row) -> OutboxEntry:
    return OutboxEntry(*(row[c.strip()] for c in _OUTBOX_COLS.split(",")))


@dataclass(frozen=True)
class Result:
    """The outcome of one operation of a batch: its return value, or what it raised."""

    ok: bool
    value: Any

    def unwrap(self) -> Any:
        if self.ok:
            return self.value
        raise self.value


def capture(fn: Callable[..., Any], args: tuple[Any, ...]) -> Result:
    try:
        return Result(True, fn(*args))
    except Exception as exc:
        return Result(False, exc)


class Store:
    """The node database. Open with `Store.open`; close with `close`."""

    def __init__(self, conn: sqlite3.Connection, path: Path | str,
                 migrated_from: int | None = None,
                 sealer: sealing.Sealer | None = None, sealed_now: int = 0) -> None:
        conn.row_factory = sqlite3.Row
        self.conn = conn
        self.path = Path(path)
        self.migrated_from = migrated_from  # schema version found on open
        self.sealer = sealer  # None: a clear database (benchmarks, older-format tests)
        self.sealed_now = sealed_now  # clear values this open sealed (an upgrade)

    @classmethod
    def open(cls, path: Path, synchronous: str, key: bytes | None) -> "Store":
        """Open (creating if needed) and migrate the database at `path`, sealed under
        `key` (the keystore's at-rest subkey): clear rows left by an older p2pm are
        sealed now. `key=None` keeps a never-sealed database in clear and refuses a
        sealed one. Raises schema.SchemaError (with the reason) if it cannot be used."""
        if synchronous not in SYNCHRONOUS_MODES:
            raise ValueError(
                f"storage.synchronous must be one of {', '.join(SYNCHRONOUS_MODES)}, "
                f"got {synchronous!r}")
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, nothing is implicit.
        # check_same_thread=False: calls come from trio's worker threads, one at a time.
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS:d}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise schema.SchemaError(f"{path}: cannot switch to WAL (journal_mode={mode})")
            conn.execute(f"PRAGMA synchronous = {synchronous}")
            conn.execute("PRAGMA foreign_keys = ON")
            # Deleted and overwritten rows are zeroed, not left in free pages.
            conn.execute("PRAGMA secure_delete = ON")
            before, _ = schema.migrate(conn)
            sealer = None if key is None else sealing.Sealer(key)
            sealed_now = 0
            if sealer is not None:
                sealed_now = sealing.seal_existing(conn, sealer)
            elif sealing.is_sealed(conn):
                raise schema.SchemaError(f"{path} is sealed: it opens only with its key")
        except sealing.WrongKey as exc:
            conn.close()
            raise schema.SchemaError(f"{path}: {exc}") from None
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, before, sealer, sealed_now)

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write operation, all or nothing: its own transaction, or a savepoint
        when it runs inside a batch (`run_batch`)."""
        if self.conn.in_transaction:
            begin, commit, undo = "SAVEPOINT op", "RELEASE op", ("ROLLBACK TO op", "RELEASE op")
        else:
            begin, commit, undo = "BEGIN IMMEDIATE", "COMMIT", ("ROLLBACK",)
        self.conn.execute(begin)
        try:
            yield self.conn
            self.conn.execute(commit)
        except BaseException:
            # A failed COMMIT (disk full, I/O error) can leave the transaction open;
            # some errors make SQLite roll back the whole transaction by itself.
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    for sql in undo:
                        self.conn.execute(sql)
            raise

    def run_batch(self, ops: list[tuple[Callable[..., Any], tuple[Any, ...]]]) -> list[Result]:
        """Run write operations in one transaction: one commit, one fsync, for all.

        This is group commit: under load the fsync, not SQL, bounds write throughput,
        and every operation still gets its own outcome. An operation refused by a
        rule (a BusError) is undone by its savepoint and the others go on. A database
        error (disk full, I/O, read-only) can abort the whole transaction, so then
        everything is rolled back and each operation runs again on its own, to fail
        or succeed by itself. Operations are deterministic given their arguments, so
        running one again is the same operation.
        """
        if len(ops) == 1:
            return [capture(*ops[0])]
        results: list[Result] = []
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            for fn, args in ops:
                try:
                    results.append(Result(True, fn(*args)))
                except errors.BusError as exc:
                    results.append(Result(False, exc))
            self.conn.execute("COMMIT")
            return results
        except Exception:
            if self.conn.in_transaction:
                with suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
        return [capture(fn, args) for fn, args in ops]

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Row | None:
        return self.conn.execute(sql, args).fetchone()

    # -- sealing: the column name and the row's id are the associated data ------------
    def _seal(self, column: str, row: str, plain: bytes) -> bytes:
        return plain if self.sealer is None else self.sealer.seal(column, row, plain)

    def _unseal(self, column: str, row: str, stored: Any) -> bytes:
        raw = bytes(stored)
        return raw if self.sealer is None else self.sealer.open(column, row, raw)

    def _message(self, row: sqlite3.Row) -> Message:
        return Message(row["id"], row["conversation"], row["author"], row["seq"], row["ts"],
                       self._unseal("messages.body", row["id"], row["body"]), row["state"],
                       row["received_at"])

    # -- info ------------------------------------------------------------------------
    def schema_version(self) -> int:
        return schema.version(self.conn)

    def message_count(self) -> int:
        return int(self._one("SELECT n FROM message_count")[0])

    def integrity_check(self) -> str:
        return str(self._one("PRAGMA integrity_check")[0])

    # -- kv --------------------------------------------------------------------------
    def kv_get(self, key: str) -> tuple[bytes, float]:
        row = self._one("SELECT value, updated_at FROM kv WHERE key = ?", (key,))
        if row is None:
            raise errors.not_found(f"no value under key {key!r}")
        return self._unseal("kv.value", key, row["value"]), row["updated_at"]

    def kv_put(self, key: str, value: bytes, now: float) -> None:
        with self._write() as c:
            c.execute("INSERT INTO kv(key, value, updated_at) VALUES (?, ?, ?) "
                      "ON CONFLICT(key) DO UPDATE SET value = excluded.value, "
                      "updated_at = excluded.updated_at",
                      (key, self._seal("kv.value", key, value), now))

    def kv_delete(self, key: str) -> bool:
        with self._write() as c:
            return c.execute("DELETE FROM kv WHERE key = ?", (key,)).rowcount > 0

    # -- contacts --------------------------------------------------------------------
    def contact_add(self, name: str, peer_id: str, addrs: list[str], verified: bool,
                    now: float) -> bool:
        """Add or update the contact of `peer_id`; True if it is new."""
        with self._write() as c:
            holder = self._one("SELECT peer_id FROM contacts WHERE name = ?", (name,))
            if holder is not None and holder["peer_id"] != peer_id:
                raise errors.BusError(errors.CONFLICT, f"the name {name!r} is already "
                                      f"used by contact {holder['peer_id']}")
            addrs_json = json.dumps(addrs)
            updated = c.execute(
                "UPDATE contacts SET name = ?, addrs = ?, verified = ? WHERE peer_id = ?",
                (name, addrs_json, int(verified), peer_id)).rowcount
            if updated:
                return False
            c.execute("INSERT INTO contacts(peer_id, name, addrs, added_at, verified) "
                      "VALUES (?, ?, ?, ?, ?)", (peer_id, name, addrs_json, now, int(verified)))
            return True

    def contact_get(self, name: str | None = None, peer_id: str | None = None) -> Contact:
        col, val = ("name", name) if name is not None else ("peer_id", peer_id)
        row = self._one(f"SELECT * FROM contacts WHERE {col} = ?", (val,))
        if row is None:
            raise errors.not_found(f"no contact with {col} {val!r}")
        return _contact(row)

    def contact_list(self) -> list[Contact]:
        return [_contact(r) for r in self.conn.execute("SELECT * FROM contacts ORDER BY name")]

    def contact_remove(self, name: str | None = None, peer_id: str | None = None) -> bool:
        col, val = ("name", name) if name is not None else ("peer_id", peer_id)
        with self._write() as c:
            return c.execute(f"DELETE FROM contacts WHERE {col} = ?", (val,)).rowcount > 0

    # -- conversations ---------------------------------------------------------------
    def conversation_put(self, id: str, kind: str, name: str, secret: bytes,
                         members: list[str], created_at: float) -> tuple[bool, bool]:
        """Create a conversation or update its name and members.

        Returns (created, changed). Kind and secret never change: they define the
        conversation (its topic and key), so a different one under the same id is a
        conflict, not an update.
        """
        with self._write() as c:
            row = self._one("SELECT kind, name, secret FROM conversations WHERE id = ?", (id,))
            if row is None:
                c.execute("INSERT INTO conversations(id, kind, name, secret, created_at) "
                          "VALUES (?, ?, ?, ?, ?)", (id, kind, name, self._seal(
                              "conversations.secret", id, secret), created_at))
                c.executemany("INSERT INTO conversation_members(conversation, peer_id) "
                              "VALUES (?, ?)", [(id, m) for m in members])
                return True, True
            if row["kind"] != kind or self._unseal(
                    "conversations.secret", id, row["secret"]) != secret:
                raise errors.BusError(errors.CONFLICT, f"conversation {id} exists with a "
                                      "different kind or secret")
            old = set(self._members(id))
            new = set(members)
            if row["name"] == name and old == new:
                return False, False
            c.execute("UPDATE conversations SET name = ? WHERE id = ?", (name, id))
            c.executemany("DELETE FROM conversation_members WHERE conversation = ? "
                          "AND peer_id = ?", [(id, m) for m in old - new])
            c.executemany("INSERT INTO conversation_members(conversation, peer_id) "
                          "VALUES (?, ?)", [(id, m) for m in new - old])
            return False, True

    def _members(self, conversation: str) -> list[str]:
        return [r[0] for r in self.conn.execute(
            "SELECT peer_id FROM conversation_members WHERE conversation = ? "
            "ORDER BY peer_id", (conversation,))]

    def _has_conversation(self, id: str) -> bool:
        return self._one("SELECT 1 FROM conversations WHERE id = ?", (id,)) is not None

    def _require_conversation(self, id: str) -> None:
        if not self._has_conversation(id):
            raise errors.not_found(f"no conversation {id!r}")

    def conversation_get(self, id: str) -> Conversation:
        row = self._one("SELECT * FROM conversations WHERE id = ?", (id,))
        if row is None:
            raise errors.not_found(f"no conversation {id!r}")
        return Conversation(row["id"], row["kind"], row["name"],
                            self._unseal("conversations.secret", id, row["secret"]),
                            row["created_at"], self._members(id))

    def conversation_list(self, member: str | None = None) -> list[dict[str, Any]]:
        """Conversations (without secrets), most recently active first."""
        where, args = ("", ()) if member is None else (
            "WHERE c.id IN (SELECT conversation FROM conversation_members "
            "WHERE peer_id = ?)", (member,))
        # Materialised so that each conversation's MAX(ts) is looked up once, not once
        # more for the ORDER BY; members come in one query, not one per conversation.
        rows = self.conn.execute(
            "WITH listed AS MATERIALIZED (SELECT c.id, c.kind, c.name, c.created_at, "
            "(SELECT MAX(ts) FROM messages m WHERE m.conversation = c.id) AS last_ts "
            f"FROM conversations c {where}) "
            "SELECT * FROM listed ORDER BY COALESCE(last_ts, created_at) DESC, id",
            args).fetchall()
        members: dict[str, list[str]] = {r["id"]: [] for r in rows}
        for conv, peer in self.conn.execute(
                "SELECT conversation, peer_id FROM conversation_members "
                f"{where.replace('c.id', 'conversation')} ORDER BY conversation, peer_id",
                args):
            if conv in members:
                members[conv].append(peer)
        return [{"id": r["id"], "kind": r["kind"], "name": r["name"],
                 "created_at": r["created_at"], "last_ts": r["last_ts"],
                 "members": members[r["id"]]} for r in rows]

    # -- messages --------------------------------------------------------------------
    def message_put(self, m: Message, outbox: Sequence[str] = ()) -> bool:
        """Store `m`, queued for delivery to the `outbox` recipients in the same
        transaction (a crash between the two would leave a message nobody delivers);
        False if this very message is already stored (then only missing outbox rows
        are added)."""
        with self._write() as c:
            row = self._one(f"SELECT {_MESSAGE_COLS} FROM messages WHERE id = ?", (m.id,))
            if row is not None:
                old = self._message(row)
                if (old.conversation, old.author, old.seq, old.ts, old.body) != (
                        m.conversation, m.author, m.seq, m.ts, m.body):
                    raise errors.BusError(errors.CONFLICT, f"message {m.id} is already "
                                          "stored with different content")
                self._queue(c, m, outbox)
                return False
            row = self._one("SELECT id FROM messages WHERE conversation = ? AND author = ? "
                            "AND seq = ?", (m.conversation, m.author, m.seq))
            if row is not None:
                raise errors.BusError(
                    errors.CONFLICT, f"{m.author} already has seq {m.seq} in "
                    f"{m.conversation} (message {row['id']}); refusing {m.id}")
            self._require_conversation(m.conversation)
            c.execute(f"INSERT INTO messages({_MESSAGE_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (m.id, m.conversation, m.author, m.seq, m.ts,
                       self._seal("messages.body", m.id, m.body), m.state, m.received_at))
            self._queue(c, m, outbox)
            return True

    @staticmethod
    def _queue(c: sqlite3.Connection, m: Message, outbox: Sequence[str]) -> None:
        for r in outbox:
            c.execute("INSERT INTO outbox(message_id, recipient, next_attempt_at, created_at) "
                      "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                      (m.id, r, m.received_at, m.received_at))

    def message_get(self, id: str) -> Message:
        row = self._one(f"SELECT {_MESSAGE_COLS} FROM messages WHERE id = ?", (id,))
        if row is None:
            raise errors.not_found(f"no message {id!r}")
        return self._message(row)

    def message_set_state(self, id: str, state: str) -> tuple[bool, str]:
        """Move message `id` to `state`; returns (changed, state now).

        Outgoing states only move forward (pending -> sent -> delivered): going back
        is a late acknowledgement and changes nothing. An incoming message
        ('received') never becomes outgoing, nor the other way round.
        """
        with self._write() as c:
            row = self._one("SELECT state FROM messages WHERE id = ?", (id,))
            if row is None:
                raise errors.not_found(f"no message {id!r}")
            current = row["state"]
            if current == state:
                return False, current
            if "received" in (current, state):
                raise errors.BusError(errors.CONFLICT, f"message {id} is {current}; it "
                                      f"cannot become {state}")
            if _OUTGOING_RANK[state] < _OUTGOING_RANK[current]:
                return False, current
            c.execute("UPDATE messages SET state = ? WHERE id = ?", (state, id))
            return True, state

    def history(self, conversation: str, before: tuple[float, str] | None,
                limit: int) -> tuple[list[Message], tuple[float, str] | None]:
        """The `limit` newest messages strictly before `before` (ts, id), oldest first,
        and the cursor of the next older page (None when this page reaches the start)."""
        self._require_conversation(conversation)
        if before is None:
            rows = self.conn.execute(
                f"SELECT {_MESSAGE_COLS} FROM messages WHERE conversation = ? "
                "ORDER BY ts DESC, id DESC LIMIT ?", (conversation, limit + 1)).fetchall()
        else:
            rows = self.conn.execute(
                f"SELECT {_MESSAGE_COLS} FROM messages WHERE conversation = ? "
                "AND (ts, id) < (?, ?) ORDER BY ts DESC, id DESC LIMIT ?",
                (conversation, before[0], before[1], limit + 1)).fetchall()
        page = [self._message(r) for r in rows[:limit]]
        page.reverse()
        cursor = (page[0].ts, page[0].id) if len(rows) > limit else None
        return page, cursor

    def unread_counts(self, marks: dict[str, float], limit: int) -> dict[str, int]:
        """How many messages others wrote in each conversation after its read mark,
        at most `limit` each: counts over the history index, nothing unsealed. A
        conversation not stored is left out."""
        out = {}
        for conversation, after_ts in marks.items():
            if self._has_conversation(conversation):
                out[conversation] = int(self.conn.execute(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM messages WHERE conversation = ? "
                    "AND ts > ? AND state = 'received' LIMIT ?)",
                    (conversation, after_ts, limit)).fetchone()[0])
        return out

    def author_ranges(self, conversation: str) -> dict[str, dict[str, Any]]:
        """Per author: the seq ranges held, the contiguous prefix from 1, the count.

        Most authors have no gaps: MIN, MAX and COUNT over the (conversation, author,
        seq) index say so without ordering anything. Only an author with gaps has
        their ranges found, with the gaps-and-islands trick: within one run of
        consecutive seqs, seq - row_number() is constant.
        """
        self._require_conversation(conversation)
        spans = self.conn.execute(
            "SELECT author, MIN(seq) AS lo, MAX(seq) AS hi, COUNT(*) AS n FROM messages "
            "WHERE conversation = ? GROUP BY author ORDER BY author",
            (conversation,)).fetchall()
        out: dict[str, dict[str, Any]] = {}
        for span in spans:
            author = span["author"]
            if span["n"] == span["hi"] - span["lo"] + 1:
                ranges = [(span["lo"], span["hi"])]
            else:
                ranges = [(r["lo"], r["hi"]) for r in self.conn.execute(
                    "SELECT MIN(seq) AS lo, MAX(seq) AS hi FROM ("
                    "  SELECT seq, seq - ROW_NUMBER() OVER (ORDER BY seq) AS island"
                    "  FROM messages WHERE conversation = ? AND author = ?) "
                    "GROUP BY island ORDER BY lo", (conversation, author))]
            out[author] = {"contiguous": ranges[0][1] if ranges[0][0] == 1 else 0,
                           "max_seq": span["hi"], "count": span["n"],
                           "ranges": [[lo, hi] for lo, hi in ranges]}
        return out

    def messages_by_author(self, conversation: str, author: str, from_seq: int,
                           to_seq: int, limit: int) -> tuple[list[Message], bool]:
        """Messages of `author` with from_seq <= seq <= to_seq, by seq; and whether
        more are in the range beyond `limit`."""
        self._require_conversation(conversation)
        rows = self.conn.execute(
            f"SELECT {_MESSAGE_COLS} FROM messages WHERE conversation = ? AND author = ? "
            "AND seq BETWEEN ? AND ? ORDER BY seq LIMIT ?",
            (conversation, author, from_seq, to_seq, limit + 1)).fetchall()
        return [self._message(r) for r in rows[:limit]], len(rows) > limit

    def unqueued(self, conversation: str, author: str, from_seq: int,
                 limit: int) -> tuple[list[Message], bool]:
        """`author`'s messages still pending or sent that no delivery was ever queued
        for (no outbox row at all), seq >= from_seq, by seq; and whether more follow."""
        self._require_conversation(conversation)
        rows = self.conn.execute(
            f"SELECT {_MESSAGE_COLS} FROM messages m WHERE conversation = ? "
            "AND author = ? AND seq >= ? AND state IN ('pending', 'sent') "
            "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.message_id = m.id) "
            "ORDER BY seq LIMIT ?", (conversation, author, from_seq, limit + 1)).fetchall()
        return [self._message(r) for r in rows[:limit]], len(rows) > limit

    # -- outbox ----------------------------------------------------------------------
    def outbox_add(self, message_id: str, recipients: list[str], next_attempt_at: float,
                   now: float) -> int:
        """Queue `message_id` for each recipient not already queued; returns how many
        were added."""
        with self._write() as c:
            if self._one("SELECT 1 FROM messages WHERE id = ?", (message_id,)) is None:
                raise errors.not_found(f"no message {message_id!r}")
            added = 0
            for r in recipients:
                added += c.execute(
                    "INSERT INTO outbox(message_id, recipient, next_attempt_at, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (message_id, r, next_attempt_at, now)).rowcount
            return added

    def outbox_due(self, now: float, limit: int,
                   after: tuple[float, str, str] | None = None) -> list[OutboxEntry]:
        """Pending entries due by `now` in (next_attempt_at, message_id, recipient)
        order, from just after `after` (the last entry of the previous page) on."""
        cursor = "" if after is None else \
            "AND (next_attempt_at, message_id, recipient) > (?, ?, ?) "
        rows = self.conn.execute(
            f"SELECT {_OUTBOX_COLS} FROM outbox WHERE state = 'pending' "
            f"AND next_attempt_at <= ? {cursor}"
            "ORDER BY next_attempt_at, message_id, recipient LIMIT ?",
            (now, *(after or ()), limit))
        return [_outbox(r) for r in rows]

    def outbox_get(self, message_id: str) -> list[OutboxEntry]:
        return [_outbox(r) for r in self.conn.execute(
            f"SELECT {_OUTBOX_COLS} FROM outbox WHERE message_id = ? ORDER BY recipient",
            (message_id,))]

    def _outbox_row(self, message_id: str, recipient: str) -> sqlite3.Row:
        row = self._one("SELECT state, attempts FROM outbox WHERE message_id = ? "
                        "AND recipient = ?", (message_id, recipient))
        if row is None:
            raise errors.not_found(f"{message_id} is not queued for {recipient}")
        return row

    def outbox_done(self, message_id: str, recipient: str) -> bool:
        """Mark delivered; False if it was no longer pending."""
        with self._write() as c:
            if self._outbox_row(message_id, recipient)["state"] != "pending":
                return False
            c.execute("UPDATE outbox SET state = 'done', next_attempt_at = NULL "
                      "WHERE message_id = ? AND recipient = ?", (message_id, recipient))
            return True

    def outbox_failed(self, message_id: str, recipient: str, error: str,
                      next_attempt_at: float | None) -> OutboxEntry:
        """Record a failed attempt; retry at `next_attempt_at`, or give up if None.
        An entry no longer pending is left as it is."""
        with self._write() as c:
            if self._outbox_row(message_id, recipient)["state"] == "pending":
                c.execute(
                    "UPDATE outbox SET attempts = attempts + 1, last_error = ?, "
                    "next_attempt_at = ?, state = ? WHERE message_id = ? AND recipient = ?",
                    (error, next_attempt_at, "pending" if next_attempt_at is not None
                     else "failed", message_id, recipient))
            row = self._one(f"SELECT {_OUTBOX_COLS} FROM outbox WHERE message_id = ? "
                            "AND recipient = ?", (message_id, recipient))
            return _outbox(row)
