"""Testing tools: a whole keystore + transport pair in the current trio loop.

    async with open_test_node("alice") as alice, open_test_node("bob") as bob:
        await alice.call("dial", {"addr": bob.addrs[0]})

Both actors run in-process over `inproc://` endpoints with a fresh home and identity,
listening on loopback: the same code as under supervisord, without processes. Used by
the transport's tests and benchmarks, and meant for the dht and gossip tests too (open a
stream client with `open_streams(node.endpoints, ...)`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import zmq

from p2pm.common import config as configmod
from p2pm.common.actor import ActorRuntime
from p2pm.common.client import Client, open_client
from p2pm.common.home import Endpoints, Home
from p2pm.common.identity import create_identity

from p2pm.services.transport.actor import Transport


@dataclass
class LocalNode:
    home: Home
    endpoints: Endpoints
    transport: Transport
    client: Client
    peer_id: str
    addrs: list[str]

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   **kw: Any) -> Any:
        return await self.client.call(method, params, **kw)


def make_home(prefix: str = "p2pm-") -> Home:
    """A fresh home with an unprotected identity. Short path: ipc sockets need it."""
    home = Home(Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))).ensure()
    create_identity(home.identity_file, None)
    return home


@asynccontextmanager
async def open_test_node(name: str, *, listen: list[str] | None = None,
                         transport_config: dict[str, Any] | None = None,
                         home: Home | None = None) -> AsyncIterator[LocalNode]:
    """`home`: run on this home (a node started again) and leave it in place; by
    default a fresh one, removed at the end."""
    from p2pm.services.keystore.actor import Keystore

    own_home = home is None
    home = make_home() if home is None else home
    cfg = configmod.defaults()
    cfg["transport"]["listen"] = listen or ["/ip4/127.0.0.1/tcp/0"]
    cfg["transport"].update(transport_config or {})
    endpoints = Endpoints.inproc(f"{name}-{home.root.name}")
    ctx = zmq.Context.instance()
    try:
        transport = Transport(home, cfg)  # a bad setting raises ConfigError here
        async with trio.open_nursery() as nursery:
            await nursery.start(ActorRuntime(Keystore(home, cfg), endpoints, ctx).serve)
            await nursery.start(ActorRuntime(transport, endpoints, ctx).serve)
            async with open_client(ctx, endpoints.rpc("transport"), "transport") as client:
                with trio.fail_after(15):
                    await transport._started.wait()
                me = await client.call("addrs")
                yield LocalNode(home, endpoints, transport, client, me["peer_id"], me["addrs"])
            nursery.cancel_scope.cancel()
    finally:
        if own_home:
            shutil.rmtree(home.root, ignore_errors=True)
