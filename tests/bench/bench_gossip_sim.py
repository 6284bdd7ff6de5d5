"""GossipSub router benchmark: many routers on a simulated network.

    python -m tests.bench.bench_gossip_sim

10 and 100 routers on a ring plus random chords (2 per node), links with 10-50 ms
latency and 1 MB/s each way, all subscribed to one topic; random members publish
200-byte messages paced at rising rates. Each router is the real core with Ed25519
signing and verification; only the network is simulated, and each node is busy for
the real CPU time its router takes per received frame (one core per node), so high
rates saturate nodes as they would for real. Printed per rate: delivery % (every
message at every other member), duplicates received per message (network-wide),
forwards dropped by the queue policy, and publish-to-delivery latency p50/p99 in
simulated time.

Wall-clock CPU per delivery (all routers plus the simulator itself) is measured too,
against the floor of one Ed25519 verification (same run), which every delivery needs.

The baselines for delivery and latency are py-libp2p 0.8.1's GossipSub measured with
real hosts in one process (10 nodes, ring + chords, 1 s heartbeat, spam protection
off; see the project's libp2p notes): a different harness (real time, loopback), so
the comparison shows orders of magnitude, not a race.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any

import nacl.signing

from p2pm.services.gossip.router.sim import Simulation, ring_with_chords

TOPIC = "room"
PAYLOAD = 200

# py-libp2p 0.8.1, 10 nodes (1 s heartbeat, spam protection off).
PY_LIBP2P = {
    ("delivery", 20): 100.0, ("delivery", 50): 84.6,
    ("p50", 2): 32.0, ("p50", 20): 3500.0,
}


def run_rate(nodes: int, rate: float, count: int, seed: int = 1) -> dict[str, float]:
    rng = random.Random(seed)
    sim = Simulation(nodes, ring_with_chords(nodes, 2, rng), seed=seed,
                     latency=(0.010, 0.050), bandwidth=1_000_000.0, cpu_model=True)
    for i in range(nodes):
        sim.subscribe(i, TOPIC)
    sim.run_until(3.0)  # let meshes form
    start = sim.now
    for k in range(count):
        sim.publish(rng.randrange(nodes), TOPIC, rng.randbytes(PAYLOAD), at=start + k / rate)
    began = time.perf_counter()
    sim.run_until(start + count / rate + 10.0)
    wall = time.perf_counter() - began
    report = sim.delivery_report(list(range(nodes)))
    dropped = sum(n.router.counters["dropped_forward_queue_full"] for n in sim.nodes)
    report["wall_s"] = wall
    report["cpu_us_per_delivery"] = 1e6 * wall / max(1, report["delivered"])
    report["forward_drops"] = dropped
    return report


def verify_floor_us(samples: int = 2000) -> float:
    key = nacl.signing.SigningKey(bytes(32))
    signed = key.sign(b"libp2p-pubsub:" + bytes(300))
    vk = key.verify_key
    began = time.perf_counter()
    for _ in range(samples):
        vk.verify(signed)
    return 1e6 * (time.perf_counter() - began) / samples


def run() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    floor = verify_floor_us()
    # 10 nodes: about 4 s of publishing per rate (200-2000 messages); 100 nodes: 150
    # messages per rate, to keep the run under a minute on two cores.
    plans = [(10, [2, 20, 50, 200, 1000, 5000], lambda rate: min(max(4 * rate, 200), 2000)),
             (100, [20, 200, 2000], lambda rate: 150)]
    for nodes, rates, count in plans:
        costs = []
        for rate in rates:
            r = run_rate(nodes, rate, count(rate))
            costs.append(r["cpu_us_per_delivery"])
            label = f"gossip sim {nodes} nodes {rate} msg/s"
            base_d = PY_LIBP2P.get(("delivery", rate)) if nodes == 10 else None
            base_p = PY_LIBP2P.get(("p50", rate)) if nodes == 10 else None
            rows += [
                {"name": f"{label}: delivery", "value": round(r["delivery_pct"], 2),
                 "unit": "%", "baseline": "py-libp2p 0.8.1" if base_d else None,
                 "baseline_value": base_d},
                {"name": f"{label}: duplicates per message (network-wide)",
                 "value": round(r["duplicates_per_msg"], 1), "unit": "msgs",
                 "baseline": None, "baseline_value": None},
                {"name": f"{label}: latency p50 (simulated time)",
                 "value": round(1000 * r["p50_s"], 1), "unit": "ms",
                 "baseline": "py-libp2p 0.8.1" if base_p else None,
                 "baseline_value": base_p},
                {"name": f"{label}: latency p99 (simulated time)",
                 "value": round(1000 * r["p99_s"], 1), "unit": "ms",
                 "baseline": None, "baseline_value": None},
                {"name": f"{label}: forwards dropped (counted)", "value": r["forward_drops"],
                 "unit": "msgs", "baseline": None, "baseline_value": None},
            ]
        rows.append({"name": f"gossip sim {nodes} nodes: CPU per delivery (routers + simulator)",
                     "value": round(statistics.median(costs), 1), "unit": "µs",
                     "baseline": "one Ed25519 verify", "baseline_value": round(floor, 1)})
    return rows


def main() -> None:
    for row in run():
        base = (f"  (baseline {row['baseline']}: {row['baseline_value']} {row['unit']})"
                if row["baseline"] else "")
        print(f"{row['name']}: {row['value']} {row['unit']}{base}")


if __name__ == "__main__":
    main()
