"""Kademlia lookup benchmark: 10,000 nodes of the real DHT core on a simulated network.

    python -m tests.bench.bench_dht_sim

Routing tables are filled from a global view (up to k=20 random peers per bucket from
the peers really in it; see services/dht/sim.py), then a fraction of the nodes goes
offline without warning (churn: they stay in others' tables and never answer; a
request to them fails at its 5 s deadline). 300 FIND_NODE lookups of random online
nodes from random online nodes, alpha=3, one-way latency 10-100 ms. Every message is
encoded and decoded with the protobuf codec, as on the wire.

Printed per churn level: success (the looked-up node is in the result), recall of the
true 20 closest online nodes, rounds (the depth of sequential round trips a lookup
needed) median / p90 / max, peers queried per lookup, simulated lookup time, and the
wall-clock CPU time per lookup. The churn rows are compared with the same run without
churn.

Then records: 100 random nodes each put their /pk/ record at the 20 closest nodes,
the churn fraction goes offline, and every record is read back (GET_VALUE, quorum 3)
from another random online node: the share found, and the rounds a get needed.
"""

from __future__ import annotations

import time
from typing import Any

from p2pm.services.dht.sim import measure, measure_records

NODES = 10_000
LOOKUPS = 300
CHURNS = (0.0, 0.2)
RECORDS = 100


def _row(name: str, value: float, unit: str, base: dict[str, Any] | None = None,
         key: str | None = None) -> dict[str, Any]:
    return {"name": name, "value": value, "unit": unit,
            "baseline": "0% churn, same run" if base is not None else None,
            "baseline_value": round(base[key], 2) if base is not None and key else None}


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    results: dict[float, dict[str, Any]] = {}
    for churn in CHURNS:
        started = time.perf_counter()
        r = measure(NODES, LOOKUPS, churn, seed=1, wire=True)
        r["wall_ms_per_lookup"] = 1000 * (time.perf_counter() - started) / LOOKUPS
        r["success_pct"] = round(100 * r["success"], 2)
        r["recall_pct"] = round(100 * r["recall"], 2)
        results[churn] = r
        base = results[0.0] if churn else None
        label = f"dht {NODES} nodes {int(churn * 100)}% churn"
        rows += [
            _row(f"{label} success", r["success_pct"], "%", base, "success_pct"),
            _row(f"{label} recall of true 20 closest", r["recall_pct"], "%", base, "recall_pct"),
            _row(f"{label} rounds median", r["rounds_median"], "rounds", base, "rounds_median"),
            _row(f"{label} rounds p90", r["rounds_p90"], "rounds", base, "rounds_p90"),
            _row(f"{label} rounds max", r["rounds_max"], "rounds", base, "rounds_max"),
            _row(f"{label} peers queried per lookup", round(r["queried_mean"], 1), "peers",
                 base, "queried_mean"),
            _row(f"{label} simulated lookup time median", round(r["latency_median"], 2), "s",
                 base, "latency_median"),
            _row(f"{label} wall time per lookup (incl. setup)",
                 round(r["wall_ms_per_lookup"], 1), "ms"),
        ]
    for churn in CHURNS:
        r = measure_records(NODES, RECORDS, churn, seed=1, wire=True)
        label = f"dht {NODES} nodes {int(churn * 100)}% churn after put"
        rows += [
            _row(f"{label}: records found", round(100 * r["found"], 2), "%"),
            _row(f"{label}: get rounds median", r["rounds_median"], "rounds"),
            _row(f"{label}: get rounds max", r["rounds_max"], "rounds"),
        ]
    return rows


def main() -> None:
    started = time.perf_counter()
    for row in run():
        base = (f"  (baseline {row['baseline']}: {row['baseline_value']} {row['unit']})"
                if row["baseline"] else "")
        print(f"{row['name']}: {row['value']} {row['unit']}{base}")
    print(f"total {time.perf_counter() - started:.1f}s")


if __name__ == "__main__":
    main()
