"""What every part of the gossip actor shares: the node's identity and router, its
counters and log, how a part starts a background task or publishes an event, and the
typed clients of the other actors it calls (keystore, storage, transport, dht).

The parts (links, delivery, membership, reach, receive, state) hold this object and
nothing of each other beyond what the shell hands them, so each can be read alone.
The router exists only once the keystore named our identity (`Gossip.run`); until then
`router` refuses to be read, which no part does before the shell is running.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import trio

from p2pm.common import identity
from p2pm.common.clients import DhtClient, KeystoreClient, StorageClient, TransportClient

from .router.core import Router


class Clients(Protocol):
    """What the parts call the other actors through (the shell declares them)."""

    keystore: KeystoreClient
    storage: StorageClient
    transport: TransportClient
    dht: DhtClient


SyncWith = Callable[..., Awaitable[None]]  # the sync session: (peer, conversation, force=)


# Peer ids are converted on every frame and message (base58 in pure Python, about 5 µs
# each, about 6% of a node's CPU under load); the same few peers recur, so they are
# remembered. Bounded: ids from the wire can be anything.
@functools.lru_cache(maxsize=4096)
def peer_str(raw: bytes) -> str:
    return identity._b58encode(raw)


@functools.lru_cache(maxsize=4096)
def peer_bytes(peer: str) -> bytes:
    return identity.peer_id_bytes(peer)


class Context:
    def __init__(self, clients: Clients, spawn: Callable[..., None],
                 publish: Callable[[str, Any], None], log: Any) -> None:
        self.me = ""
        self._router: Router | None = None
        self.counters: Counter[str] = Counter()
        self.log = log
        self.spawn = spawn  # a background task whose failure is logged, never fatal
        self.publish = publish  # an event on gossip's PUB socket
        self.kick: Callable[[], None] = lambda: None  # wake the links (set by links)
        self._clients = clients

    @property
    def router(self) -> Router:
        assert self._router is not None, "the router starts once the identity is known"
        return self._router

    @property
    def started(self) -> bool:
        return self._router is not None

    def start(self, me: str, router: Router) -> None:
        self.me, self._router = me, router

    def now(self) -> float:
        return trio.current_time()

    # -- the other actors, typed clients declared on the shell ----------------------
    # Read through the shell at each use, so fakes put in its place (clients'
    # build_actor) are the ones the parts call.
    @property
    def keystore(self) -> KeystoreClient:
        return self._clients.keystore

    @property
    def storage(self) -> StorageClient:
        return self._clients.storage

    @property
    def transport(self) -> TransportClient:
        return self._clients.transport

    @property
    def dht(self) -> DhtClient:
        return self._clients.dht
