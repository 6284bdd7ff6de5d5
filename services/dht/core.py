"""The sans-IO Kademlia node: routing table, lookups, records, providers and timers.

Theory of operation
-------------------
`KadCore` never touches a socket or a clock. Its caller (the dht actor shell, or the
simulator in `sim.py`) feeds it four kinds of input and performs what comes out:

    input                                           output
    handle_request(msg, sender, now)          ->    the reply Message, or None (no
                                                    reply: ADD_PROVIDER), or raises
                                                    RequestRejected (reset the stream)
    find_node / find_peer / get_value /
    get_providers / put_value / provide /
    bootstrap (..., now)                      ->    (operation id, [actions])
    probe(peer, now)                          ->    one SendRequest
    handle_reply(request_id, msg, now),
    handle_failure(request_id, now, refused)  ->    [actions]
    tick(now, rng)                            ->    [actions]; call it again at
                                                    next_deadline() at the latest

Actions are `SendRequest` (open a stream to the peer, write the message, and unless
`expects_reply` is False read one reply and pass it to `handle_reply`, or report
`handle_failure`), `CancelRequest` (the answer is no longer wanted) and the results
`LookupDone`, `PutDone` and `ProvideDone`.

Every request has a deadline; `tick` fails the ones past it, which counts against the
peer in the routing table. Peers enter the table only when they prove they serve the
DHT: by answering one of our queries, or when the shell reports an inbound request
from a server-mode peer. The shell also keeps `connected` (peers it is connected to,
with addresses) so FIND_NODE can name a connected peer that is not in the table. `tick` also starts bucket refreshes and the self-lookup
(every `refresh_interval`), republishes what we provide (every 22 h), and sweeps
expired records and providers.

Errors: anything a remote peer sends that is malformed, of the wrong type, over a
limit, or too frequent is refused with `RequestRejected` (as a request) or counted as a
failed query (as a reply), and leaves no state behind. A local caller's mistake (an
invalid record of our own) raises `RecordError` before anything is sent.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from p2pm.common.identity import is_multihash
from p2pm.common.log import get_logger
from p2pm.common.protobuf import DecodeError

from .keyspace import MAX_REFRESH_CPL, kad_key, random_key_in_bucket
from .lookup import Lookup, LookupKind, LookupResult
from .messages import Message, MessageType, Peer, Record, decode_message
from .ratelimit import RateLimiter
from .records import (PROVIDER_REPUBLISH, ProviderStore, RecordError, RecordStore,
                      Validators)
from .routing import RoutingTable

log = get_logger("dht.core")

MAINTENANCE_INTERVAL = 60.0


class RequestRejected(Exception):
    """The remote peer's request is refused (malformed, invalid, or over a limit)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    k: int = 20
    alpha: int = 3
    request_timeout: float = 10.0
    quorum: int = 3
    max_failures: int = 2
    refresh_interval: float = 600.0
    provider_republish: float = PROVIDER_REPUBLISH
    rate: float = 20.0  # requests per second per remote peer, sustained
    burst: float = 50.0


# -- actions ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True, slots=True)
class SendRequest:
    request_id: int
    peer: Peer
    message: Message
    deadline: float
    expects_reply: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class CancelRequest:
    request_id: int


@dataclasses.dataclass(frozen=True, slots=True)
class LookupDone:
    op_id: int
    purpose: str  # "user", "find_peer", "refresh", "put", "provide"
    result: LookupResult


@dataclasses.dataclass(frozen=True, slots=True)
class PutDone:
    op_id: int
    key: bytes
    stored_at: tuple[bytes, ...]
    failed: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class ProvideDone:
    op_id: int
    key: bytes
    sent_to: tuple[bytes, ...]


Action = SendRequest | CancelRequest | LookupDone | PutDone | ProvideDone


@dataclasses.dataclass(slots=True)
class _Pending:
    peer: Peer
    msg_type: int
    deadline: float
    op_id: int | None  # the lookup or put this request belongs to, if any


@dataclasses.dataclass(slots=True)
class _Op:
    purpose: str
    lookup: Lookup
    record: Record | None = None  # put: what to store at the closest peers
    refresh_bucket: int | None = None


@dataclasses.dataclass(slots=True)
class _Put:
    key: bytes
    waiting: set[int]
    stored: list[bytes]
    failed: list[bytes]


