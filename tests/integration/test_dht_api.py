"""The dht's API on three in-process nodes (keystore, storage, transport and dht each,
over inproc endpoints, talking libp2p on loopback): signed records of the node's own
namespace, providers, a client-mode node, and the errors a local caller gets."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

from p2pm.common import errors
from tests.helpers.dht_node import DhtNode, open_dht_node

DEADLINE = 20.0


@asynccontextmanager
async def three(client_mode_last: bool = False) -> AsyncIterator[list[DhtNode]]:
    async with open_dht_node("a") as a, open_dht_node("b", bootstrap=a.addrs) as b, \
            open_dht_node("c", bootstrap=b.addrs,
                          mode="client" if client_mode_last else "server") as c:
        with trio.fail_after(DEADLINE):
            # A client-mode node enters nobody's table.
            for node, want in ((a, 1), (b, 1 if client_mode_last else 2), (c, 2)):
                while (await node.call("dht", "routing_table"))["size"] < want:
                    await trio.sleep(0.05)
        yield [a, b, c]


async def refused(node: DhtNode, method: str, params: dict[str, Any]) -> str:
    with pytest.raises(errors.BusError) as info:
        await node.call("dht", method, params, retries=0)
    return info.value.code


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_signed_records_providers_and_caller_errors() -> None:
    async with three() as (a, b, c):
        key = f"/p2pm/profile/{c.peer_id}"
        put = await c.call("dht", "put", {"key": key, "value": b64(b"v1")})
        assert set(put["stored_at"]) == {a.peer_id, b.peer_id}
        got = await a.call("dht", "get", {"key": key})
        assert base64.b64decode(got["value"]) == b"v1" and got["seq"] > 0
        # A later put of the owner wins everywhere (higher seq).
        await trio.sleep(0.002)
        await c.call("dht", "put", {"key": key, "value": b64(b"v2")})
        assert base64.b64decode((await b.call("dht", "get", {"key": key}))["value"]) == b"v2"

        # Nobody writes into another peer's records, or outside the allowed namespaces.
        assert await refused(a, "put", {"key": key, "value": b64(b"x")}) == errors.FORBIDDEN
        assert await refused(a, "put", {"key": "/evil/x", "value": b64(b"x")}) \
            == errors.FORBIDDEN
        assert await refused(a, "get", {"key": "plain"}) == errors.FORBIDDEN
        assert await refused(a, "get", {"key": f"/p2pm/other/{a.peer_id}"}) \
            == errors.NOT_FOUND
        assert await refused(a, "find_peer", {"peer_id": "nope"}) == errors.BAD_PARAMS
        assert await refused(a, "provide", {"key": "1220ab"}) == errors.BAD_PARAMS

        content = "1220" + "cd" * 32
        sent = await a.call("dht", "provide", {"key": content})
        assert set(sent["sent_to"]) == {b.peer_id, c.peer_id}
        found = await c.call("dht", "find_providers", {"key": content})
        assert [p["peer_id"] for p in found["providers"]] == [a.peer_id]
        assert found["providers"][0]["addrs"] == a.addrs


async def test_a_client_mode_node_queries_but_serves_nothing() -> None:
    async with three(client_mode_last=True) as (a, b, c):
        table = await c.call("dht", "routing_table")
        assert table["mode"] == "client" and table["size"] == 2
        # It finds others...
        found = await c.call("dht", "find_peer", {"peer_id": a.peer_id})
        assert found["addrs"] == a.addrs
        # ...but is in nobody's table, and does not offer the protocol to peers.
        for other in (a, b):
            ids = {p["peer_id"] for bucket in (await other.call("dht", "routing_table"))
                   ["buckets"] for p in bucket["peers"]}
            assert c.peer_id not in ids
        info = await b.call("transport", "peer_info", {"peer_id": c.peer_id})
        assert "/ipfs/kad/1.0.0" not in info["protocols"]


def test_bad_settings_are_refused_not_replaced() -> None:
    from p2pm.common.config import ConfigError
    from p2pm.services.dht.actor import Dht

    for dht, complaint in (({"mode": "sometimes"}, "dht.mode: must be one of auto, server"),
                           ({"bucket_size": 0}, "dht.bucket_size: must be an integer"),
                           ({"bucket_size": 2, "alpha": 3}, "dht.alpha: must be at most")):
        with pytest.raises(ConfigError, match=complaint):
            Dht(None, {"dht": dht})
    assert Dht(None, {"dht": {"mode": "client", "bucket_size": 8}}).core_config.k == 8
