"""The gateway on its own: who may call it (run/ kept 0700, the TCP endpoint only with
the token), the live events it forwards, and the fakes it is tested with matching the
real gossip actor's contract."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import trio
import zmq

from p2pm.common import config as configmod
from p2pm.common import errors, wire
from p2pm.common.actor import ActorRuntime
from p2pm.common.cli.chat import gateway
from p2pm.common.home import Home
from p2pm.services.gateway.actor import TOKEN_FILE, Gateway
from tests.helpers.gateway_fakes import GOSSIP_CONTRACT, FakeGossip, FakeNetwork, FakeNode
from tests.helpers import wait_for


def _rpc_params(cls: type) -> dict[str, tuple[str, ...]]:
    out = {}
    for attr in dir(cls):
        fn = getattr(cls, attr)
        wname = getattr(fn, "_p2pm_rpc", None)
        if wname is not None:
            out[wname] = tuple(p for p in inspect.signature(fn).parameters if p != "self")
    return out


def test_fake_gossip_implements_the_contract_the_gateway_uses() -> None:
    fake = _rpc_params(FakeGossip)
    for method, params in GOSSIP_CONTRACT.items():
        assert fake.get(method) == params, method


def test_real_gossip_offers_the_contract_the_gateway_uses() -> None:
    from p2pm.services.gossip.actor import Gossip

    real = _rpc_params(Gossip)
    if "post" not in real:
        pytest.skip("the gossip actor's conversation RPCs have not landed")
    for method, params in GOSSIP_CONTRACT.items():
        assert real.get(method) == params, method


@pytest.fixture
def tcp_node() -> Iterator[FakeNode]:
    node = FakeNode("tcp", FakeNetwork())
    node.config["gateway"]["tcp"] = "tcp://127.0.0.1:*"
    try:
        node.start()
        yield node
    finally:
        node.stop()
        shutil.rmtree(node.home.root, ignore_errors=True)


def _tcp_call(endpoint: str, body: dict[str, Any]) -> dict[str, Any]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        sock.send_multipart([b"", orjson.dumps(body)])
        assert sock.poll(5000), "no reply on the TCP endpoint"
        return wire.loads(sock.recv_multipart()[-1])
    finally:
        sock.close()


def test_tcp_endpoint_needs_the_token(tcp_node: FakeNode) -> None:
    token_file = tcp_node.home.root / TOKEN_FILE
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    endpoint = wait_for(lambda: gateway(tcp_node.home, "sys.status")["tcp"], 5,
                        "the TCP endpoint")
    request = {"id": uuid.uuid4().hex, "method": "node_info", "params": {}}
    for bad in ({}, {"token": "wrong"}, {"token": token[:-1]}, {"token": 5}):
        reply = _tcp_call(endpoint, {**request, **bad})
        assert reply["ok"] is False and reply["error"]["code"] == "forbidden"
    reply = _tcp_call(endpoint, {**request, "token": token})
    assert reply["ok"] is True and reply["result"]["peer_id"] == tcp_node.peer_id
    assert gateway(tcp_node.home, "sys.status")["tcp_refused"] == 4
    garbage = _tcp_call(endpoint, {"nothing": 1})
    assert garbage["ok"] is False and garbage["error"]["code"] == "bad_request"


def test_a_bad_token_flood_is_limited_and_logged_in_a_summary(
        tcp_node: FakeNode, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="p2pm.gateway")
    token = (tcp_node.home.root / TOKEN_FILE).read_text().strip()
    endpoint = wait_for(lambda: gateway(tcp_node.home, "sys.status")["tcp"], 5,
                        "the TCP endpoint")
    flood = 3000
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    codes: dict[str, int] = {}
    try:
        for i in range(flood):
            sock.send_multipart([b"", orjson.dumps(
                {"id": str(i), "method": "node_info", "params": {}, "token": f"guess{i}"})])
        for _ in range(flood):
            assert sock.poll(10_000), "a request got no answer"
            reply = wire.loads(sock.recv_multipart()[-1])
            assert reply["ok"] is False
            codes[reply["error"]["code"]] = codes.get(reply["error"]["code"], 0) + 1
    finally:
        sock.close()
    print("answers to", flood, "wrong tokens:", codes)
    # Every request was answered; only the burst (and what refilled meanwhile) had its
    # token compared, the rest were told they are limited.
    assert sum(codes.values()) == flood
    assert codes.get("forbidden", 0) <= 40 and codes.get("limit", 0) >= flood - 40
    status = gateway(tcp_node.home, "sys.status")
    assert status["tcp_refused"] + status["tcp_limited"] == flood
    # The log says it once, then sums it up, instead of a line per request.

    def summary() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.getMessage().startswith("gateway.tcp_refused_summary")]

    line = wait_for(summary, 20, "the refusal summary")[0]
    print(line)
    counted = dict(re.findall(r"(refused|limited)=(\d+)", line))
    assert int(counted["refused"]) + int(counted["limited"]) == flood
    refusal_lines = [r for r in caplog.records if "tcp_refused" in r.getMessage()]
    assert len(refusal_lines) <= 3, [r.getMessage() for r in refusal_lines]
    # Once the source's bucket refills, the owner's client gets in again.
    request = {"id": uuid.uuid4().hex, "method": "node_info", "params": {}, "token": token}
    reply = wait_for(lambda: (r := _tcp_call(endpoint, request))["ok"] and r, 15,
                     "the door to admit the right token again")
    assert reply["result"]["peer_id"] == tcp_node.peer_id


async def test_tcp_door_off_loopback_needs_the_explicit_setting(short_tmp: Path) -> None:
    home = Home(short_tmp).ensure()
    for endpoint in ("tcp://0.0.0.0:*", "tcp://*:7600", "tcp://[::]:7600"):
        cfg = configmod.defaults()
        cfg["gateway"]["tcp"] = endpoint
        with pytest.raises(ValueError, match="gateway.tcp_allow_remote = true"):
            await Gateway(home, cfg).setup()
        assert not (home.root / TOKEN_FILE).exists()  # refused before anything was made
    cfg = configmod.defaults()
    cfg["gateway"].update(tcp="tcp://0.0.0.0:*", tcp_allow_remote=True)
    await Gateway(home, cfg).setup()
    assert (home.root / TOKEN_FILE).exists()
    # The setting is a real config key: a home's config.toml may say it, typed.
    (home.root / "config.toml").write_text(
        '[gateway]\ntcp = "tcp://0.0.0.0:*"\ntcp_allow_remote = true\n')
    assert configmod.load(home).gateway.tcp_allow_remote is True


async def test_run_dir_is_tightened_and_bad_tcp_config_refused(short_tmp: Path) -> None:
    home = Home(short_tmp).ensure()
    os.chmod(home.run, 0o755)
    await Gateway(home, configmod.defaults()).setup()
    assert stat.S_IMODE(home.run.stat().st_mode) == 0o700
    cfg = configmod.defaults()
    cfg["gateway"]["tcp"] = "http://0.0.0.0:80"
    with pytest.raises(ValueError, match="gateway.tcp: .*tcp://"):
        Gateway(home, cfg)
    assert not (home.root / TOKEN_FILE).exists()


def test_incoming_messages_and_receipts_are_pushed_to_clients() -> None:
    with FakeNetwork().run("alice", "bob") as (alice, bob):
        for me, other, name in ((alice, bob, "bob"), (bob, alice, "alice")):
            inv = gateway(other.home, "invite", {"name": name})["invite"]
            gateway(me.home, "contact_add", {"name": name, "invite": inv})
        events: dict[str, list[tuple[str, Any]]] = {"alice": [], "bob": []}
        subs = {}
        for name, node in (("alice", alice), ("bob", bob)):
            sub = zmq.Context.instance().socket(zmq.SUB)
            sub.setsockopt(zmq.LINGER, 0)
            sub.setsockopt(zmq.SUBSCRIBE, b"gateway.message")
            sub.connect(node.home.endpoints().events("gateway"))
            subs[name] = sub
        try:
            # A SUB joins asynchronously: send until the first event shows up.
            def pump() -> None:
                for name, sub in subs.items():
                    while sub.poll(0):
                        topic, payload = sub.recv_multipart()
                        events[name].append((topic.decode(), wire.loads(payload)["data"]))

            sent = gateway(alice.home, "send", {"contact": "bob", "text": "ping"})

            def bob_received() -> bool:
                pump()
                if not events["bob"]:
                    gateway(alice.home, "send", {"contact": "bob", "text": "ping"})
                return any(t == "gateway.message.received" and d["body"] == "ping"
                           and d["author"] == alice.peer_id for t, d in events["bob"])

            wait_for(bob_received, 20, "bob's received event")
            last = gateway(alice.home, "send", {"contact": "bob", "text": "ping"})

            def alice_receipt() -> bool:
                pump()
                return any(t == "gateway.message.state" and d["id"] == last["id"]
                           and d["state"] == "delivered" for t, d in events["alice"])

            wait_for(alice_receipt, 20, "alice's delivered event")
            assert sent["conversation"] == last["conversation"]
        finally:
            for sub in subs.values():
                sub.close()


async def test_gateway_without_gossip_says_so(short_tmp: Path) -> None:
    """An actor that is down is named in a clear error, after the retries."""
    from p2pm.common.client import open_client

    home = Home(short_tmp).ensure()
    endpoints = home.endpoints()
    ctx = zmq.Context.instance()
    gw = Gateway(home, configmod.defaults())
    gw.downstream_timeout, gw.downstream_retries = 0.2, 1
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(gw, endpoints, ctx).serve)
        async with open_client(ctx, endpoints.rpc("gateway"), "gateway") as client:
            with trio.fail_after(10):
                with pytest.raises(Exception) as info:
                    await client.call("conversations", timeout=5, retries=0)
        nursery.cancel_scope.cancel()
    assert info.value.code == "unavailable"  # type: ignore[attr-defined]
    assert "gossip actor is not answering" in info.value.message  # type: ignore[attr-defined]


def test_malformed_requests_get_errors_and_the_gateway_stays_up(tcp_node: FakeNode) -> None:
    """Wrong types, unknown params, huge or empty strings for every method: each an
    error reply with a code, none a crash, and nothing stored."""
    methods = [m for m in gateway(tcp_node.home, "sys.methods") if not m.startswith("sys.")]
    junk: list[Any] = [None, 5, True, [], {}, "", " ", "\x00\x07", "x" * 70_000,
                       "p2pm-node:" + "A" * 100 + ".AAAA"]
    replies = 0
    for method in methods:
        for value in junk:
            for params in ({"conversation": value}, {"name": value, "invite": value},
                           {"contact": value, "text": value}, {"unexpected": value},
                           {"id": value, "peer_id": value, "limit": value}):
                try:
                    gateway(tcp_node.home, method, params, retries=0)
                except errors.BusError as exc:
                    assert exc.code in ("bad_params", "not_found"), (method, params, exc)
                replies += 1
    assert replies == len(methods) * len(junk) * 5
    assert gateway(tcp_node.home, "sys.status")["healthy"]
    assert gateway(tcp_node.home, "contact_list") == []
    assert gateway(tcp_node.home, "conversations") == []
