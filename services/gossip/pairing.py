"""Pairwise key exchange, the actor side of channel.py: our Olm device, the prekey
bundles of peers, the Olm sessions with each of them, and payloads owed to them.

What another part gets from here: `send(peer, kind, body)` queues a small secret (a
room's sender key, an admission) for `peer`, encrypted so that only that peer reads
it, and delivered over `/p2pm/keys/1.0.0` as soon as the peer is reachable;
`on(kind, handler)` is called with what peers send us. The payload kinds are
channel.KINDS. A handler raises PayloadRefused for a payload it will not take (the
sender hears "refused"); whatever else it raises is a bug, logged, and refused too.

Keys and where they live. The device (a vodozemac Account: curve25519 identity key,
one-time keys, fallback key) and each peer's sessions are pickled by vodozemac under a
key derived from `gossip-sessions-v1`, the keystore's subkey for this purpose (the
identity key never leaves the keystore), and stored in storage's kv, which seals every
value again under storage's own at-rest key. So a copy of `data/` without the
passphrase reveals neither. The rule of persistence (channel.py) is kept: a peer's
sessions are stored after every encrypt or decrypt, before the frame goes out, and the
device after a one-time key was used, before the ACK goes out.

Bundles. Ours is signed by the keystore (domain sessions.PREKEY_DOMAIN) and so bound
to our peer ID: the safety number, which covers the peer ID, covers the Olm keys too.
It travels in a first contact's PUSH (`want` asks for the peer's in the ACK) and is
published in the DHT as `/p2pm/prekeys/<peer id>` (refreshed before it expires, and
soon after a one-time key of ours was used), where a contact can fetch it while we are
offline. A peer's bundle is accepted only with a valid signature by the key inside its
peer ID, within its time window.

Sending. Payloads wait in the channel Queue (bounded per peer; a full queue raises
QueueFull to the caller: nothing is dropped silently) and are stored with it, so they
survive a restart. `maintain(now)` flushes every peer that is due and connected; a
failed exchange backs off (channel.Queue). Each flush is one exchange on one stream.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import vodozemac

from p2pm.common import errors, wire
from p2pm.common.streams import StreamError

from . import channel as ch
from . import sessions as ss
from .context import Context

SESSIONS_PURPOSE = "gossip-sessions-v1"  # the keystore subkey the pickles are under
DEVICE_KEY = "gossip.keys.device"
PEER_KEY = "gossip.keys.session."  # + peer id
OUTBOX_KEY = "gossip.keys.out"
PREKEYS_LABEL = "prekeys"  # DHT record /p2pm/prekeys/<peer id>
BUNDLE_TTL_S = 24 * 3600.0
BUNDLE_REFRESH_S = 6 * 3600.0
REPUBLISH_AFTER_USE_S = 30.0  # a one-time key was used: publish a fresh bundle soon
EXCHANGE_TIMEOUT_S = 20.0  # a peer that never answers a PUSH costs us this, then backs off
MAX_BUNDLES = 1024  # peers' bundles cached in memory (least recently learnt evicted)

Handler = Callable[[str, dict[str, Any]], Awaitable[None]]
STREAM_ERRORS = (StreamError, ch.ChannelError, trio.TooSlowError, trio.EndOfChannel,
                 trio.ClosedResourceError)


class PayloadRefused(Exception):
    """A handler will not take this payload; the sender hears 'refused'."""


class Pairing:
    def __init__(self, ctx: Context, streams: Callable[[], Any],
                 connected: Callable[[str], bool]) -> None:
        self.ctx = ctx
        self._streams = streams
        self._connected = connected
        self.device: ss.Device | None = None
        self.book: ch.Book | None = None
        self.queue = ch.Queue()
        self.seen = ch.Seen()
        self.bundles: dict[str, ss.Bundle] = {}
        self._handlers: dict[str, Handler] = {}
        self._pickle_key = b""
        self._signed: tuple[bytes, float] | None = None  # our signed bundle, when made
        self._publish_at = 0.0
        self._busy: set[str] = set()  # peers with an exchange under way
        self._loaded_peers: set[str] = set()
        self._used_keys: dict[str, set[str]] = {}  # peer -> one-time key ids we used
        # payloads a handler refused: a resend (our ACK lost) is refused again, not
        # acknowledged as delivered because Seen has its id (bounded, oldest out)
        self._refused: dict[tuple[str, str], None] = {}

    # -- what other parts use ----------------------------------------------------------
    def on(self, kind: str, handler: Handler) -> None:
        if kind not in ch.KINDS:
            raise ValueError(f"unknown payload kind {kind!r}")
        self._handlers[kind] = handler

    async def send(self, peer: str, kind: str, body: dict[str, Any]) -> str:
        """Queue `body` for `peer`; its payload id. QueueFull if the peer's queue is."""
        plaintext = ch.encode_payload(ch.Payload(kind, body))
        pid = self.queue.put(peer, plaintext, self.ctx.now())
        await self._save_outbox()
        if self._connected(peer):
            self.ctx.spawn(self.flush, peer)
        return pid

    def pending(self, peer: str) -> int:
        return len(self.queue.pending(peer))

    def learn_bundle(self, peer: str, raw: bytes) -> ss.Bundle:
        """A peer's bundle (from a PUSH, an ACK, an invite or the DHT); BundleError
        unless it is signed by the key inside `peer` and current."""
        bundle = ss.Bundle.decode(raw, peer, time.time())
        self.bundles.pop(peer, None)
        self._used_keys.pop(peer, None)
        self.bundles[peer] = bundle
        while len(self.bundles) > MAX_BUNDLES:
            self._used_keys.pop(self.bundles.pop(next(iter(self.bundles))).peer, None)
        return bundle

    def statistics(self) -> dict[str, Any]:
        return {"queued": len(self.queue), "peers_with_sessions": len(self.book or ()),
                "bundles": len(self.bundles),
                "one_time_keys": self.device.one_time_key_count if self.device else 0}

    # -- loading and keeping state -----------------------------------------------------
    async def load(self) -> None:
        key = await self.ctx.keystore.until_answered().subkey(SESSIONS_PURPOSE)
        # vodozemac wants 32 bytes; ours is bound to this use only
        self._pickle_key = hashlib.blake2b(key, digest_size=32,
                                           person=b"p2pm-olm-pickle").digest()
        raw = await self.ctx.storage.kv_get(DEVICE_KEY)
        if raw is None:
            self.device = ss.Device.new()
            await self._save_device()
        else:
            self.device = ss.Device.unpickle(raw, self._pickle_key)
            if self.device.replenish():
                await self._save_device()
        self.book = ch.Book(self.device.account)
        await self._load_outbox()

    async def _save_device(self) -> None:
        assert self.device is not None
        await self.ctx.storage.kv_put(DEVICE_KEY, self.device.pickle(self._pickle_key))

    async def _load_peer(self, peer: str) -> None:
        assert self.book is not None
        if peer in self._loaded_peers and peer in self.book:
            return
        raw = await self.ctx.storage.kv_get(PEER_KEY + peer)
        if raw is not None:
            try:
                self.book.unpickle_peer(peer, raw, self._pickle_key)
            except ch.BadPickle as exc:
                self.ctx.counters["keys_bad_pickle"] += 1
                self.ctx.log.warning("gossip.keys_bad_pickle", peer=peer, error=str(exc))
        self._loaded_peers.add(peer)

    async def _save_peer(self, peer: str) -> None:
        assert self.book is not None
        data = self.book.pickle_peer(peer, self._pickle_key)
        if data is None:
            await self.ctx.storage.kv_delete(PEER_KEY + peer)
        else:
            await self.ctx.storage.kv_put(PEER_KEY + peer, data)

    async def _save_outbox(self) -> None:
        doc = [{"peer": q_peer, "p": wire.b64e(q.plaintext)}
               for q_peer in self.queue.peers() for q in self.queue.pending(q_peer)]
        await self.ctx.storage.kv_put(OUTBOX_KEY, wire.dumps(doc))

    async def _load_outbox(self) -> None:
        raw = await self.ctx.storage.kv_get(OUTBOX_KEY)
        try:
            doc = wire.loads(raw) if raw is not None else []
        except ValueError:
            doc = None
        if not isinstance(doc, list):
            self.ctx.counters["keys_outbox_unreadable"] += 1
            doc = []
        for entry in doc:  # ours, sealed at rest; checked all the same
            try:
                self.queue.put(entry["peer"], wire.b64d(entry["p"], "payload"),
                               self.ctx.now())
            except (KeyError, TypeError, ValueError, errors.BusError, ch.QueueFull):
                self.ctx.counters["keys_outbox_unreadable"] += 1

    # -- our bundle --------------------------------------------------------------------
    async def my_bundle(self) -> bytes:
        """Our signed bundle, made again when it is half-way to expiry or our
        one-time keys changed."""
        assert self.device is not None
        now = time.time()
        changed = self.device.replenish()
        if changed:
            await self._save_device()
        if self._signed is None or changed or now - self._signed[1] > BUNDLE_REFRESH_S:
            payload = self.device.bundle(self.ctx.me, now, BUNDLE_TTL_S)
            signature = await self.ctx.keystore.sign(ss.PREKEY_DOMAIN, payload)
            self._signed = (ss.Bundle.encode(payload, signature), now)
            self._publish_at = 0.0
        return self._signed[0]

    async def publish_bundle(self) -> None:
        try:
            await self.ctx.dht.with_options(timeout=40, retries=0).put(
                f"/p2pm/{PREKEYS_LABEL}/{self.ctx.me}", await self.my_bundle(),
                ttl=BUNDLE_TTL_S)
        except errors.BusError as exc:
            self.ctx.log.info("gossip.prekeys_not_published", error=exc.message)

    async def bundle_of(self, peer: str) -> ss.Bundle | None:
        """The peer's bundle: cached, else its DHT record (None if neither)."""
        if peer in self.bundles and self.bundles[peer].exp > time.time():
            return self.bundles[peer]
        try:
            got = await self.ctx.dht.with_options(timeout=20, retries=0).get(
                f"/p2pm/{PREKEYS_LABEL}/{peer}")
        except errors.BusError:
            return None
        if got is None:
            return None
        try:
            return self.learn_bundle(peer, wire.b64d(got["value"], "value"))
        except (ss.BundleError, errors.BusError, KeyError, TypeError) as exc:
            self.ctx.counters["prekeys_bad"] += 1
            self.ctx.log.info("gossip.prekeys_bad", peer=peer, error=str(exc))
            return None

    # -- maintenance -------------------------------------------------------------------
    def maintain(self, now: float) -> None:
        """Flush every peer due and connected; publish our bundle when it is due."""
        for peer in self.queue.due(now):
            if peer not in self._busy and self._connected(peer):
                self.ctx.spawn(self.flush, peer)
        if now >= self._publish_at:
            self._publish_at = now + BUNDLE_REFRESH_S
            self.ctx.spawn(self.publish_bundle)

    # -- the initiator ------------------------------------------------------------------
    async def flush(self, peer: str) -> None:
        """One exchange with `peer`: the next queued payloads, and its ACK."""
        if peer in self._busy or self.book is None or not self.queue.pending(peer):
            return
        self._busy.add(peer)
        try:
            await self._load_peer(peer)
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                await self._flush(peer)
        except (*STREAM_ERRORS, ss.BundleError, ch.NoSession, errors.BusError) as exc:
            self.ctx.counters["keys_exchange_failed"] += 1
            self.queue.failed(peer, self.ctx.now())
            self.ctx.log.info("gossip.keys_exchange_failed", peer=peer, error=str(exc))
        finally:
            self._busy.discard(peer)

    async def _flush(self, peer: str) -> None:
        assert self.book is not None
        bundle = self.bundles.get(peer)
        if bundle is None or bundle.exp <= time.time():
            bundle = await self._ask_bundle(peer)
        identity_key = _identity_key(bundle)
        one_time, mine = None, None
        if not self.book.has_session(peer, identity_key):
            one_time, mine = self._one_time_key(bundle), await self.my_bundle()
        push = ch.prepare_push(self.book, self.queue, peer, identity_key, one_time,
                               self.ctx.now(), bundle=mine)
        if push is None:
            return
        await self._save_peer(peer)  # the ratchet moved: stored before the frame leaves
        ack = await self._exchange(peer, push)
        outcome = ch.apply_ack(self.book, self.queue, peer, push, ack, self.ctx.now())
        if outcome.no_session:
            self.bundles.pop(peer, None)  # its one-time key was used up: ask again
            await self._save_peer(peer)
        await self._save_outbox()
        counters = self.ctx.counters
        counters["keys_delivered"] += len(outcome.delivered)
        counters["keys_refused"] += len(outcome.refused)
        for q in outcome.refused:
            self.ctx.log.info("gossip.keys_refused", peer=peer, id=q.id)

    def _one_time_key(self, bundle: ss.Bundle) -> vodozemac.Curve25519PublicKey | None:
        """A key of the peer's bundle we have not started a session with yet, else its
        fallback key (which the peer accepts more than once); a one-time key is
        consumed by the peer's first session with it, so one used is never offered
        twice from the same bundle."""
        used = self._used_keys.setdefault(bundle.peer, set())
        for key_id, key in bundle.one_time_keys:
            if key_id not in used:
                used.add(key_id)
                return vodozemac.Curve25519PublicKey.from_base64(key)
        return vodozemac.Curve25519PublicKey.from_base64(bundle.fallback_key[1])

    async def _ask_bundle(self, peer: str) -> ss.Bundle:
        ack = await self._exchange(peer, ch.Push((), bundle=await self.my_bundle(),
                                                 want_bundle=True))
        if ack.bundle is None:
            raise ch.ChannelError("the peer sent no bundle")
        return self.learn_bundle(peer, ack.bundle)

    async def _exchange(self, peer: str, push: ch.Push) -> ch.Ack:
        stream = await self._streams().open_stream(ch.PROTOCOL, peer=peer, timeout=10)
        async with stream:
            await stream.send(ch.encode_push(push))
            return ch.decode_ack(await stream.receive())

    # -- the responder ------------------------------------------------------------------
    async def serve(self, stream: Any) -> None:
        peer = stream.peer
        try:
            with trio.fail_after(EXCHANGE_TIMEOUT_S):
                push = ch.decode_push(await stream.receive())
                ack = await self._answer(peer, push)
                await stream.send(ch.encode_ack(ack))
                await stream.close()
        except (*STREAM_ERRORS, ss.BundleError, errors.BusError) as exc:
            self.ctx.counters["keys_serve_failed"] += 1
            self.ctx.log.info("gossip.keys_serve_failed", peer=peer, error=str(exc))
            await stream.reset()

    async def _answer(self, peer: str, push: ch.Push) -> ch.Ack:
        assert self.book is not None and self.device is not None
        identity_key: vodozemac.Curve25519PublicKey | None = None
        if push.bundle is not None:
            identity_key = _identity_key(self.learn_bundle(peer, push.bundle))
        elif peer in self.bundles:
            identity_key = _identity_key(self.bundles[peer])
        await self._load_peer(peer)
        response = ch.respond(self.book, self.seen, peer, identity_key, push,
                              lambda _peer, payload: payload.kind in self._handlers)
        if push.items:
            await self._save_peer(peer)
        if response.new_session:
            await self._save_device()
            self._publish_at = min(self._publish_at, self.ctx.now() + REPUBLISH_AFTER_USE_S)
            self._signed = None  # the used one-time key must leave our bundle
        refused = {}
        for payload in response.delivered:
            pid = ch.payload_id(ch.encode_payload(payload))
            try:
                await self._handlers[payload.kind](peer, payload.body)
            except PayloadRefused as exc:
                refused[pid] = ch.Bad.REFUSED
                self.ctx.counters["keys_payload_refused"] += 1
                self.ctx.log.info("gossip.keys_payload_refused", peer=peer,
                                  kind=payload.kind, reason=str(exc))
            except Exception:
                refused[pid] = ch.Bad.REFUSED
                self.ctx.counters["keys_handler_crashed"] += 1
                self.ctx.log.error("gossip.keys_handler_crashed", exc=True,
                                   kind=payload.kind)
        for pid in response.ack.ok:
            if (peer, pid) in self._refused:
                refused[pid] = ch.Bad.REFUSED
        for pid in refused:
            self._refused[(peer, pid)] = None
        while len(self._refused) > ch.MAX_SEEN_IDS:
            self._refused.pop(next(iter(self._refused)))
        ack = response.ack
        if refused:
            ack = ch.Ack(tuple(i for i in ack.ok if i not in refused),
                         {**ack.bad, **refused})
        if push.want_bundle:
            ack = ch.Ack(ack.ok, ack.bad, await self.my_bundle())
        return ack


def _identity_key(bundle: ss.Bundle) -> vodozemac.Curve25519PublicKey:
    return vodozemac.Curve25519PublicKey.from_base64(bundle.curve25519)
