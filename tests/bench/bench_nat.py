"""NAT traversal figures from the namespace lab (tests/network/lab.py): two nodes behind
port-preserving home routers and a public relay, all real nodes under supervisord.

    .venv/bin/python -m tests.bench.bench_nat

- start to first relayed message: from launching the three nodes until h1's first ping
  reaches h2 through the relay (node start-up, AutoNAT verdict, reservation, relayed
  dial included), and the same from the moment `p2pm up` returned on all three;
- relayed connection to direct: from the relayed dial's return until DCUtR's direct
  connection is in place;
- hole-punch success over 20 attempts: each attempt hangs up, dials through the relay
  again and counts whether DCUtR made the connection direct (the dht, gossip and
  gateway are stopped meanwhile, so that nothing redials the peer directly). The baseline is the
  published real-world DCUtR success rate (about 70% of 4.4 million attempts, Trautwein
  et al. 2025). Every attempt reuses the same ports (both nodes dial from their
  listening port), so the lab enables net.ipv4.tcp_tw_reuse in the two home namespaces:
  otherwise the previous attempt's TIME_WAIT would block the same 4-tuple for a minute.

Needs root (network namespaces); without it, one row says why.
"""

from __future__ import annotations

import sys
import time
from typing import Any

ATTEMPTS = 20
PUBLISHED_SUCCESS = 70.0  # percent


def _skip_row(reason: str) -> list[dict[str, Any]]:
    return [{"name": "NAT lab (skipped)", "value": None, "unit": "", "baseline": reason,
             "baseline_value": None}]


def run() -> list[dict[str, Any]]:
    from tests.helpers import wait_for
    from tests.network.lab import Lab, lab_missing, remove_leftovers

    missing = lab_missing()
    if missing:
        return _skip_row(missing)
    remove_leftovers()
    lab = Lab(nat1="easy", nat2="easy").build()
    try:
        for role in ("h1", "h2"):
            lab.ns_exec(role, "sysctl", "-q", "-w", "net.ipv4.tcp_tw_reuse=1")
        started = time.monotonic()
        # A failed punch blocks the next run to that peer for the cooldown, which
        # would turn one failure into a string of them here: attempts are independent.
        relay, h1, h2 = lab.start_standard(holepunch_cooldown_s=0.1)
        up_s = time.monotonic() - started

        def circuit() -> str | None:
            return next((a for a in h2.status()["addrs"] if "/p2p-circuit/" in a), None)

        def direct() -> bool:
            entry = h1.peer(h2.peer_id)
            return bool(entry and not entry["relayed"])

        addr = wait_for(circuit, 60, "h2's relayed address")
        h1.call("dial", {"addr": addr}, timeout=20)
        dialled = time.monotonic()
        h1.call("ping", {"peer_id": h2.peer_id}, timeout=15)
        first_message_s = time.monotonic() - started
        wait_for(direct, 30, "the direct connection")
        upgrade_s = time.monotonic() - dialled

        # The dht and gossip would reconnect a hung-up peer by themselves (directly,
        # through the conntrack entries the last punch left): only the transport runs
        # during the attempts, so each one really goes relay first, then DCUtR.
        for node in (h1, h2):
            for actor in ("gateway", "gossip", "dht"):
                node.node.supervisor().stop_process(actor)
        successes = 0
        for _ in range(ATTEMPTS):
            before = h2.status()["nat"]["dcutr"]
            done = before["upgraded"] + before["failed"]
            for a, b in ((h1, h2), (h2, h1)):
                try:
                    a.call("hangup", {"peer_id": b.peer_id})
                except Exception:
                    pass  # already gone
            wait_for(lambda: h1.peer(h2.peer_id) is None and h2.peer(h1.peer_id) is None, 15,
                     "the hang-up")
            try:
                h1.call("dial", {"addr": addr}, timeout=20)
            except Exception:
                continue  # counted as a failure
            after = wait_for(lambda: (lambda d: d if d["upgraded"] + d["failed"] > done
                                      else None)(h2.status()["nat"]["dcutr"]),
                             30, "DCUtR's outcome")
            successes += after["upgraded"] > before["upgraded"]
    finally:
        lab.close()
    return [
        {"name": "start to first relayed message (3 nodes, easy NATs)",
         "value": round(first_message_s, 2), "unit": "s", "baseline": "", "baseline_value": None},
        {"name": "nodes up to first relayed message (verdict, reservation, dial, ping)",
         "value": round(first_message_s - up_s, 2), "unit": "s", "baseline": "",
         "baseline_value": None},
        {"name": "relayed connection to direct (DCUtR)", "value": round(upgrade_s, 3),
         "unit": "s", "baseline": "", "baseline_value": None},
        {"name": f"hole-punch success over {ATTEMPTS} attempts (easy/easy)",
         "value": round(100.0 * successes / ATTEMPTS, 1), "unit": "%",
         "baseline": "DCUtR in the wild (Trautwein et al. 2025)",
         "baseline_value": PUBLISHED_SUCCESS},
    ]


def main() -> int:
    for row in run():
        base = f"  ({row['baseline']}: {row['baseline_value']} {row['unit']})" \
            if row["baseline_value"] is not None else ""
        print(f"{row['name']}: {row['value']} {row['unit']}{base}" if row["value"] is not None
              else f"{row['name']}: {row['baseline']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
