"""Testing tools: a node's keystore, storage, transport and dht in the current trio loop.

    async with open_dht_node("a") as a, open_dht_node("b", bootstrap=a.addrs) as b:
        found = await b.call("dht", "find_peer", {"peer_id": a.peer_id})

The actors run in-process over `inproc://` endpoints with a fresh home and identity,
listening on loopback: the same code as under supervisord, without processes.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq

from p2pm.common.actor import ActorRuntime
from p2pm.common.client import Client, open_client
from tests.helpers.transport_node import LocalNode, open_test_node

from p2pm.services.dht.actor import Dht


@dataclass
class DhtNode:
    node: LocalNode
    dht: Dht
    clients: dict[str, Client] = field(default_factory=dict)

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def addrs(self) -> list[str]:
        return self.node.addrs

    async def call(self, actor: str, method: str, params: dict[str, Any] | None = None,
                   **kw: Any) -> Any:
        return await self.clients[actor].call(method, params, **kw)


def free_ports(count: int) -> list[int]:
    """Loopback TCP ports free right now, for nodes whose addresses must be known
    before they start (bootstrap chains)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


@asynccontextmanager
async def open_dht_node(name: str, *, mode: str = "server", bootstrap: Sequence[str] = (),
                        bucket_size: int = 20) -> AsyncIterator[DhtNode]:
    from p2pm.services.storage.actor import Storage

    transport_config = {"bootstrap": list(bootstrap)}
    async with open_test_node(name, transport_config=transport_config) as node:
        cfg = node.transport.config
        cfg["dht"] = {**cfg.get("dht", {}), "mode": mode, "bucket_size": bucket_size}
        cfg.setdefault("storage", {})["synchronous"] = "NORMAL"
        ctx = zmq.Context.instance()
        dht = Dht(node.home, cfg)
        async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
            await nursery.start(ActorRuntime(Storage(node.home, cfg), node.endpoints, ctx).serve)
            await nursery.start(ActorRuntime(dht, node.endpoints, ctx).serve)
            clients = {}
            for actor in ("dht", "transport", "storage", "keystore"):
                clients[actor] = await stack.enter_async_context(
                    open_client(ctx, node.endpoints.rpc(actor), actor))
            with trio.fail_after(15):
                await dht._ready.wait()
            yield DhtNode(node, dht, clients)
            nursery.cancel_scope.cancel()
