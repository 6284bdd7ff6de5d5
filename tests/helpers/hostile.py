"""A hostile peer for tests on real nodes: a py-libp2p host (any key, so any peer-id
order against its target) plus the project's codecs, in a thread with its own trio
loop, so a synchronous test drives it while the nodes run as processes.

    with HostilePeer(above=[alice.peer_id]) as mallory:
        mallory.call(mallory.connect, alice_addr)
        mallory.call(mallory.subscribe_all, alice.peer_id)
        ...
        mallory.sync_frames()   # every frame any node sent it on a sync stream

What it does, everything a stranger can: connect; learn the topics a node announces
over meshsub and subscribe to every one; answer the sync streams a node opens with
whatever `poison` says (a HELLO listing forged members, even after a failed proof);
open sync streams of its own with any content (`flood_hellos`, `sync_as_member`). It
speaks `/p2pm/sync/2.0.0` where the node does and falls back to `/p2pm/sync/1.0.0`
(written out by hand here, as an attacker would), so the same attack runs against a
node of either version. Every frame a node sends it is recorded, per protocol.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import multiaddr
import orjson
import trio
import varint
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import info_from_p2p_addr

from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip.router.messages import RPC, SubOpts, decode_rpc, encode

MESH = "/meshsub/1.1.0"
SYNC_V2 = "/p2pm/sync/2.0.0"
SYNC_V1 = "/p2pm/sync/1.0.0"
SYNC_PROTOCOLS = (SYNC_V2, SYNC_V1)
MAX_FRAME = 1024 * 1024


def forged_peer_ids(n: int) -> list[str]:
    """`n` well-formed peer ids of keys nobody holds."""
    return [ID.from_pubkey(create_new_key_pair().public_key).to_base58() for _ in range(n)]


class FrameReader:
    """uvarint-delimited frames from a py-libp2p stream."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.buf = stream, b""

    async def _fill(self) -> None:
        chunk = await self.stream.read(65536)
        if not chunk:
            raise EOFError
        self.buf += chunk

    async def frame(self) -> bytes:
        while True:
            try:
                size = varint.decode_bytes(self.buf)
                head = len(varint.encode(size))
            except (TypeError, IndexError):
                size, head = -1, 0
            if size >= 0 and len(self.buf) >= head + size:
                out, self.buf = self.buf[head:head + size], self.buf[head + size:]
                return out
            await self._fill()


def framed(data: bytes) -> bytes:
    return varint.encode(len(data)) + data


