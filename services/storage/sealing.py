"""Sealing at rest: what the database holds of secrets and bodies is ciphertext.

The storage actor asks the keystore for its subkey ("storage-at-rest-v1", derived
one-way from the identity seed, see `identity.derive_subkey`) and seals with it, before
a row is written, every conversation secret, every message body and every kv value.
So a copy of `data/` reveals no message text and no conversation key unless the
identity can be opened too (its passphrase, or no passphrase at all).

Each sealed value is XChaCha20-Poly1305 (IETF) with a random 24-byte nonce:
`version (1 byte) | nonce (24) | ciphertext + tag (16)`. The associated data names the
column and the row (`"messages.body" 0x00 <message id>`), so a value copied into
another row, or another column, fails to open instead of being read as that row's.

Left in clear, because the database looks rows up and orders them by them: ids
(message, conversation, kv key), authors and members (peer IDs), sequence numbers,
times, delivery states, outbox rows, contact names and addresses, conversation kind
and name. Names are chosen by the user and shown in lists; sealing them would need a
blind index for the lookups by name (`contact_get(name=...)`, unique names), and they
say less than the membership and timing metadata that stays in clear anyway.

The key is checked on open against `at_rest.key_check` (a keyed hash of the key, not
the key): a database sealed under another identity's key is refused with that reason,
instead of every read failing one by one.
"""

from __future__ import annotations

import hashlib
import sqlite3

import nacl.bindings
import nacl.exceptions
import nacl.utils

from p2pm.common import errors

PURPOSE = "storage-at-rest-v1"  # the keystore subkey this module seals with
VERSION = 1
KEY_BYTES = 32
NONCE_BYTES = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES  # 24
OVERHEAD = 1 + NONCE_BYTES + nacl.bindings.crypto_aead_xchacha20poly1305_ietf_ABYTES
_CHECK_PERSON = b"p2pm-atrest-chk"


class WrongKey(RuntimeError):
    """The database was sealed under another key (another identity's node)."""


def key_check(key: bytes) -> bytes:
    """What the database keeps to recognise its key: one-way, reveals nothing of it."""
    return hashlib.blake2b(key=key, digest_size=16, person=_CHECK_PERSON).digest()


class Sealer:
    """Seals and opens column values under one key. Pure: no database, no I/O."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the at-rest key must be {KEY_BYTES} bytes, got {len(key)}")
        self._key = key
        self.check = key_check(key)

    @staticmethod
    def _ad(column: str, row: str) -> bytes:
        return b"%s\x00%s" % (column.encode(), row.encode())

    def seal(self, column: str, row: str, plain: bytes) -> bytes:
        nonce = nacl.utils.random(NONCE_BYTES)
        return bytes([VERSION]) + nonce + \
            nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
                plain, self._ad(column, row), nonce, self._key)

    def open(self, column: str, row: str, sealed: bytes) -> bytes:
        """The clear value; a STORAGE BusError (and nothing) if it was changed on disk,
        moved from another row, or sealed under another key."""
        if len(sealed) < OVERHEAD or sealed[0] != VERSION:
            raise _damaged(column, row)
        nonce = sealed[1:1 + NONCE_BYTES]
        try:
            return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed[1 + NONCE_BYTES:], self._ad(column, row), nonce, self._key)
        except nacl.exceptions.CryptoError:
            raise _damaged(column, row) from None


def _damaged(column: str, row: str) -> errors.BusError:
    return errors.BusError(errors.STORAGE, (
        f"{column} of {row!r} in node.db fails its integrity check (changed on disk, "
        "copied from another row, or sealed under another key); nothing is returned"))


# The sealed columns: (table, column, the row's key column). The rewrite below and the
# Store's reads and writes use the same names as associated data.
SEALED = (("kv", "value", "key"), ("conversations", "secret", "id"),
          ("messages", "body", "id"))


def seal_existing(conn: sqlite3.Connection, sealer: Sealer) -> int:
    """Bring the database to sealed: check the key, or seal every clear row once.

    `at_rest` (schema step 3) holds one row once the rows are sealed; without it every
    sealed column is still clear. The rewrite and that row commit in one transaction,
    so a crash midway leaves a clear database that the next open seals again. After
    the commit, VACUUM and a truncating WAL checkpoint leave no page of the clear
    values in the file or the WAL (secure_delete zeroes freed pages as well);
    `vacuumed` records that this was done, so a crash before it is finished next time.
    Returns how many values were sealed now. Raises WrongKey.
    """
    row = conn.execute("SELECT key_check, vacuumed FROM at_rest").fetchone()
    sealed = 0
    if row is not None:
        if bytes(row[0]) != sealer.check:
            raise WrongKey(
                "node.db was sealed under another identity's key: this home's identity "
                "file is not the one that wrote its database (restore the matching "
                "identity.key, or move data/ aside to start empty)")
        if row[1]:
            return 0
    else:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column, ident in SEALED:
                name = f"{table}.{column}"
                rows = conn.execute(f"SELECT {ident}, {column} FROM {table}").fetchall()
                conn.executemany(
                    f"UPDATE {table} SET {column} = ? WHERE {ident} = ?",
                    [(sealer.seal(name, r[0], bytes(r[1])), r[0]) for r in rows])
                sealed += len(rows)
            conn.execute("INSERT INTO at_rest(id, key_check, vacuumed) VALUES (1, ?, 0)",
                         (sealer.check,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    conn.execute("VACUUM")
    _checkpoint(conn)
    conn.execute("UPDATE at_rest SET vacuumed = 1")
    _checkpoint(conn)
    return sealed


def _checkpoint(conn: sqlite3.Connection) -> None:
    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if busy:
        # Another connection reads the old pages; `vacuumed` stays 0 and the next
        # open tries again rather than calling the file clean.
        raise sqlite3.OperationalError("node.db is in use by another process: the WAL "
                                       "could not be emptied after sealing")


def is_sealed(conn: sqlite3.Connection) -> bool:
    return conn.execute("SELECT 1 FROM at_rest").fetchone() is not None
