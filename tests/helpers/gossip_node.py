"""Testing tools: a node's keystore, transport, storage and gossip in the current trio
loop, over `inproc://` endpoints, with a fresh home and identity.

    async with open_gossip_node("alice") as alice, open_gossip_node("bob") as bob:
        await alice.call("transport", "dial", {"addr": bob.addrs[0]})
        room = await alice.call("gossip", "room_create", {"name": "ops"})

The same actor code as under supervisord, without processes; used by the gossip tests
and benchmark. `synchronous` defaults to NORMAL: these homes are thrown away.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import trio
import zmq

from p2pm.common import errors
from p2pm.common.actor import ActorRuntime
from p2pm.common.client import Client, open_client
from p2pm.common.home import Endpoints, Home
from tests.helpers.transport_node import open_test_node

from p2pm.services.gossip.actor import Gossip


@dataclass
class GossipNode:
    home: Home
    endpoints: Endpoints
    gossip: Gossip
    peer_id: str
    addrs: list[str]
    clients: dict[str, Client] = field(default_factory=dict)

    async def call(self, actor: str, method: str, params: dict[str, Any] | None = None,
                   **kw: Any) -> Any:
        return await self.clients[actor].call(method, params, **kw)

    async def wait_for(self, condition: Any, what: str, timeout: float = 20.0) -> Any:
        """Poll an async condition until it returns something truthy; AssertionError
        naming `what` after `timeout` seconds."""
        with trio.move_on_after(timeout):
            while True:
                try:
                    value = await condition()
                except errors.BusError:
                    value = None
                if value:
                    return value
                await trio.sleep(0.05)
        raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")


@asynccontextmanager
async def open_gossip_node(name: str, *, heartbeat_s: float = 0.5,
                           synchronous: str = "NORMAL",
                           home: Home | None = None) -> AsyncIterator[GossipNode]:
    """`home`: start on this home again (its identity, messages and outbox) and leave
    it in place; by default a fresh one."""
    from p2pm.services.storage.actor import Storage

    ctx = zmq.Context.instance()
    async with open_test_node(name, home=home) as base, trio.open_nursery() as nursery:
        cfg = {"gossip": {"heartbeat_s": heartbeat_s},
               "storage": {"synchronous": synchronous}}
        await nursery.start(ActorRuntime(Storage(base.home, cfg), base.endpoints, ctx).serve)
        gossip = Gossip(base.home, cfg)
        await nursery.start(ActorRuntime(gossip, base.endpoints, ctx).serve)
        async with AsyncExitStack() as stack:
            clients = {a: await stack.enter_async_context(
                open_client(ctx, base.endpoints.rpc(a), a))
                for a in ("gossip", "storage", "transport", "keystore")}
            with trio.fail_after(15):
                await gossip.loaded.wait()
            yield GossipNode(base.home, base.endpoints, gossip, base.peer_id, base.addrs,
                             clients)
        nursery.cancel_scope.cancel()
