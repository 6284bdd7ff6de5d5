"""The node database's schema, as an ordered list of migration steps.

The schema version is SQLite's `PRAGMA user_version`: version N means the first N steps
of `MIGRATIONS` have been applied. At start the missing steps run in one transaction
together with the version bump, so a crash mid-upgrade leaves the old version intact
and the upgrade simply runs again. A database from a newer p2pm (a version beyond this
list) is refused rather than used, because an older build would silently misread it.

To change the schema in a later issue, append a step; never edit one that has shipped.

Why the tables look the way they do (the gossip/sync layer is the main reader):
* messages are keyed by an id chosen by the author (content hash or uuid), so a message
  redelivered by gossip and by sync is stored once; (conversation, author, seq) is
  unique, so per-author sequence numbers can be reconciled with a peer by ranges.
* history pages walk (conversation, ts, id); sync walks (conversation, author, seq).
* conversation members are rows, not a JSON list, so "which conversations do I share
  with this peer that just connected" is an index lookup.
* the outbox is one row per (message, recipient): delivery is tracked per member.
* the number of messages is kept in a row by triggers, so opening the database (the
  storage actor reports it from the start) does not count a table that only grows.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


class SchemaError(RuntimeError):
    """The database cannot be brought to this build's schema."""


@dataclass(frozen=True)
class Migration:
    summary: str
    statements: tuple[str, ...]


MIGRATIONS: list[Migration] = [
    Migration("kv, contacts, conversations, messages", (
        """CREATE TABLE kv (
            key        TEXT PRIMARY KEY,
            value      BLOB NOT NULL,
            updated_at REAL NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE contacts (
            peer_id  TEXT PRIMARY KEY,
            name     TEXT NOT NULL UNIQUE,
            addrs    TEXT NOT NULL DEFAULT '[]',  -- JSON list of multiaddrs
            added_at REAL NOT NULL,
            verified INTEGER NOT NULL DEFAULT 0 CHECK (verified IN (0, 1))
        )""",
        """CREATE TABLE conversations (
            id         TEXT PRIMARY KEY,
            kind       TEXT NOT NULL CHECK (kind IN ('direct', 'room')),
            name       TEXT NOT NULL DEFAULT '',
            secret     BLOB NOT NULL,
            created_at REAL NOT NULL
        )""",
        """CREATE TABLE conversation_members (
            conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            peer_id      TEXT NOT NULL,
            PRIMARY KEY (conversation, peer_id)
        ) WITHOUT ROWID""",
        "CREATE INDEX conversation_members_by_peer ON conversation_members(peer_id)",
        """CREATE TABLE messages (
            id           TEXT PRIMARY KEY,
            conversation TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            author       TEXT NOT NULL,
            seq          INTEGER NOT NULL CHECK (seq >= 1),
            ts           REAL NOT NULL,
            body         BLOB NOT NULL,
            state        TEXT NOT NULL
                         CHECK (state IN ('pending', 'sent', 'delivered', 'received')),
            received_at  REAL NOT NULL,
            UNIQUE (conversation, author, seq)
        )""",
        "CREATE INDEX messages_history ON messages(conversation, ts, id)",
    )),
    Migration("outbox: delivery per (message, recipient)", (
        """CREATE TABLE outbox (
            message_id      TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
            recipient       TEXT NOT NULL,
            state           TEXT NOT NULL DEFAULT 'pending'
                            CHECK (state IN ('pending', 'done', 'failed')),
            attempts        INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL,
            last_error      TEXT NOT NULL DEFAULT '',
            created_at      REAL NOT NULL,
            PRIMARY KEY (message_id, recipient)
        ) WITHOUT ROWID""",
        # Only pending rows are ever scanned for due work; done ones stay out of it.
        """CREATE INDEX outbox_due ON outbox(next_attempt_at)
            WHERE state = 'pending'""",
    )),
    # The values themselves are sealed after this step, in Python (sealing.py): its
    # one row appears in the transaction that seals them, so until then they are clear.
    Migration("at_rest: kv values, conversation secrets, message bodies sealed", (
        """CREATE TABLE at_rest (
            id        INTEGER PRIMARY KEY CHECK (id = 1),
            key_check BLOB NOT NULL,
            vacuumed  INTEGER NOT NULL DEFAULT 0 CHECK (vacuumed IN (0, 1))
        )""",
    )),
    # COUNT(*) reads a whole index: at 200,000 messages that is megabytes read on every
    # start. Triggers keep the count with the rows, cascaded deletes included.
    Migration("message_count: the number of messages, kept by triggers", (
        """CREATE TABLE message_count (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            n  INTEGER NOT NULL CHECK (n >= 0)
        )""",
        "INSERT INTO message_count(id, n) SELECT 1, COUNT(*) FROM messages",
        """CREATE TRIGGER message_count_insert AFTER INSERT ON messages
            BEGIN UPDATE message_count SET n = n + 1 WHERE id = 1; END""",
        """CREATE TRIGGER message_count_delete AFTER DELETE ON messages
            BEGIN UPDATE message_count SET n = n - 1 WHERE id = 1; END""",
    )),
]

LATEST = len(MIGRATIONS)


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: list[Migration] | None = None) -> tuple[int, int]:
    """Bring the database to the last step of `migrations` (default: MIGRATIONS).

    Returns (version before, version after). `conn` must be in autocommit mode
    (isolation_level=None) so that the explicit transaction here is the only one.
    """
    steps = MIGRATIONS if migrations is None else migrations
    target = len(steps)
    conn.execute("BEGIN IMMEDIATE")
    try:
        # Read inside the write transaction: another opener cannot migrate under us.
        current = version(conn)
        if current > target:
            raise SchemaError(
                f"database schema version {current} is newer than this p2pm knows "
                f"({target}); run a newer p2pm with this home, or restore a backup")
        for step in steps[current:]:
            for sql in step.statements:
                conn.execute(sql)
        if current != target:
            # user_version lives in the database header, which is journaled: it
            # commits or rolls back together with the steps above.
            conn.execute(f"PRAGMA user_version = {target:d}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return current, target
