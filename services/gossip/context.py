"""What every part of the gossip actor shares: the node's identity and router, its
counters and log, how a part starts a background task or publishes an event, and one
small method per other actor it calls (storage, keystore, transport, dht).

The parts (links, delivery, membership, reach, receive, state) hold this object and
nothing of each other beyond what the shell hands them, so each can be read alone.
The router exists only once the keystore named our identity (`Gossip.run`); until then
`router` refuses to be read, which no part does before the shell is running.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from p2pm.common import errors, identity, wire

from .router.core import Router

STORAGE_TIMEOUT = 5.0

Call = Callable[..., Awaitable[Any]]  # (actor, method, params, **options) -> result
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
    def __init__(self, call: Call, spawn: Callable[..., None],
                 publish: Callable[[str, Any], None], log: Any) -> None:
        self.me = ""
        self._router: Router | None = None
        self.counters: Counter[str] = Counter()
        self.log = log
        self.spawn = spawn  # a background task whose failure is logged, never fatal
        self.publish = publish  # an event on gossip's PUB socket
        self.kick: Callable[[], None] = lambda: None  # wake the links (set by links)
        self._call = call

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

    # -- the other actors, one method each ---------------------------------------------
    async def storage(self, method: str, **params: Any) -> Any:
        return await self._call("storage", method, params, timeout=STORAGE_TIMEOUT)

    async def kv_get(self, key: str) -> bytes | None:
        try:
            got = await self.storage("kv_get", key=key)
        except errors.BusError as exc:
            if exc.code == errors.NOT_FOUND:
                return None
            raise
        return wire.b64d(got["value"], "value")

    async def sign(self, domain: str, data: bytes) -> bytes:
        got = await self._call("keystore", "sign", {"domain": domain, "data": data})
        return wire.b64d(got["signature"], "keystore signature")

    async def dh(self, public: bytes) -> bytes:
        got = await self._call("keystore", "dh", {"public": public})
        return wire.b64d(got["shared"], "shared")

    async def transport(self, method: str, params: dict[str, Any] | None = None,
                        **options: Any) -> Any:
        return await self._call("transport", method, params, **options)

    async def dht(self, method: str, params: dict[str, Any], **options: Any) -> Any:
        return await self._call("dht", method, params, **options)
