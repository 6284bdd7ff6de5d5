"""The dht actor: Kademlia (`/ipfs/kad/1.0.0`) for the node, through the transport.

The protocol lives in the sans-IO core (`core.KadCore`); `driver.KadDriver` moves its
messages over the transport's stream API and drives its clock. This shell adds what
needs the rest of the node:

* identity: the local peer ID from the keystore, which also signs the node's own
  `/p2pm/` records (domain "p2pm-record:"); records from others are verified here.
* peers: `transport.peer.identified` events add peers that speak the protocol; on a
  transport restart (new epoch) the connected peers are re-read, the table is kept and
  the stream library re-registers by itself.
* bootstrap: a self-lookup through the configured `transport.bootstrap` peers and the
  remembered table, again whenever the table was empty and gains a peer.
* persistence: a routing-table snapshot in the storage actor (`kv` key
  `dht.routing_table`), loaded before anything else, so a restarted dht answers at once.
* mode: `dht.mode` "server" serves the protocol, "client" only queries (and does not
  register the protocol, so identify does not advertise it). "auto" follows the
  transport's AutoNAT verdict (`transport.reachability.changed`): client while it says
  "private", server otherwise, including before it has a verdict (a node that cannot
  be dialled is then dropped from others' tables by failed queries).

Events: none of its own yet (status carries the counters).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import trio

from p2pm.common import errors, identity
from p2pm.common import protobuf as pb
from p2pm.common.actor import Actor, every, on_event, rpc
from p2pm.common.clients import KeystoreClient, StorageClient, TransportClient
from p2pm.common.config import settings_of
from p2pm.common.streams import open_streams

from .convert import (decode_snapshot, encode_snapshot, make_peer, peer_id_bytes,
                      peer_id_text, peer_json, provider_key, record_key, record_key_text)
from .core import Config, KadCore, LookupDone, ProvideDone, PutDone
from .driver import KAD_PROTOCOL, KAD_SPEC, KadDriver
from .messages import Peer
from .records import (RECORD_DOMAIN, PublicKeyValidator, RecordError, SignedRecordValidator,
                      SignedValue, Validators, signed_bytes)

SNAPSHOT_KEY = "dht.routing_table"
OP_TIMEOUT_S = 30.0
DEFAULT_RECORD_TTL_S = 24 * 3600.0
BOOTSTRAP_AGAIN_S = 10.0  # at most one self-lookup this often as new peers appear
BOOTSTRAP_RETRY_S = 0.5  # next self-lookup after one that found new peers
BOOTSTRAP_RETRY_MAX_S = 60.0


class Dht(Actor):
    name = "dht"
    keystore = KeystoreClient.dependency()
    storage = StorageClient.dependency()
    transport = TransportClient.dependency()

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        # Checked once, in settings.py: a bad value never gets this far.
        settings = settings_of(self.config)
        self.mode = settings.dht.mode
        self.core_config = Config(k=settings.dht.bucket_size, alpha=settings.dht.alpha)
        self.bootstrap_addrs: list[str] = list(settings.transport.bootstrap)
        self.driver: KadDriver | None = None
        self.peer_id: str | None = None
        self._saved: frozenset[bytes] | None = None
        self._last_bootstrap = float("-inf")
        self._ready = trio.Event()
        self.remembered = 0  # peers reloaded from the stored snapshot at start

    @property
    def server_mode(self) -> bool:
        if self.driver is not None:
            return self.driver.core.server_mode
        return self.mode != "client"

    # -- lifecycle -----------------------------------------------------------------------

    def healthy(self) -> bool:
        return self.driver is not None

    def status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mode": self.mode, "server": self.server_mode,
                               "remembered": self.remembered}
        if self.driver is not None:
            out.update(peer_id=self.peer_id, **self.driver.statistics(),
                       transport=self.driver.streams.statistics())
        return out

    async def run(self) -> None:
        assert self.runtime is not None
        me = await self.keystore.until_answered().identity()
        self.peer_id = me.peer_id
        validators = Validators(PublicKeyValidator(), SignedRecordValidator(identity.verify))
        core = KadCore(Peer(peer_id_bytes(me.peer_id), ()), validators, self.core_config,
                       server_mode=self.server_mode)
        remembered = await self._load_snapshot()
        self.remembered = len(remembered)
        now = time.time()
        for peer in remembered:
            core.add_peer(peer, now)
        protocols = {KAD_PROTOCOL: KAD_SPEC} if self.server_mode else {}
        async with open_streams(self.runtime.endpoints, self.name, protocols,
                                ctx=self.runtime.ctx, wait=None) as streams:
            async with trio.open_nursery() as nursery:
                self.driver = await nursery.start(KadDriver(core, streams).run)
                self._ready.set()
                self.log.info("dht.ready", peer_id=self.peer_id, mode=self.mode,
                              remembered=len(remembered))
                nursery.start_soon(self._join, remembered)

    async def teardown(self) -> None:
        # Storage may be stopping too (a node going down): one short try, the
        # periodic save has kept the stored table nearly current anyway.
        await self._save_snapshot(timeout=1.0, retries=0)

    def _require(self) -> KadDriver:
        if self.driver is None:
            raise errors.unavailable("the dht is starting (waiting for the keystore?)")
        return self.driver

    # -- joining the network ---------------------------------------------------------------

    async def _join(self, remembered: list[Peer]) -> None:
        """Learn our addresses and the connected peers, then look ourselves up through
        the bootstrap peers and the remembered table."""
        await self._refresh_local_addrs()
        await self._sync_connected()
        if self.mode == "auto":
            try:
                status = await self.transport.with_options(timeout=2.0, retries=1).status()
                await self._follow_reachability(status.get("reachability"))
            except errors.BusError:
                pass  # the event will tell
        seeds = list(remembered)
        for addr in self.bootstrap_addrs:
            pid = addr.rsplit("/p2p/", 1)[-1] if "/p2p/" in addr else ""
            try:
                seeds.append(make_peer(pid, [addr]))
            except ValueError:
                self.log.warning("dht.bad_bootstrap_addr", addr=addr)
        await self._stay_joined(seeds)

    async def _stay_joined(self, seeds: list[Peer]) -> None:
        """Self-lookups through the seeds, the connected peers and the table while the
        table holds fewer than k peers: soon again while they find new peers, backing
        off to once a minute when they stop. At start the bootstrap peer's dht may not
        serve yet (identify will not tell us when it does), and peers that joined at
        the same time only become visible on a second pass."""
        delay = BOOTSTRAP_RETRY_S
        seen: set[bytes] = set()  # every peer the table held: re-adding one is no growth
        while True:
            driver = self._require()
            core = driver.core
            before = len(core.routing)
            seen |= {p.id for p in core.routing.peers()}
            if before < core.config.k:
                known = {s.id for s in seeds}
                candidates = seeds + [p for p in core.connected.values() if p.id not in known]
                if candidates or before:
                    self._last_bootstrap = time.time()
                    try:
                        await driver.run_operation(
                            lambda now: core.bootstrap(candidates, now), LookupDone,
                            OP_TIMEOUT_S)
                    except TimeoutError:
                        pass
                # Only peers never seen before count: a peer evicted after failures
                # (it hung up on us mid-query, say) and found again is no news, and
                # must not keep the lookups coming twice a second.
                grew = bool({p.id for p in core.routing.peers()} - seen)
                delay = BOOTSTRAP_RETRY_S if grew else min(delay * 2, BOOTSTRAP_RETRY_MAX_S)
            else:
                delay = BOOTSTRAP_RETRY_MAX_S
            await trio.sleep(delay)

    def _bootstrap(self, seeds: list[Peer]) -> None:
        driver = self.driver
        if driver is None or (not seeds and len(driver.core.routing) == 0):
            return
        self._last_bootstrap = time.time()
        _, actions = driver.core.bootstrap(seeds, self._last_bootstrap)
        driver.perform(actions)

    async def _sync_connected(self) -> None:
        """Re-read the transport's connected peers (at start and after it restarted)."""
        driver = self.driver
        if driver is None:
            return
        try:
            peers = await self.transport.with_options(timeout=2.0, retries=5).peers()
        except errors.BusError as exc:
            self.log.warning("dht.transport_unavailable", error=exc.message)
            return
        driver.core.connections_reset()
        for info in peers:
            self._note_peer(info.get("peer_id", ""), info.get("addrs") or [],
                            info.get("protocols") or [])

    def _note_peer(self, peer_id: str, addrs: list[str], protocols: list[str]) -> None:
        driver = self.driver
        if driver is None:
            return
        try:
            peer = make_peer(peer_id, [a for a in addrs if isinstance(a, str)])
        except ValueError:
            return
        is_server = KAD_PROTOCOL in protocols
        was_empty = len(driver.core.routing) == 0
        driver.peer_identified(peer, is_server, time.time())
        if is_server:
            if was_empty or time.time() - self._last_bootstrap > BOOTSTRAP_AGAIN_S:
                self._bootstrap([])

    async def _refresh_local_addrs(self) -> None:
        """The addresses we announce as a provider: the transport's, without /p2p/."""
        driver = self.driver
        if driver is None:
            return
        try:
            mine = await self.transport.with_options(timeout=2.0, retries=5).addrs()
        except errors.BusError:
            return
        local = make_peer(mine.peer_id, list(mine.addrs))
        if local.id == driver.core.local.id:
            driver.core.set_local_addrs(local)

    @on_event("transport.peer")
    async def _on_peer_event(self, topic: str, data: dict[str, Any]) -> None:
        driver = self.driver
        if driver is None or not isinstance(data, dict):
            return
        peer_id = data.get("peer_id")
        if not isinstance(peer_id, str):
            return
        if topic == "transport.peer.identified":
            protocols = data.get("protocols")
            addrs = data.get("addrs")
            self._note_peer(peer_id, addrs if isinstance(addrs, list) else [],
                            protocols if isinstance(protocols, list) else [])
        elif topic == "transport.peer.disconnected":
            try:
                raw = peer_id_bytes(peer_id)
            except ValueError:
                return
            driver.peer_gone(raw)

    @on_event("transport.reachability")
    async def _on_reachability(self, topic: str, data: dict[str, Any]) -> None:
        if isinstance(data, dict):
            await self._follow_reachability(data.get("reachability"))

    async def _follow_reachability(self, reachability: Any) -> None:
        driver = self.driver
        if self.mode != "auto" or driver is None or not isinstance(reachability, str):
            return
        server = reachability != "private"
        if not driver.core.set_server_mode(server):
            return
        await driver.streams.set_protocols({KAD_PROTOCOL: KAD_SPEC} if server else {})
        self.log.info("dht.mode_changed", server=server, reachability=reachability)

    async def resync(self, source: str, reason: str) -> None:
        if source == "transport":
            await self._sync_connected()
            await self._refresh_local_addrs()

    @every(5.0)
    async def _periodic(self) -> None:
        # Cheap when nothing changed: the snapshot is written only when the table's
        # membership did, so a crash loses at most a few seconds of it.
        await self._refresh_local_addrs()
        await self._save_snapshot()

    # -- persistence -------------------------------------------------------------------------

    async def _load_snapshot(self) -> list[Peer]:
        try:
            got = await self.storage.with_options(timeout=2.0, retries=1).kv_get(SNAPSHOT_KEY)
            peers = decode_snapshot(got) if got is not None else []
        except errors.BusError as exc:
            self.log.warning("dht.snapshot_unavailable", error=exc.message)
            return []
        except (ValueError, KeyError, TypeError) as exc:
            self.log.warning("dht.snapshot_unreadable", error=str(exc))
            return []
        return peers

    async def _save_snapshot(self, timeout: float = 2.0, retries: int = 1) -> None:
        driver = self.driver
        if driver is None:
            return
        peers = [p for p in driver.core.routing.peers() if p.addrs]
        ids = frozenset(p.id for p in peers)
        if ids == self._saved:
            return
        try:
            await self.storage.with_options(timeout=timeout, retries=retries).kv_put(
                SNAPSHOT_KEY, encode_snapshot(peers))
            self._saved = ids
        except errors.BusError as exc:
            self.log.warning("dht.snapshot_not_saved", error=exc.message)

    # -- RPCs ----------------------------------------------------------------------------------

    @rpc
    async def find_peer(self, peer_id: str, timeout: float = OP_TIMEOUT_S) -> dict[str, Any]:
        """{"peer_id", "timeout"?} -> {"peer_id", "addrs": [multiaddr, ...], "rounds",
        "queried", "ms"}; not_found when no peer knows addresses for it.

        Always asks the network (a peer in our table answers for itself in one round
        trip), and then tells the transport the addresses, so a dial by peer ID works."""
        driver = self._require()
        raw = _param(peer_id_bytes, peer_id)
        timeout = _timeout_param(timeout)
        started = time.perf_counter()
        if raw == driver.core.local.id:
            return {**peer_json(driver.core.local), "rounds": 0, "queried": 0, "ms": 0.0}
        done: LookupDone = await self._operation(
            lambda now: driver.core.find_peer(raw, now), LookupDone, timeout)
        found = done.result.found
        ms = round((time.perf_counter() - started) * 1000, 3)
        if found is None or not found.addrs:
            raise errors.not_found(f"peer {peer_id} not found ({done.result.queried} peers "
                                   f"asked, {done.result.failed} failed)")
        result = peer_json(found)
        await self._tell_transport(result)
        return {**result, "rounds": done.result.rounds, "queried": done.result.queried,
                "ms": ms}

    async def _tell_transport(self, found: dict[str, Any]) -> None:
        try:
            await self.transport.with_options(timeout=2.0, retries=1).add_addrs(
                found["peer_id"], list(found["addrs"]))
        except errors.BusError as exc:
            self.log.warning("dht.addrs_not_given", peer=found["peer_id"], error=exc.message)

    @rpc
    async def closest_peers(self, key: str, timeout: float = OP_TIMEOUT_S) -> dict[str, Any]:
        """{"key": peer ID or hex/base58 multihash, "timeout"?} -> {"key", "peers":
        [{"peer_id", "addrs"}, ...] nearest first, "rounds", "queried"}"""
        driver = self._require()
        raw = _param(provider_key, key)  # a peer ID is a multihash too
        done: LookupDone = await self._operation(
            lambda now: driver.core.find_node(raw, now), LookupDone, _timeout_param(timeout))
        return {"key": key, "peers": [peer_json(p) for p in done.result.closest],
                "rounds": done.result.rounds, "queried": done.result.queried}

    @rpc
    async def put(self, key: str, value: bytes, ttl: float = DEFAULT_RECORD_TTL_S,
                  timeout: float = OP_TIMEOUT_S) -> dict[str, Any]:
        """{"key", "value": b64, "ttl"?, "timeout"?} -> {"key", "stored_at": [peer ID],
        "failed": [peer ID]}

        `/p2pm/<label>/<our peer id>`: `value` is wrapped in an envelope signed by the
        keystore (seq: the time in ms, so a later put wins). `/pk/<peer id>` (base58 or
        py-libp2p's hex): `value` is the public key protobuf. Any other namespace, or
        someone else's `/p2pm/` key: forbidden."""
        driver = self._require()
        raw = _param(record_key, key)
        timeout = _timeout_param(timeout)
        if raw.startswith(SignedRecordValidator.namespace):
            if not 60 <= ttl <= 7 * 24 * 3600:
                raise errors.bad_params("ttl must be 60..604800 seconds")
            value = await self._signed_envelope(raw, value, ttl)
        try:
            driver.core.validators.validate(raw, value, time.time())
        except RecordError as exc:
            raise errors.forbidden(f"record refused: {exc}") from None
        try:
            done: PutDone = await self._operation(
                lambda now: driver.core.put_value(raw, value, now), PutDone, timeout)
        except RecordError as exc:
            raise errors.BusError(errors.CONFLICT, str(exc)) from None
        return {"key": key, "stored_at": [peer_id_text(p) for p in done.stored_at],
                "failed": [peer_id_text(p) for p in done.failed]}

    async def _signed_envelope(self, key: bytes, value: bytes, ttl: float) -> bytes:
        assert self.driver is not None
        try:
            owner = SignedRecordValidator.owner_of(key)
        except RecordError as exc:
            raise errors.bad_params(str(exc)) from None
        if owner != self.driver.core.local.id:
            raise errors.forbidden("only this node's own /p2pm/ records can be put "
                                   f"(/p2pm/<label>/{self.peer_id})")
        seq = int(time.time() * 1000)
        expires = int(time.time() + ttl)
        body = signed_bytes(key, owner, seq, expires, value)
        signature = await self.keystore.sign(RECORD_DOMAIN, body)
        return pb.encode(SignedValue(owner, seq, expires, value, signature))

    @rpc
    async def get(self, key: str, timeout: float = OP_TIMEOUT_S) -> dict[str, Any]:
        """{"key", "timeout"?} -> {"key", "value": b64, "holders": [peer ID]} and, for
        /p2pm/ records, "seq" and "expires" (value is then the signed content);
        not_found if no valid value exists."""
        driver = self._require()
        raw = _param(record_key, key)
        try:
            driver.core.validators.validator_for(raw)
        except RecordError as exc:
            raise errors.forbidden(str(exc)) from None
        done: LookupDone = await self._operation(
            lambda now: driver.core.get_value(raw, now), LookupDone, _timeout_param(timeout))
        if done.result.value is None:
            raise errors.not_found(f"no valid value for {key} ({done.result.queried} peers "
                                   "asked)")
        out: dict[str, Any] = {"key": record_key_text(raw), "value": done.result.value,
                               "holders": [peer_id_text(p) for p in done.result.value_holders]}
        if raw.startswith(SignedRecordValidator.namespace):
            envelope = pb.decode(SignedValue, done.result.value)
            out.update(value=envelope.value, seq=envelope.seq, expires=envelope.expires)
        return out

    @rpc
    async def provide(self, key: str, timeout: float = OP_TIMEOUT_S) -> dict[str, Any]:
        """{"key": multihash in hex or base58, "timeout"?} -> {"key", "sent_to": [peer
        ID]}; the announcement is renewed every 22 h while the dht runs."""
        driver = self._require()
        raw = _param(provider_key, key)
        done: ProvideDone = await self._operation(
            lambda now: driver.core.provide(raw, now), ProvideDone, _timeout_param(timeout))
        return {"key": key, "sent_to": [peer_id_text(p) for p in done.sent_to]}

    @rpc
    async def find_providers(self, key: str, timeout: float = OP_TIMEOUT_S) -> dict[str, Any]:
        """{"key": multihash in hex or base58, "timeout"?} -> {"key", "providers":
        [{"peer_id", "addrs"}, ...]} (each provider once)."""
        driver = self._require()
        raw = _param(provider_key, key)
        done: LookupDone = await self._operation(
            lambda now: driver.core.get_providers(raw, now), LookupDone,
            _timeout_param(timeout))
        providers = {p.id: p for p in driver.core.providers.get(raw, time.time())}
        for p in done.result.providers:
            providers.setdefault(p.id, p)
        return {"key": key, "providers": [peer_json(p) for p in providers.values()]}

    @rpc
    async def routing_table(self) -> dict[str, Any]:
        """{} -> {"peer_id", "mode", "size", "buckets": [{"index", "peers": [{"peer_id",
        "addrs"}]}], "stats": {...}} for debugging."""
        driver = self._require()
        table = driver.core.routing
        buckets: dict[int, list[dict[str, Any]]] = {}
        for peer in table.peers():
            buckets.setdefault(table.bucket_of(peer.id), []).append(peer_json(peer))
        return {"peer_id": self.peer_id, "mode": self.mode, "size": len(table),
                "buckets": [{"index": i, "peers": sorted(ps, key=lambda p: p["peer_id"])}
                            for i, ps in sorted(buckets.items())],
                "stats": driver.statistics()}

    async def _operation(self, start: Any, want: type, timeout: float) -> Any:
        driver = self._require()
        try:
            return await driver.run_operation(start, want, timeout)
        except TimeoutError:
            raise errors.BusError(errors.TIMEOUT, f"the lookup took over {timeout:g}s") from None
        except ValueError as exc:
            raise errors.bad_params(str(exc)) from None


# -- parameters ----------------------------------------------------------------------------

def _param(parse: Callable[[str], bytes], text: str) -> bytes:
    """`parse(text)`, its ValueError turned into a bad_params reply."""
    try:
        raw = parse(text)
    except ValueError as exc:
        raise errors.bad_params(str(exc)) from None
    if len(raw) > 512:
        raise errors.bad_params("key longer than 512 bytes")
    return raw


def _timeout_param(timeout: float) -> float:
    if not 0.1 <= timeout <= 120:
        raise errors.bad_params("timeout must be 0.1..120 seconds")
    return timeout