class KadCore:
    """One node's DHT. The shell tells it what happened to the node through the methods
    under "what the shell tells the core" (connections, its own addresses, its mode as
    reachability changes: spec, only publicly reachable nodes serve; client-mode nodes
    only query) and reads the rest."""

    def __init__(self, local: Peer, validators: Validators, config: Config = Config(),
                 server_mode: bool = True) -> None:
        self.local = local
        self.config = config
        self.server_mode = server_mode
        self.validators = validators
        self.routing = RoutingTable(local.id, k=config.k, max_failures=config.max_failures,
                                    refresh_interval=config.refresh_interval)
        self.records = RecordStore(validators)
        self.providers = ProviderStore()
        self.limiter = RateLimiter(config.rate, config.burst)
        self._next_id = 1
        self._pending: dict[int, _Pending] = {}
        self._ops: dict[int, _Op] = {}
        self._puts: dict[int, _Put] = {}
        self._provided: dict[bytes, float] = {}  # key -> when to republish
        self._refreshing: set[int] = set()
        self._next_maintenance = float("-inf")  # the first tick bootstraps the table
        # Peers the shell is connected to, with their addresses (DHT servers or not).
        self.connected: dict[bytes, Peer] = {}
        self._self_lookup_due = 0.0

    # -- what the shell tells the core -----------------------------------------------------

    def add_peer(self, peer: Peer, now: float) -> None:
        """A peer known to serve the DHT (remembered from the last run, or connected
        and speaking the protocol): a candidate for the routing table."""
        self.routing.add(peer, now)

    def peer_connected(self, peer: Peer) -> None:
        """The node is connected to `peer` (a DHT server or not: FIND_NODE names it)."""
        self.connected[peer.id] = peer

    def peer_disconnected(self, peer_id: bytes) -> None:
        self.connected.pop(peer_id, None)

    def connections_reset(self) -> None:
        """Forget every connection (the transport restarted; the shell re-reads them)."""
        self.connected.clear()

    def set_local_addrs(self, local: Peer) -> None:
        """The addresses this node announces (as a provider, in FIND_NODE replies)."""
        if local.id != self.local.id:
            raise ValueError("set_local_addrs: another peer id than this node's")
        self.local = local

    def set_server_mode(self, server: bool) -> bool:
        """Serve the DHT (True) or only query it; whether that changed anything."""
        changed = self.server_mode != server
        self.server_mode = server
        return changed

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    # -- server side --------------------------------------------------------------------

    def handle_request_bytes(self, data: bytes, sender: Peer, now: float,
                             sender_is_server: bool = False) -> Message | None:
        """`handle_request` for raw stream bytes; a decoding error is a rejection."""
        try:
            msg = decode_message(data)
        except DecodeError as exc:
            raise RequestRejected(f"malformed request: {exc}") from None
        return self.handle_request(msg, sender, now, sender_is_server)

    def handle_request(self, msg: Message, sender: Peer, now: float,
                       sender_is_server: bool = False) -> Message | None:
        """Answer one inbound request; None means the type takes no reply."""
        if not self.server_mode:
            raise RequestRejected("client mode: this node does not serve the DHT")
        if not self.limiter.allow(sender.id, now):
            raise RequestRejected("rate limited")
        handler = _HANDLERS.get(msg.type)
        if handler is None:
            raise RequestRejected(f"unknown message type {msg.type}")
        reply = handler(self, msg, sender, now)
        if sender_is_server:
            self.routing.add(Peer(sender.id, sender.addrs), now)
        return reply

    def _closer(self, key: bytes, sender: Peer) -> tuple[Peer, ...]:
        return tuple(self.routing.closest(kad_key(key), self.config.k, exclude=sender.id))

    def _need_key(self, msg: Message) -> bytes:
        if not msg.key:
            raise RequestRejected(f"{MessageType(msg.type).name} without a key")
        return msg.key

    def _on_find_node(self, msg: Message, sender: Peer, now: float) -> Message:
        key = self._need_key(msg)
        closer = self._closer(key, sender)
        # The spec's FIND_NODE exception, which go- and py-libp2p implement: a peer we
        # are connected to is named even when it is no DHT server (a client-mode or
        # DHT-less peer can only be found this way).
        target = self.connected.get(key)
        if target is not None and target.id != sender.id and target.addrs \
                and all(p.id != key for p in closer):
            closer = (target, *closer[:self.config.k - 1])
        return Message(type=MessageType.FIND_NODE, closer_peers=closer)

    def _on_get_value(self, msg: Message, sender: Peer, now: float) -> Message:
        key = self._need_key(msg)
        value = self.records.get(key, now)
        record = Record(key=key, value=value) if value is not None else None
        return Message(type=MessageType.GET_VALUE, key=key, record=record,
                       closer_peers=self._closer(key, sender))

    def _on_put_value(self, msg: Message, sender: Peer, now: float) -> Message:
        key = self._need_key(msg)
        if msg.record is None or msg.record.key != key:
            raise RequestRejected("PUT_VALUE needs a record whose key is the message key")
        try:
            stored = self.records.put(key, msg.record.value, now)
        except RecordError as exc:
            log.debug("dht.put_rejected", peer=sender.id.hex()[:16], reason=str(exc))
            raise RequestRejected(f"record refused: {exc}") from None
        if not stored:
            raise RequestRejected("a better record is held for this key")
        return Message(type=MessageType.PUT_VALUE, key=key, record=msg.record)

    def _on_add_provider(self, msg: Message, sender: Peer, now: float) -> None:
        key = self._need_key(msg)
        if not is_multihash(key):
            raise RequestRejected("ADD_PROVIDER key is not a multihash")
        mine = [p for p in msg.provider_peers if p.id == sender.id]
        if not mine:
            raise RequestRejected("ADD_PROVIDER names no provider matching the sender")
        addrs = mine[0].addrs or sender.addrs
        if not self.providers.add(key, Peer(sender.id, addrs), now):
            raise RequestRejected("provider store full")
        return None

    def _on_get_providers(self, msg: Message, sender: Peer, now: float) -> Message:
        key = self._need_key(msg)
        if not is_multihash(key):
            raise RequestRejected("GET_PROVIDERS key is not a multihash")
        providers = tuple(self.providers.get(key, now)[:self.config.k])
        return Message(type=MessageType.GET_PROVIDERS, key=key, provider_peers=providers,
                       closer_peers=self._closer(key, sender))

    def _on_ping(self, msg: Message, sender: Peer, now: float) -> Message:
        return Message(type=MessageType.PING)

    # -- client side: starting operations -----------------------------------------------

    def find_node(self, key: bytes, now: float,
                  purpose: str = "user") -> tuple[int, list[Action]]:
        return self._start(LookupKind.FIND_NODE, key, now, purpose)

    def find_peer(self, peer_id: bytes, now: float) -> tuple[int, list[Action]]:
        """A FIND_NODE lookup for one peer that ends once its addresses are known
        (`LookupDone.result.found`)."""
        return self._start(LookupKind.FIND_NODE, peer_id, now, "find_peer",
                           stop_when_found=True)

    def bootstrap(self, seeds: list[Peer], now: float) -> tuple[int, list[Action]]:
        """Look ourselves up through `seeds` (configured or remembered peers, not yet
        proven) and the table: the peers that answer join the table, and the walk
        fills the buckets near us."""
        return self._start(LookupKind.FIND_NODE, self.local.id, now, "refresh",
                           extra_seeds=seeds)

    def probe(self, peer: Peer, now: float) -> SendRequest:
        """Ask one peer a FIND_NODE for our own ID outside any lookup: a peer that
        answers has proven it serves the DHT and joins the table."""
        return self._send(peer, Message(type=MessageType.FIND_NODE, key=self.local.id),
                          now, None)

    def get_value(self, key: bytes, now: float) -> tuple[int, list[Action]]:
        return self._start(LookupKind.GET_VALUE, key, now, "user")

    def get_providers(self, key: bytes, now: float) -> tuple[int, list[Action]]:
        if not is_multihash(key):
            raise ValueError("provider keys are multihashes")
        return self._start(LookupKind.GET_PROVIDERS, key, now, "user")

    def put_value(self, key: bytes, value: bytes, now: float) -> tuple[int, list[Action]]:
        """Store locally, then at the k closest peers. RecordError if invalid."""
        if not self.records.put(key, value, now):
            raise RecordError("a better record is already held for this key")
        return self._start(LookupKind.FIND_NODE, key, now, "put",
                           record=Record(key=key, value=value))

    def provide(self, key: bytes, now: float) -> tuple[int, list[Action]]:
        """Announce ourselves as a provider of `key`, and keep doing so every 22 h."""
        if not is_multihash(key):
            raise ValueError("provider keys are multihashes")
        self.providers.add(key, self.local, now)
        self._provided[key] = now + self.config.provider_republish
        return self._start(LookupKind.FIND_NODE, key, now, "provide")

    def stop_providing(self, key: bytes) -> None:
        self._provided.pop(key, None)

    def _start(self, kind: LookupKind, key: bytes, now: float, purpose: str,
               record: Record | None = None, refresh_bucket: int | None = None,
               stop_when_found: bool = False,
               extra_seeds: list[Peer] | None = None) -> tuple[int, list[Action]]:
        if not key:
            raise ValueError("empty key")
        local_value = self.records.get(key, now) if kind is LookupKind.GET_VALUE else None
        seeds = self.routing.closest(kad_key(key), self.config.k)
        lookup = Lookup(
            kind, key, seeds + list(extra_seeds or ()),
            local_id=self.local.id, k=self.config.k, alpha=self.config.alpha,
            timeout=self.config.request_timeout, quorum=self.config.quorum,
            validate=lambda k, v: self.validators.validate(k, v, now),
            select=self.validators.select, local_value=local_value,
            stop_when_found=stop_when_found)
        op_id = self._new_id()
        self._ops[op_id] = _Op(purpose, lookup, record, refresh_bucket)
        return op_id, self._advance(op_id, now)

    # -- client side: driving -----------------------------------------------------------

    def _advance(self, op_id: int, now: float) -> list[Action]:
        op = self._ops[op_id]
        lookup = op.lookup
        actions: list[Action] = []
        for peer in lookup.poll(now):
            actions.append(self._send(peer, Message(type=lookup.kind.value, key=lookup.key),
                                      now, op_id))
        if lookup.done:
            actions += self._complete(op_id, now)
        return actions

    def _send(self, peer: Peer, msg: Message, now: float, op_id: int | None,
              expects_reply: bool = True) -> SendRequest:
        rid = self._new_id()
        deadline = now + self.config.request_timeout
        if expects_reply:
            self._pending[rid] = _Pending(peer, msg.type, deadline, op_id)
        return SendRequest(rid, peer, msg, deadline, expects_reply)

    def _complete(self, op_id: int, now: float) -> list[Action]:
        op = self._ops.pop(op_id)
        result = op.lookup.result()
        actions: list[Action] = []
        for rid in [r for r, p in self._pending.items() if p.op_id == op_id]:
            del self._pending[rid]
            actions.append(CancelRequest(rid))
        self.routing.touch_bucket(op.lookup.target, now)
        if op.refresh_bucket is not None:
            self._refreshing.discard(op.refresh_bucket)
        actions.append(LookupDone(op_id, op.purpose, result))
        if result.value is not None and result.outdated:
            record = Record(key=result.key, value=result.value)
            actions += [self._send(p, Message(type=MessageType.PUT_VALUE, key=result.key,
                                              record=record), now, None)
                        for p in result.outdated]
        if op.purpose == "put" and op.record is not None:
            actions += self._fan_out_put(op_id, op.record, result, now)
        elif op.purpose == "provide":
            announce = Message(type=MessageType.ADD_PROVIDER, key=result.key,
                               provider_peers=(self.local,))
            sends = [self._send(p, announce, now, None, expects_reply=False)
                     for p in result.closest]
            actions += sends
            actions.append(ProvideDone(op_id, result.key, tuple(p.id for p in result.closest)))
        return actions

    def _fan_out_put(self, op_id: int, record: Record, result: LookupResult,
                     now: float) -> list[Action]:
        msg = Message(type=MessageType.PUT_VALUE, key=record.key, record=record)
        sends = [self._send(p, msg, now, op_id) for p in result.closest]
        if not sends:
            return [PutDone(op_id, record.key, (), ())]
        self._puts[op_id] = _Put(record.key, {s.request_id for s in sends}, [], [])
        return list(sends)

    def _settle_put(self, rid: int, pending: _Pending, ok: bool) -> list[Action]:
        put = self._puts.get(pending.op_id) if pending.op_id is not None else None
        if put is None or rid not in put.waiting:
            return []
        put.waiting.discard(rid)
        (put.stored if ok else put.failed).append(pending.peer.id)
        if put.waiting:
            return []
        del self._puts[pending.op_id]  # type: ignore[arg-type]
        return [PutDone(pending.op_id, put.key, tuple(put.stored), tuple(put.failed))]  # type: ignore[arg-type]

    def handle_reply(self, request_id: int, reply: Message | bytes, now: float) -> list[Action]:
        """The answer to one of our requests (raw bytes are decoded here)."""
        pending = self._pending.get(request_id)
        if pending is None:
            return []  # cancelled, timed out, or never ours: nothing to learn from it
        if isinstance(reply, (bytes, bytearray, memoryview)):
            try:
                reply = decode_message(bytes(reply))
            except DecodeError as exc:
                log.info("dht.bad_reply", peer=pending.peer.id.hex()[:16], reason=str(exc))
                return self.handle_failure(request_id, now)
        if reply.type != pending.msg_type:
            log.info("dht.bad_reply", peer=pending.peer.id.hex()[:16],
                     reason=f"type {reply.type} for a {pending.msg_type} request")
            return self.handle_failure(request_id, now)
        del self._pending[request_id]
        self.routing.peer_responded(pending.peer, now)
        actions = self._settle_put(request_id, pending, True)
        if pending.op_id is not None and pending.op_id in self._ops:
            self._ops[pending.op_id].lookup.on_reply(pending.peer.id, reply)
            actions += self._advance(pending.op_id, now)
        return actions

    def handle_failure(self, request_id: int, now: float,
                       refused: bool = False) -> list[Action]:
        """One of our requests failed: no connection or no answer in time, or, with
        `refused`, the peer reset the stream after reading it (it is alive but said no,
        e.g. it holds a newer record or rate-limits us: no mark against its liveness)."""
        pending = self._pending.pop(request_id, None)
        if pending is None:
            return []
        return self._failed(request_id, pending, now, refused)

    def _failed(self, rid: int, pending: _Pending, now: float,
                refused: bool = False) -> list[Action]:
        if not refused:
            self.routing.peer_failed(pending.peer.id)
        actions = self._settle_put(rid, pending, False)
        if pending.op_id is not None and pending.op_id in self._ops:
            lookup = self._ops[pending.op_id].lookup
            if refused:
                lookup.on_refused(pending.peer.id)
            else:
                lookup.on_failure(pending.peer.id)
            actions += self._advance(pending.op_id, now)
        return actions

    # -- timers -------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When `tick` is due next (-inf before the first tick: call it at start)."""
        return min([self._next_maintenance, *self._provided.values(),
                    *(p.deadline for p in self._pending.values())])

    def tick(self, now: float, rng: random.Random) -> list[Action]:
        """Everything due at `now`: timeouts, refreshes, republishing, expiry."""
        actions: list[Action] = []
        for rid in [r for r, p in self._pending.items() if p.deadline <= now]:
            pending = self._pending.pop(rid, None)
            if pending is not None:
                actions += self._failed(rid, pending, now)
        for key in [k for k, due in self._provided.items() if due <= now]:
            actions += self.provide(key, now)[1]
        if self._next_maintenance <= now:
            self._next_maintenance = now + MAINTENANCE_INTERVAL
            self.records.expire(now)
            self.providers.expire(now)
            actions += self._refresh(now, rng)
        return actions

    def _refresh(self, now: float, rng: random.Random) -> list[Action]:
        actions: list[Action] = []
        if len(self.routing) == 0:
            return actions
        for index in self.routing.buckets_to_refresh(now, MAX_REFRESH_CPL):
            if index in self._refreshing:
                continue
            self._refreshing.add(index)
            key = random_key_in_bucket(self.routing.local_point, index, rng)
            actions += self._start(LookupKind.FIND_NODE, key, now, "refresh",
                                   refresh_bucket=index)[1]
        if -1 not in self._refreshing and now >= self._self_lookup_due:
            self._refreshing.add(-1)  # the self-lookup, which fills the deep buckets
            self._self_lookup_due = now + self.config.refresh_interval
            actions += self._start(LookupKind.FIND_NODE, self.local.id, now, "refresh",
                                   refresh_bucket=-1)[1]
        return actions

    def statistics(self) -> dict[str, int]:
        return {"routing_peers": len(self.routing), "records": len(self.records),
                "provider_keys": self.providers.key_count(), "lookups": len(self._ops),
                "pending_requests": len(self._pending), "rate_limited": self.limiter.refused}


_HANDLERS: dict[int, Callable[[KadCore, Message, Peer, float], Message | None]] = {
    MessageType.FIND_NODE: KadCore._on_find_node,
    MessageType.GET_VALUE: KadCore._on_get_value,
    MessageType.PUT_VALUE: KadCore._on_put_value,
    MessageType.ADD_PROVIDER: KadCore._on_add_provider,
    MessageType.GET_PROVIDERS: KadCore._on_get_providers,
    MessageType.PING: KadCore._on_ping,
}
