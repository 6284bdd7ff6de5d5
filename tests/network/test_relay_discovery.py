"""Relays found through the DHT, in the NAT lab (lab.py) with one more public node.

The home nodes are configured with no relay at all: their only bootstrap peer is a
seed, a public node that serves the DHT and AutoNAT but no relay. The relay bootstraps
from the seed too and runs its dht as a client, so it is in nobody's routing table and
no DHT lookup ever connects a home node to it: the home nodes can only meet the relay
through its provider record under the relay key. (With the relay as their bootstrap
peer they would be connected to it, and reserve on it as a connected relay, with or
without discovery.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from p2pm.common import config as configmod
from p2pm.services.transport.relay_discovery import RELAY_PROVIDER_KEY_HEX
from tests.helpers import needs_root, wait_for

from .lab import INET, RELAY_IP, Lab, LabNode, sh
from .test_nat_lab import connection, reachability, relay_dial

pytestmark = needs_root

SEED_IP = f"{INET}.3"


class SeedLab(Lab):
    """The NAT lab plus a seed node on the internet."""

    def build(self) -> SeedLab:
        super().build()
        sh("ip", "netns", "add", self.ns("seed"))
        self.namespaces.append(self.ns("seed"))
        sh("ip", "-n", self.ns("seed"), "link", "set", "lo", "up")
        self._wire("seed", "eth0", SEED_IP, 24)
        return self


@pytest.fixture
def lab(lab_ready: None) -> Iterator[SeedLab]:
    made = SeedLab()
    try:
        yield made.build()
    finally:
        made.close()


def discovery(node: LabNode) -> dict[str, Any]:
    return node.status()["nat"]["relay_discovery"]


def reserved_on(node: LabNode) -> list[str]:
    return [r["relay"] for r in node.status()["nat"]["relay_client"]["reservations"]]


def test_home_nodes_find_the_relay_in_the_dht_and_are_dialable_through_it(
        lab: SeedLab) -> None:
    fast = {"autonat_dial_timeout_s": 2.0, "autonat_retry_s": 1.0, "holepunch": False}
    seed = lab.init_node("seed", SEED_IP, fast)
    relay = lab.init_node("relay", RELAY_IP, {"relay_service": True,
                                              "bootstrap": [seed.addr], **fast})
    cfg = configmod.load_file(relay.node.home.config_file)
    cfg.setdefault("dht", {})["mode"] = "client"
    relay.node.home.config_file.write_text(configmod.dump(cfg))
    homes = [lab.init_node(f"h{n}", f"198.19.{n}.2", {"bootstrap": [seed.addr], **fast})
             for n in (1, 2)]
    lab.up("seed", "relay", "h1", "h2")
    h1, h2 = homes

    assert wait_for(lambda: reachability(relay), 30, "relay's verdict") == "public"
    try:
        wait_for(lambda: discovery(relay)["announce"]["announces"] >= 1, 60,
                 "the relay to announce itself in the DHT")
        for home in homes:
            assert wait_for(lambda: reachability(home), 30, "a verdict") == "private"
            wait_for(lambda: reserved_on(home), 90, f"{home.name} to reserve on a relay")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nrelay: {discovery(relay)}\nh1: {discovery(h1)}\n"
                             f"h2: {discovery(h2)}\n"
                             f"h1 log: {lab.log_lines('h1', 'relay.')}") from None
    for home in homes:
        assert reserved_on(home) == [relay.peer_id]
        found = discovery(home)
        assert found["key"] == RELAY_PROVIDER_KEY_HEX
        assert [c["peer_id"] for c in found["candidates"]] == [relay.peer_id]
        assert found["candidates"][0]["addrs"] == [f"/ip4/{RELAY_IP}/tcp/4001"]
    # The seed is no relay: nobody reserved on it, and it announced nothing.
    assert discovery(seed)["announce"] is None

    # h2 is dialable at the circuit address it got from the discovered relay, and
    # traffic flows both ways through it.
    relay_dial(h1, h2)
    entry = connection(h1, h2)
    assert entry is not None and entry["relayed"]
    assert h2.call("ping", {"peer_id": h1.peer_id, "count": 2})["rtt_ms"] > 0
    assert relay.status()["nat"]["relay_service"]["circuits"] == 1