class HostilePeer:
    """See the module docstring. `above`/`below`: peer ids ours must sort above or
    below (the node that sorts lower starts a room's sync)."""

    def __init__(self, *, above: Sequence[str] = (), below: Sequence[str] = ()) -> None:
        while True:
            self.key_pair = create_new_key_pair()
            self.peer_id = ID.from_pubkey(self.key_pair.public_key).to_base58()
            if all(self.peer_id > p for p in above) and all(self.peer_id < p for p in below):
                break
        self.received: list[tuple[str, bytes]] = []  # (protocol, frame) from any node
        self.topics: set[str] = set()
        self.poison: dict[str, list[str]] = {}  # addrs we "vouch" for in every HELLO
        self.inbound_syncs = 0
        self.probes_refused = 0
        self.flood = {"streams": 0, "frames": 0, "refused": 0}
        self.flood_done = threading.Event()
        self.error: BaseException | None = None
        self._token: Any = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    # -- lifecycle ---------------------------------------------------------------------
    def __enter__(self) -> HostilePeer:
        self._thread.start()
        if not self._ready.wait(30):
            raise AssertionError(f"hostile peer did not start: {self.error!r}")
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._token is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(30)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported by the test
            self.error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        self.host = new_host(key_pair=self.key_pair)
        listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
        async with self.host.run(listen_addrs=listen), trio.open_nursery() as nursery:
            self.nursery = nursery
            self.host.set_stream_handler(TProtocol(MESH), self._mesh_in)
            for proto in SYNC_PROTOCOLS:
                self.host.set_stream_handler(TProtocol(proto), self._sync_in)
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            nursery.cancel_scope.cancel()

    def call(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run `fn(*args)` in the hostile peer's loop, from the test's thread."""
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def sync_frames(self) -> list[bytes]:
        return [f for proto, f in list(self.received) if proto in SYNC_PROTOCOLS]

    # -- connecting and meshsub --------------------------------------------------------
    async def connect(self, addr: str) -> str:
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await self.host.connect(info)
        return str(info.peer_id)

    async def _mesh_in(self, stream: Any) -> None:
        """A node's meshsub stream to us: record it, learn the topics it announces."""
        reader = FrameReader(stream)
        try:
            while True:
                frame = await reader.frame()
                self.received.append((MESH, frame))
                rpc = decode_rpc(frame, MAX_FRAME)
                self.topics |= {s.topicid for s in rpc.subscriptions
                                if s.subscribe and s.topicid}
        except Exception:
            return

    async def subscribe_all(self, peer: str, known: Sequence[str] = (),
                            wait_s: float = 20.0) -> set[str]:
        """Wait for the node's announced topics (at most `wait_s`), then subscribe to
        every one, and to the topics in `known` (the worst case: a stranger who learnt
        them anyway), on a meshsub stream of ours kept open in the background. Returns
        what the node announced."""
        with trio.move_on_after(wait_s):
            while not self.topics:
                await trio.sleep(0.05)
        announced = set(self.topics)
        stream = await self.host.new_stream(ID.from_base58(peer), [TProtocol(MESH)])
        topics = announced | set(known)
        await stream.write(framed(encode(RPC(subscriptions=tuple(
            SubOpts(subscribe=True, topicid=t) for t in sorted(topics))))))

        async def keep() -> None:
            reader = FrameReader(stream)
            try:
                while True:
                    self.received.append((MESH, await reader.frame()))
            except Exception:
                return
        self.nursery.start_soon(keep)
        return announced

    def mesh_rpcs(self) -> list[RPC]:
        """Every meshsub RPC a node sent us, decoded."""
        return [decode_rpc(f, MAX_FRAME) for proto, f in list(self.received) if proto == MESH]

    # -- sync, as the node's peer ------------------------------------------------------
    def _hello_v1(self) -> bytes:
        return orjson.dumps({"t": "hello", "ranges": {}, "addrs": self.poison})

    async def _sync_in(self, stream: Any) -> None:
        """A node started a sync with us: take whatever it says, answer as a liar."""
        self.inbound_syncs += 1
        proto = str(stream.get_protocol())
        reader = FrameReader(stream)
        try:
            first = await reader.frame()
            self.received.append((proto, first))
            if proto == SYNC_V2:  # a nonce, a proof we cannot make, then a HELLO anyway
                await stream.write(framed(orjson.dumps({"t": "open", "nonce": _b64(
                    os.urandom(16))})))
                self.received.append((proto, await reader.frame()))
                await stream.write(framed(orjson.dumps({"t": "proof", "proof": _b64(
                    os.urandom(32))})))
            await stream.write(framed(self._hello_v1()))
            await stream.write(framed(orjson.dumps({"t": "done"})))
            while True:
                self.received.append((proto, await reader.frame()))
        except Exception:
            return

    async def _open_sync(self, peer: str) -> Any:
        return await self.host.new_stream(ID.from_base58(peer),
                                          [TProtocol(p) for p in SYNC_PROTOCOLS])

    async def sync_as_member(self, peer: str, secret: bytes, kind: str = "room") -> int:
        """A member (it holds the secret, e.g. from an invite) that lies: it proves
        itself, then lists `poison` in its HELLO. The frames received back."""
        keys = cv.Keys.derive(kind, secret)
        stream = await self._open_sync(peer)
        proto = str(stream.get_protocol())
        reader = FrameReader(stream)
        got = 0
        try:
            with trio.fail_after(30):
                if proto == SYNC_V2:
                    from p2pm.services.gossip import sync
                    session = sync.Session(sync.Role.INITIATOR, self.peer_id, peer,
                                           os.urandom(sync.NONCE_BYTES),
                                           {keys.id: keys.content_key})
                    await stream.write(framed(session.open()))
                    session.receive(await reader.frame())
                    await stream.write(framed(session.prove()))
                    session.receive(await reader.frame())
                else:
                    data = f"p2pm sync {keys.id} {self.peer_id} {peer}".encode()
                    proof = hashlib.blake2b(data, key=keys.content_key, digest_size=32)
                    await stream.write(framed(orjson.dumps({
                        "t": "hello", "ranges": {}, "addrs": self.poison, "conv": keys.id,
                        "proof": _b64(proof.digest())})))
                    got += 1
                if proto == SYNC_V2:
                    await stream.write(framed(self._hello_v1()))
                await stream.write(framed(orjson.dumps({"t": "done"})))
                have_sent = False
                while True:
                    frame = orjson.loads(await reader.frame())
                    got += 1
                    if frame.get("t") == "done" and not have_sent:
                        await stream.write(framed(orjson.dumps({"t": "have", "ranges": {}})))
                        have_sent = True
        except Exception:
            pass
        return got

    async def probe_sync(self, peer: str) -> None:
        """A stranger starting a sync: a nonce and a made-up proof (v2), or a HELLO
        naming a made-up conversation (v1); whatever comes back is recorded. A
        stream the node refuses to open (rate-limited) is counted in `probes_refused`."""
        try:
            stream = await self._open_sync(peer)
        except Exception:
            self.probes_refused += 1
            return
        proto = str(stream.get_protocol())
        reader = FrameReader(stream)
        try:
            with trio.fail_after(15):
                if proto == SYNC_V2:
                    await stream.write(framed(orjson.dumps({"t": "open", "nonce": _b64(
                        os.urandom(16))})))
                    self.received.append((proto, await reader.frame()))
                    await stream.write(framed(orjson.dumps({"t": "proof", "proof": _b64(
                        os.urandom(32))})))
                else:
                    await stream.write(framed(orjson.dumps({
                        "t": "hello", "ranges": {}, "addrs": self.poison,
                        "conv": "r" + os.urandom(16).hex(), "proof": _b64(os.urandom(32))})))
                while True:
                    self.received.append((proto, await reader.frame()))
        except Exception:
            return

    async def start_flood(self, peer: str, streams: int, seconds: float) -> None:
        """`flood_hellos` in the background; `flood_done` is set when it ends."""
        async def run() -> None:
            try:
                await self.flood_hellos(peer, streams, seconds)
            finally:
                self.flood_done.set()
        self.nursery.start_soon(run)

    async def flood_hellos(self, peer: str, streams: int, seconds: float,
                           conversation: str = "r" + "0" * 32) -> None:
        """`streams` loops, each opening sync streams and writing maximum-size HELLOs
        as fast as the node takes them, for `seconds`."""
        # The costliest HELLO to validate: as many authors and ranges as fit.
        spans = [[2 * i + 1, 2 * i + 1] for i in range(1000)]
        doc = {"t": "hello", "ranges": {}, "addrs": {}, "conv": conversation,
               "proof": _b64(os.urandom(32))}
        for author in forged_peer_ids(200):
            doc["ranges"][author] = spans
            if len(orjson.dumps(doc)) > MAX_FRAME - 16 * 1024:
                del doc["ranges"][author]
                break
        hello = framed(orjson.dumps(doc))

        async def one() -> None:
            while True:
                try:
                    stream = await self._open_sync(peer)
                    self.flood["streams"] += 1
                    while True:
                        await stream.write(hello)
                        self.flood["frames"] += 1
                except trio.Cancelled:
                    raise
                except Exception:
                    self.flood["refused"] += 1
                    await trio.sleep(0)

        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:
                for _ in range(streams):
                    nursery.start_soon(one)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
