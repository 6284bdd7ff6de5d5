"""The storage actor: the node's SQLite database on the bus.

Everything the node keeps lives here: key/value state (identity metadata, routing-table
snapshots), contacts, conversations, messages and the delivery outbox. Other actors
never open the database; they call these RPCs.

The database is sealed at rest (`sealing.py`): at start the actor asks the keystore for
its at-rest subkey and opens the database only with it. Until then (keystore locked,
down, or not there yet) it is unhealthy and every RPC answers `unavailable` with the
reason; it asks again with a backoff capped at 2 s.

Promises:
* A write is committed (and with `synchronous=FULL`, on disk) before its reply is
  sent: an acknowledged write survives `kill -9` of this process.
* A request either changes everything it asks for or nothing. A database that cannot
  be written (read-only, disk full, I/O error) answers `storage`, and the actor keeps
  serving.
* Writes that other actors care about are published after the commit:
  `storage.message.stored {id, conversation, author, seq}` and
  `storage.message.state {id, state}`.

SQLite calls block (a FULL commit waits for fsync), so they run in a worker thread and
the trio loop keeps serving pings, heartbeats and queued requests meanwhile. One
connection serves them all, serialised by a lock: SQLite allows one writer anyway, and
one connection means no busy-waiting between our own writers. Writes that arrive while
a commit is under way are committed together by the next one (group commit), since
the fsync, not the SQL, is what limits how many writes a second get acknowledged.
"""

from __future__ import annotations

import math
import sqlite3
import time
from dataclasses import asdict, dataclass
from typing import Any

import trio

from p2pm.common import errors, validate
from p2pm.common.actor import Actor, rpc
from p2pm.common.clients import KeystoreClient, history_cursor
from p2pm.common.config import settings_of

from . import schema, sealing
from .store import MESSAGE_STATES, Message, Result, Store, capture

MAX_ID = validate.MAX_ID_CHARS  # message, conversation and peer ids
MAX_KEY = 256  # kv keys: dotted names chosen by the actors ("dht.routing_table")
MAX_VALUE = 1024 * 1024  # kv values
MAX_BODY = 1024 * 1024  # message envelopes; a bus frame is at most 4 MiB of base64
MAX_ADDRS = 64
MAX_ADDR = 512
MAX_MEMBERS = 1024
MIN_SECRET, MAX_SECRET = 16, 64
MAX_ERROR = 1024
MAX_LIMIT = 1000
MAX_MARKS = 10_000  # conversations in one unread_counts call
MAX_SEQ = 2**63 - 1
MAX_BATCH = 256  # writes per commit; bounds how long one transaction holds the lock
# A request that arrives before the keystore first answered waits this long for the
# database (at start the key comes within milliseconds), then gets the reason.
OPEN_WAIT_S = 1.0


@dataclass
class _Slot:
    """A write waiting for its batch; `result` is set once the batch committed."""

    op: str
    args: tuple[Any, ...]
    result: Result | None = None


# -- validation at the boundary ----------------------------------------------------


def _ident(value: str, what: str, max_len: int = MAX_ID) -> str:
    try:
        return validate.check_id(value, what, max_len)
    except validate.Invalid as exc:
        raise errors.bad_params(str(exc)) from None


def _label(value: str, what: str, max_len: int = validate.MAX_NAME_CHARS,
           empty: bool = False) -> str:
    try:
        return validate.check_line(value, what, max_len, empty=empty)
    except validate.Invalid as exc:
        raise errors.bad_params(str(exc)) from None


def _time(value: float, what: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise errors.bad_params(f"{what} must be a finite time in seconds since the epoch")
    return value


def _size(value: bytes, what: str, max_len: int, min_len: int = 0) -> bytes:
    if not min_len <= len(value) <= max_len:
        raise errors.bad_params(f"{what} must be {min_len}-{max_len} bytes, got {len(value)}")
    return value


def _count(value: int, what: str, low: int = 1, high: int = MAX_LIMIT) -> int:
    if not low <= value <= high:
        raise errors.bad_params(f"{what} must be between {low} and {high}")
    return value


def _idents(values: list[str], what: str, low: int, high: int) -> list[str]:
    _count(len(values), f"the number of {what}", low, high)
    for i, v in enumerate(values):
        _ident(v, f"{what}[{i}]")
    if len(set(values)) != len(values):
        raise errors.bad_params(f"{what} has duplicates")
    return values


def _one_of(value: str, what: str, options: tuple[str, ...]) -> str:
    if value not in options:
        raise errors.bad_params(f"{what} must be one of {', '.join(options)}; got {value!r}")
    return value


def _contact_key(name: str | None, peer_id: str | None) -> tuple[str | None, str | None]:
    if (name is None) == (peer_id is None):
        raise errors.bad_params("give exactly one of name or peer_id")
    if name is not None:
        return _label(name, "name"), None
    assert peer_id is not None
    return None, _ident(peer_id, "peer_id")


def _cursor_out(cursor: tuple[float, str] | None) -> str | None:
    return None if cursor is None else history_cursor(*cursor)


def _cursor_in(text: str) -> tuple[float, str]:
    ts_text, sep, mid = text.partition(":")
    try:
        ts = float(ts_text)
    except ValueError:
        ts = math.nan
    if not sep or not math.isfinite(ts):
        raise errors.bad_params("before is not a cursor returned by history")
    return ts, _ident(mid, "the message id in before")


# -- the actor ---------------------------------------------------------------------


class Storage(Actor):
    name = "storage"
    keystore = KeystoreClient.dependency()

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.synchronous = settings_of(self.config).storage.synchronous  # settings.py
        self.store: Store | None = None
        self._lock = trio.Lock()
        self._queue: list[_Slot] = []  # writes waiting for the next batch
        self.writes = 0  # write operations run
        self.commits = 0  # batches they ran in (one commit each)
        self._messages = 0  # kept in memory: status() must not touch the database
        self._waiting = "waiting for the keystore's at-rest key"  # why there is no store
        self._settled = trio.Event()  # the keystore answered (key or reason), or we failed

    async def setup(self) -> None:
        assert self.home is not None, "storage needs a home"
        self.home.data.mkdir(parents=True, exist_ok=True, mode=0o700)

    async def run(self) -> None:
        await self.open_sealed()

    def _keystore_waits(self, reason: str) -> None:
        self._waiting = f"waiting for the keystore's at-rest key: {reason}"
        self._settled.set()

    async def open_sealed(self) -> None:
        """Get the at-rest key from the keystore (waiting while it is locked or down),
        then open the database with it; an error opening it stops the actor."""
        try:
            key = await self.keystore.until_answered(self._keystore_waits).subkey(
                sealing.PURPOSE)
            await self._open(key)
        finally:
            self._settled.set()

    async def _open(self, key: bytes) -> None:
        assert self.home is not None
        sync = self.synchronous
        path = self.home.data / "node.db"
        try:
            store = await trio.to_thread.run_sync(Store.open, path, sync, key)
            try:
                self._messages = await trio.to_thread.run_sync(store.message_count)
            except BaseException:
                store.close()
                raise
        except (schema.SchemaError, sqlite3.Error) as exc:
            # One readable line for whoever reads the log; the actor does not start.
            self._waiting = f"the database cannot be opened: {exc}"
            self.log.error("storage.cannot_open", db=str(path), error=str(exc))
            raise
        self.store = store
        self.log.info("storage.open", db=str(path), synchronous=sync,
                      schema_from=store.migrated_from, schema=schema.LATEST,
                      messages=self._messages, sealed_now=store.sealed_now)

    async def teardown(self) -> None:
        async with self._lock:
            # Writers still queued find no store and answer unavailable.
            store, self.store = self.store, None
            self._waiting = "the storage actor is stopping"
            if store is not None:
                await trio.to_thread.run_sync(store.close)

    def status(self) -> dict[str, Any]:
        if self.store is None:
            return {"db": None, "schema_version": None, "messages": None,
                    "waiting": self._waiting}
        return {"db": str(self.store.path), "schema_version": schema.LATEST,
                "messages": self._messages, "writes": self.writes, "commits": self.commits}

    def healthy(self) -> bool:
        return self.store is not None

    async def _opened(self) -> None:
        """Let a request made in the moment the actor starts wait for the key."""
        if self.store is None and not self._settled.is_set():
            with trio.move_on_after(OPEN_WAIT_S):
                await self._settled.wait()

    async def _read(self, op: str, *args: Any) -> Any:
        """Run `Store.<op>` in a worker thread, one database call at a time."""
        await self._opened()
        async with self._lock:
            store = self._open_store()
            result = await trio.to_thread.run_sync(capture, getattr(store, op), args)
        return self._unwrap(op, result)

    async def _write(self, op: str, *args: Any) -> Any:
        """Run the write `Store.<op>`; returns once it is committed.

        Group commit without a background task: a writer queues its operation and
        waits for the lock; whoever gets the lock runs everything queued by then as
        one batch (one fsync), so writers that queued during the previous commit
        share the next one. A writer whose operation an earlier lock holder already
        ran just collects its result.
        """
        await self._opened()
        slot = _Slot(op, args)
        self._queue.append(slot)
        try:
            while slot.result is None:
                async with self._lock:
                    if slot.result is not None:
                        break
                    store = self._open_store()
                    batch = self._queue[:MAX_BATCH]
                    del self._queue[:MAX_BATCH]
                    try:
                        results = await trio.to_thread.run_sync(
                            store.run_batch, [(getattr(store, s.op), s.args) for s in batch])
                    except BaseException:
                        # Cancelled before the thread started: nothing ran. The other
                        # writers' operations go back for the next lock holder.
                        self._queue[:0] = [s for s in batch if s is not slot]
                        raise
                    self.commits += 1
                    self.writes += len(batch)
                    for s, r in zip(batch, results):
                        s.result = r
        except BaseException:
            # Cancelled before any batch took it: it must not run later, unseen.
            if slot in self._queue:
                self._queue.remove(slot)
            raise
        return self._unwrap(op, slot.result)

    def _open_store(self) -> Store:
        if self.store is None:
            raise errors.unavailable(f"the database is not open ({self._waiting})")
        return self.store

    def _unwrap(self, op: str, result: Result) -> Any:
        try:
            return result.unwrap()
        except sqlite3.IntegrityError as exc:
            # Rules are checked before writing; a constraint firing anyway is a
            # conflict with state we did not foresee, still nothing was written.
            raise errors.BusError(errors.CONFLICT, f"refused by the database: {exc}") from None
        except sqlite3.Error as exc:
            self.log.error("storage.failed", op=op, error=str(exc))
            raise errors.BusError(
                errors.STORAGE, f"{op} failed in the database ({exc}); nothing was changed"
            ) from None

    def _emit(self, topic: str, data: dict[str, Any]) -> None:
        if self.runtime is not None:  # methods called directly in tests have no bus
            self.publish(topic, data)

    # -- kv --------------------------------------------------------------------------
    @rpc
    async def kv_get(self, key: str) -> dict[str, Any]:
        """Read a value.

        -> {"key": "dht.routing_table"}
        <- {"key": "dht.routing_table", "value": "<base64>", "updated_at": 1700000000.5}
        not_found if the key has no value.
        """
        value, updated_at = await self._read("kv_get", _ident(key, "key", MAX_KEY))
        return {"key": key, "value": value, "updated_at": updated_at}

    @rpc
    async def kv_put(self, key: str, value: bytes) -> dict[str, Any]:
        """Set a value (at most 1 MiB), replacing any previous one.

        -> {"key": "dht.routing_table", "value": "<base64>"}
        <- {"updated_at": 1700000000.5}
        """
        _ident(key, "key", MAX_KEY)
        _size(value, "value", MAX_VALUE)
        now = time.time()
        await self._write("kv_put", key, value, now)
        return {"updated_at": now}

    @rpc
    async def kv_delete(self, key: str) -> dict[str, Any]:
        """Remove a value.

        -> {"key": "dht.routing_table"}
        <- {"deleted": true}     false if there was none
        """
        return {"deleted": await self._write("kv_delete", _ident(key, "key", MAX_KEY))}

    # -- contacts --------------------------------------------------------------------
    @rpc
    async def contact_add(self, name: str, peer_id: str, addrs: list[str] | None = None,
                          verified: bool = False) -> dict[str, Any]:
        """Add a contact, or update the one with this peer id (name, addrs, verified).

        -> {"name": "alice", "peer_id": "12D3KooW...", "addrs": ["/ip4/.../tcp/4001"],
            "verified": false}
        <- {"created": true}     false if the contact existed and was updated
        conflict if another contact already has this name.
        """
        _label(name, "name")
        _ident(peer_id, "peer_id")
        addrs = addrs or []
        _count(len(addrs), "the number of addrs", 0, MAX_ADDRS)
        for i, a in enumerate(addrs):
            _ident(a, f"addrs[{i}]", MAX_ADDR)
        created = await self._write("contact_add", name, peer_id, addrs, verified,
                                 time.time())
        return {"created": created}

    @rpc
    async def contact_get(self, name: str | None = None,
                          peer_id: str | None = None) -> dict[str, Any]:
        """One contact, by name or by peer id.

        -> {"name": "alice"}  or  {"peer_id": "12D3KooW..."}
        <- {"name", "peer_id", "addrs": [..], "added_at", "verified": bool}
        not_found if there is none.
        """
        contact = await self._read("contact_get", *_contact_key(name, peer_id))
        return asdict(contact)

    @rpc
    async def contact_list(self) -> dict[str, Any]:
        """All contacts, by name.

        -> {}
        <- {"contacts": [{"name", "peer_id", "addrs", "added_at", "verified"}, ...]}
        """
        return {"contacts": [asdict(c) for c in await self._read("contact_list")]}

    @rpc
    async def contact_remove(self, name: str | None = None,
                             peer_id: str | None = None) -> dict[str, Any]:
        """Forget a contact, by name or by peer id.

        -> {"name": "alice"}  or  {"peer_id": "12D3KooW..."}
        <- {"removed": true}     false if there was none
        """
        return {"removed": await self._write("contact_remove",
                                          *_contact_key(name, peer_id))}

    # -- conversations ---------------------------------------------------------------
    @rpc
    async def conversation_put(self, id: str, kind: str, secret: bytes, members: list[str],
                               name: str = "",
                               created_at: float | None = None) -> dict[str, Any]:
        """Create a conversation, or update the name and members of an existing one.

        -> {"id": "c1f3...", "kind": "direct" | "room", "secret": "<base64, 16-64 bytes>",
            "members": ["12D3KooW...", ...], "name": "", "created_at": 1700000000.0}
        <- {"created": true, "changed": true}
        A direct conversation has exactly two members, a room 1-1024. Kind and secret
        define the conversation: a different one under an existing id is a conflict.
        """
        _ident(id, "id")
        _one_of(kind, "kind", ("direct", "room"))
        _size(secret, "secret", MAX_SECRET, MIN_SECRET)
        if kind == "direct":
            _idents(members, "members", 2, 2)
        else:
            _idents(members, "members", 1, MAX_MEMBERS)
        _label(name, "name", empty=True)
        created_at = time.time() if created_at is None else _time(created_at, "created_at")
        created, changed = await self._write("conversation_put", id, kind, name,
                                          secret, members, created_at)
        return {"created": created, "changed": changed}

    @rpc
    async def conversation_get(self, id: str) -> dict[str, Any]:
        """One conversation, with its secret.

        -> {"id": "c1f3..."}
        <- {"id", "kind", "name", "secret": "<base64>", "created_at", "members": [..]}
        not_found if there is none.
        """
        return asdict(await self._read("conversation_get", _ident(id, "id")))

    @rpc
    async def conversation_list(self, member: str | None = None) -> dict[str, Any]:
        """Conversations without their secrets, most recently active first; with
        `member`, only those that peer belongs to (whom to sync with on connect).

        -> {"member": "12D3KooW..."}     member optional
        <- {"conversations": [{"id", "kind", "name", "created_at",
                               "last_ts": float | null, "members": [..]}, ...]}
        """
        if member is not None:
            _ident(member, "member")
        return {"conversations": await self._read("conversation_list", member)}

    # -- messages --------------------------------------------------------------------
    @rpc
    async def message_put(self, id: str, conversation: str, author: str, seq: int,
                          ts: float, body: bytes, state: str,
                          recipients: list[str] | None = None) -> dict[str, Any]:
        """Store a message. Idempotent: storing the same message again changes nothing.

        -> {"id": "<content hash or author uuid>", "conversation": "c1f3...",
            "author": "12D3KooW...", "seq": 7, "ts": 1700000000.25,
            "body": "<base64 encrypted envelope, at most 1 MiB>",
            "state": "pending" | "sent" | "delivered" | "received",
            "recipients": ["12D3KooW...", ...]}   optional: queued in the outbox in the
                                                  same transaction (as outbox_add)
        <- {"stored": true}     false: it was already there, nothing changed
        conflict: the id is stored with other content, or the author's seq is taken by
        another id. not_found: no such conversation.
        Event after commit: storage.message.stored {id, conversation, author, seq}.
        """
        msg = Message(
            id=_ident(id, "id"), conversation=_ident(conversation, "conversation"),
            author=_ident(author, "author"), seq=_count(seq, "seq", 1, MAX_SEQ),
            ts=_time(ts, "ts"), body=_size(body, "body", MAX_BODY),
            state=_one_of(state, "state", MESSAGE_STATES), received_at=time.time())
        if recipients is not None:
            _idents(recipients, "recipients", 1, MAX_MEMBERS)
        stored = await self._write("message_put", msg, tuple(recipients or ()))
        if stored:
            self._messages += 1
            self._emit("storage.message.stored", {"id": id, "conversation": conversation,
                                                  "author": author, "seq": seq})
        return {"stored": stored}

    @rpc
    async def message_get(self, id: str) -> dict[str, Any]:
        """One message.

        -> {"id": "..."}
        <- {"id", "conversation", "author", "seq", "ts", "body": "<base64>", "state",
            "received_at"}
        not_found if there is none.
        """
        return asdict(await self._read("message_get", _ident(id, "id")))

    @rpc
    async def message_set_state(self, id: str, state: str) -> dict[str, Any]:
        """Advance a message's delivery state.

        -> {"id": "...", "state": "sent"}
        <- {"changed": true, "state": "sent"}
        Outgoing states only move forward (pending -> sent -> delivered); an older
        state is a late acknowledgement: changed false, state stays. An outgoing
        message never becomes "received" nor the reverse (conflict).
        Event after commit, if changed: storage.message.state {id, state}.
        """
        changed, now_state = await self._write("message_set_state", _ident(id, "id"),
                                            _one_of(state, "state", MESSAGE_STATES))
        if changed:
            self._emit("storage.message.state", {"id": id, "state": now_state})
        return {"changed": changed, "state": now_state}

    @rpc
    async def history(self, conversation: str, before: str | None = None,
                      before_ts: float | None = None, limit: int = 50) -> dict[str, Any]:
        """A page of a conversation, newest page first, oldest message first within
        the page.

        -> {"conversation": "c1f3...", "limit": 50}                 the newest page
        -> {"conversation": "c1f3...", "before": "<cursor>"}         the next older one
        -> {"conversation": "c1f3...", "before_ts": 1700000000.0}    older than a time
        <- {"messages": [{message as in message_get}, ...],
            "before": "<cursor>" | null}     null: no older messages
        """
        _ident(conversation, "conversation")
        _count(limit, "limit")
        if before is not None and before_ts is not None:
            raise errors.bad_params("give before or before_ts, not both")
        cursor = (_cursor_in(before) if before is not None else
                  (_time(before_ts, "before_ts"), "") if before_ts is not None else None)
        page, older = await self._read("history", conversation, cursor, limit)
        return {"messages": [asdict(m) for m in page], "before": _cursor_out(older)}

    @rpc
    async def unread_counts(self, marks: dict[str, float],
                            limit: int = MAX_LIMIT) -> dict[str, Any]:
        """Messages others wrote after each conversation's read mark, counted over
        the history index without reading them (at most `limit` each), all in one call
        (a conversation list); a conversation not stored is left out.

        -> {"marks": {"c1f3...": 1700000000.0, "9ab0...": 0.0}, "limit": 1000}
        <- {"counts": {"c1f3...": 3, "9ab0...": 0}}
        """
        _count(len(marks), "the number of conversations", 0, MAX_MARKS)
        for conversation, after_ts in marks.items():
            _ident(conversation, "a conversation in marks")
            _time(after_ts, f"marks[{conversation!r}]")
        _count(limit, "limit")
        return {"counts": await self._read("unread_counts", marks, limit)}

    @rpc
    async def author_ranges(self, conversation: str) -> dict[str, Any]:
        """What this node holds of a conversation, per author: what a peer compares
        with its own to find what either side is missing.

        -> {"conversation": "c1f3..."}
        <- {"authors": {"12D3KooW...": {"contiguous": 5, "max_seq": 9, "count": 8,
                                        "ranges": [[1, 5], [7, 9]]}, ...}}
        contiguous: every seq from 1 up to it is held (0 if seq 1 is missing);
        ranges: the held seqs as inclusive intervals, ascending.
        """
        return {"authors": await self._read("author_ranges",
                                          _ident(conversation, "conversation"))}

    @rpc
    async def messages_by_author(self, conversation: str, author: str, from_seq: int = 1,
                                 to_seq: int = MAX_SEQ, limit: int = 100) -> dict[str, Any]:
        """An author's messages by seq, from_seq <= seq <= to_seq (what a peer asks
        for after comparing author_ranges).

        -> {"conversation": "c1f3...", "author": "12D3KooW...", "from_seq": 6,
            "to_seq": 6, "limit": 100}
        <- {"messages": [{message as in message_get}, ...], "more": false}
        more: further messages in the range beyond limit; ask again from the last
        seq + 1.
        """
        _ident(conversation, "conversation")
        _ident(author, "author")
        _count(from_seq, "from_seq", 1, MAX_SEQ)
        _count(to_seq, "to_seq", from_seq, MAX_SEQ)
        _count(limit, "limit")
        page, more = await self._read("messages_by_author", conversation, author,
                                    from_seq, to_seq, limit)
        return {"messages": [asdict(m) for m in page], "more": more}

    @rpc
    async def messages_unqueued(self, conversation: str, author: str, from_seq: int = 1,
                                limit: int = 100) -> dict[str, Any]:
        """An author's messages still "pending" or "sent" that no delivery was ever
        queued for (written before the author knew of any other member), by seq.

        -> {"conversation": "c1f3...", "author": "12D3KooW...", "from_seq": 1,
            "limit": 100}
        <- {"messages": [{message as in message_get}, ...], "more": false}
        more: ask again from the last seq + 1.
        """
        _ident(conversation, "conversation")
        _ident(author, "author")
        _count(from_seq, "from_seq", 1, MAX_SEQ)
        _count(limit, "limit")
        page, more = await self._read("unqueued", conversation, author, from_seq, limit)
        return {"messages": [asdict(m) for m in page], "more": more}

    # -- outbox ----------------------------------------------------------------------
    @rpc
    async def outbox_add(self, message_id: str, recipients: list[str],
                         next_attempt_at: float | None = None) -> dict[str, Any]:
        """Queue a stored message for delivery to each recipient (a peer id or member).
        Recipients already queued for it are left as they are.

        -> {"message_id": "...", "recipients": ["12D3KooW...", ...],
            "next_attempt_at": 1700000000.0}      default: now
        <- {"added": 2}
        not_found if the message is not stored.
        """
        _ident(message_id, "message_id")
        _idents(recipients, "recipients", 1, MAX_MEMBERS)
        now = time.time()
        when = now if next_attempt_at is None else _time(next_attempt_at, "next_attempt_at")
        return {"added": await self._write("outbox_add", message_id, recipients,
                                        when, now)}

    @rpc
    async def outbox_due(self, now: float, limit: int = 100,
                         after: dict[str, Any] | None = None) -> dict[str, Any]:
        """Pending deliveries whose next attempt is at or before `now`, soonest first;
        `after`, the last entry of a page, continues with the next page.

        -> {"now": 1700000000.0, "limit": 100, "after"?: {"next_attempt_at",
            "message_id", "recipient"}}
        <- {"entries": [{"message_id", "recipient", "state": "pending", "attempts",
                         "next_attempt_at", "last_error", "created_at"}, ...]}
        """
        cursor = None
        if after is not None:
            at = after.get("next_attempt_at")
            if isinstance(at, bool) or not isinstance(at, (int, float)):
                raise errors.bad_params("after.next_attempt_at must be a number")
            mid, rcpt = after.get("message_id"), after.get("recipient")
            if not isinstance(mid, str) or not isinstance(rcpt, str):
                raise errors.bad_params("after needs message_id and recipient strings")
            cursor = (_time(float(at), "after.next_attempt_at"),
                      _ident(mid, "after.message_id"), _ident(rcpt, "after.recipient"))
        entries = await self._read("outbox_due", _time(now, "now"),
                                   _count(limit, "limit"), cursor)
        return {"entries": [asdict(e) for e in entries]}

    @rpc
    async def outbox_get(self, message_id: str) -> dict[str, Any]:
        """Delivery state of a message for each recipient.

        -> {"message_id": "..."}
        <- {"entries": [{outbox entry as in outbox_due}, ...]}   by recipient
        """
        entries = await self._read("outbox_get", _ident(message_id, "message_id"))
        return {"entries": [asdict(e) for e in entries]}

    @rpc
    async def outbox_done(self, message_id: str, recipient: str) -> dict[str, Any]:
        """The recipient has the message: stop delivering it to them.

        -> {"message_id": "...", "recipient": "12D3KooW..."}
        <- {"done": true}     false if it was no longer pending
        not_found if it was never queued.
        """
        return {"done": await self._write("outbox_done",
                                       _ident(message_id, "message_id"),
                                       _ident(recipient, "recipient"))}

    @rpc
    async def outbox_failed(self, message_id: str, recipient: str, error: str,
                            next_attempt_at: float | None) -> dict[str, Any]:
        """An attempt failed: retry at next_attempt_at, or give up if it is null.

        -> {"message_id": "...", "recipient": "12D3KooW...", "error": "dial timeout",
            "next_attempt_at": 1700000030.0 | null}
        <- {outbox entry as in outbox_due}     state "pending" or "failed"
        not_found if it was never queued. An entry no longer pending is unchanged.
        """
        _ident(message_id, "message_id")
        _ident(recipient, "recipient")
        _label(error, "error", MAX_ERROR)
        if next_attempt_at is not None:
            _time(next_attempt_at, "next_attempt_at")
        entry = await self._write("outbox_failed", message_id, recipient, error,
                               next_attempt_at)
        return asdict(entry)

