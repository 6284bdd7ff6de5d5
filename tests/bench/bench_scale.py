"""Scale benchmark: how a node's costs grow with what it has stored.

    python -m tests.bench.bench_scale

A generated home holds 200 conversations (50 direct chats, one per contact, and 150
rooms of 3-12 members), 50 contacts and N messages (N = 0, 1,000, 20,000, 200,000),
spread unevenly (conversation i gets a share proportional to 1/(i+1), so the busiest
holds about a sixth of them). Each message is a real envelope, as gossip writes it:
the plaintext signed by its author's identity key and sealed with the conversation's
content key (`conversations.seal`), its id the content hash. The rows go in through
the storage store with sealing at rest (`Store.message_put`, `kv_put`, `outbox_done`),
in batches of the storage actor's MAX_BATCH through `Store.run_batch`: the same calls
the actor makes for its group commit, with synchronous=OFF while generating (the
figures are measured afterwards with the node's own setting). Our own messages are
stored with their recipients (outbox rows, then marked done, as delivery leaves them);
half of the conversations have a read mark three messages before their end.

Then, on each home, the whole node runs (`p2pm up`, every actor under supervisord):
* time to healthy as `up` reports it, and the storage store's open alone;
* `history` of the busiest conversation through the gateway (p50 of its newest
  50-message page), and the storage RPC underneath it;
* `inbox` and `conversations` through the gateway (p50), and storage's
  `conversation_list` underneath them;
* RSS of the storage actor and of the whole node once those have run;
* bytes on disk per message: node.db + WAL, over the messages stored.
Each figure's baseline is the empty node of the same run; the 1k and 20k rows show
the shape of the curve. Generated homes live under one temp dir, removed at the end.
"""

from __future__ import annotations

import math
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nacl.signing
import orjson
import trio
import zmq
from p2pm.common import identity
from p2pm.common.client import open_client
from p2pm.common.home import Home
from p2pm.services.gossip import conversations as cv
from p2pm.services.storage import sealing
from p2pm.services.storage.actor import MAX_BATCH
from p2pm.services.storage.store import Message, Store

from tests.bench.bench_node import rss_kib
from tests.helpers import destroy_home, run_p2pm, start_node
from tests.helpers.node import Node
from tests.integration.chatnet import LOOPBACK

SIZES = (0, 1_000, 20_000, 200_000)
CONVERSATIONS = 200
CONTACTS = 50
DIRECT = CONTACTS  # one direct chat per contact; the rest are rooms
REPEAT = 25
GATEWAY_REPEAT = 3  # each gateway call lists every conversation through gossip: slow
START_TS = 1_700_000_000.0
YEAR_S = 365 * 86400.0
# Message texts are slices of this (random.choices per message costs more than sealing).
CORPUS = "".join(random.Random(3).choices("abcdefghij klmnopqrstuvwxyz.,", k=100_000))


def _p50_ms(fn: Any, n: int = REPEAT) -> float:
    fn()  # warm: the first call pays for a cold page cache
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _ap50_ms(fn: Any, n: int = REPEAT) -> float:
    await fn()
    samples = []
    for _ in range(n):
        started = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


async def _timed_calls(home: Home, conv: str, messages: int) -> dict[str, float]:
    """p50 of each read, over one connected client per actor (what the CLI's attach
    keeps), so the figure is the actor's work and not a client's setup."""
    ctx = zmq.Context.instance()
    ep = home.endpoints()
    out: dict[str, float] = {}
    async with open_client(ctx, ep.rpc("storage"), "storage") as st, \
            open_client(ctx, ep.rpc("gateway"), "gateway") as gw:
        page = {"conversation": conv, "limit": 50}
        out["storage_history_ms"] = await _ap50_ms(
            lambda: st.call("history", page, timeout=30))
        out["storage_list_ms"] = await _ap50_ms(
            lambda: st.call("conversation_list", {}, timeout=30))
        got = await gw.call("history", page, timeout=60)
        if messages and len(got) != 50:
            raise RuntimeError(f"history gave {len(got)} messages, not 50")
        out["history_ms"] = await _ap50_ms(lambda: gw.call("history", page, timeout=120), GATEWAY_REPEAT)
        out["conversations_ms"] = await _ap50_ms(
            lambda: gw.call("conversations", {}, timeout=120), GATEWAY_REPEAT)
        out["inbox_ms"] = await _ap50_ms(lambda: gw.call("inbox", {}, timeout=300), GATEWAY_REPEAT)
    return out


class Population:
    """Who and what the generated node knows: contacts with keys, conversations."""

    def __init__(self, me: str, me_key: nacl.signing.SigningKey, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.me, self.keys = me, {me: me_key}
        self.contacts: list[str] = []
        for _ in range(CONTACTS):
            sk = nacl.signing.SigningKey(bytes(self.rng.getrandbits(8) for _ in range(32)))
            pid = identity.peer_id_from_public_key(bytes(sk.verify_key))
            self.keys[pid] = sk
            self.contacts.append(pid)
        self.convs: list[tuple[cv.Keys, bytes, list[str]]] = []
        for i in range(CONVERSATIONS):
            secret = bytes(self.rng.getrandbits(8) for _ in range(32))
            if i < DIRECT:
                kind, members = "direct", sorted({me, self.contacts[i]})
            else:
                kind = "room"
                members = sorted({me, *self.rng.sample(self.contacts, self.rng.randint(2, 11))})
            self.convs.append((cv.Keys.derive(kind, secret), secret, members))
        # Rank by busyness apart from kind, so the busiest is sometimes a room.
        self.rng.shuffle(self.convs)


def generate(path: Path, key: bytes, pop: Population, messages: int) -> dict[str, Any]:
    """Write the population and `messages` messages into a new database at `path`."""
    rng = random.Random(11)
    store = Store.open(path, "OFF", key)
    try:
        for i, pid in enumerate(pop.contacts):
            # No addresses: the node would spend its time dialing peers that are not there.
            store.contact_add(f"contact{i:02d}", pid, [], False, START_TS)
        for keys, secret, members in pop.convs:
            store.conversation_put(keys.id, keys.kind, "" if keys.kind == "direct"
                                   else f"room {keys.id[:6]}", secret, members, START_TS)
        weights = [1 / (i + 1) for i in range(CONVERSATIONS)]
        total = sum(weights)
        counts = [math.floor(messages * w / total) for w in weights]
        counts[0] += messages - sum(counts)
        ops: list[Any] = []
        tails: dict[str, list[float]] = {}

        def flush() -> None:
            for r in store.run_batch(ops):
                r.unwrap()
            ops.clear()

        for (keys, _secret, members), count in zip(pop.convs, counts):
            seqs = {m: 0 for m in members}
            others = [m for m in members if m != pop.me]
            # Spread over a year, in order; a little jitter, never two equal times.
            step = YEAR_S / max(count, 1)
            ts = START_TS
            for _ in range(count):
                ts += step * rng.uniform(0.5, 1.5)
                author = pop.me if rng.random() < 0.3 else rng.choice(others)
                seqs[author] += 1
                start, size = rng.randrange(len(CORPUS) - 280), rng.randint(8, 280)
                text = CORPUS[start:start + size]
                plain = cv.message_plaintext(keys.id, author, seqs[author], ts, text)
                sig = identity.sign(pop.keys[author], cv.MESSAGE_DOMAIN, plain)
                mid = cv.message_id(plain)
                msg = Message(mid, keys.id, author, seqs[author], ts,
                              cv.seal(keys.content_key, sig, plain),
                              "delivered" if author == pop.me else "received", ts + 0.1)
                if author == pop.me:
                    ops.append((store.message_put, (msg, tuple(others))))
                    ops.extend((store.outbox_done, (mid, r)) for r in others)
                else:
                    ops.append((store.message_put, (msg, ())))
                tails.setdefault(keys.id, []).append(ts)
                del tails[keys.id][:-4]
                if len(ops) >= MAX_BATCH:
                    flush()
        flush()
        for n, (keys, _s, _m) in enumerate(pop.convs):
            if n % 2 == 0 and len(tails.get(keys.id, [])) == 4:
                store.kv_put(f"gossip.read.{keys.id}", repr(tails[keys.id][0]).encode(),
                             START_TS)
        store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return {"busiest": pop.convs[0][0].id, "busiest_count": counts[0]}
    finally:
        store.close()


def disk_bytes(data: Path) -> int:
    return sum((data / f).stat().st_size for f in ("node.db", "node.db-wal")
               if (data / f).exists())


def measure(messages: int, tmp: Path) -> dict[str, float]:
    home = Home(Path(tempfile.mkdtemp(prefix="p2pm-scale-", dir=tmp)))
    node: Node | None = None
    try:
        node = start_node(home, listen=LOOPBACK, up=False)
        sk = identity.open_identity(home.identity_file,
                                    identity.derive_unlock_key(home.identity_file, ""))
        key = identity.derive_subkey(sk, sealing.PURPOSE)
        pop = Population(node.peer_id, sk)
        home.data.mkdir(parents=True, exist_ok=True, mode=0o700)
        started = time.perf_counter()
        info = generate(home.data / "node.db", key, pop, messages)
        gen_s = time.perf_counter() - started
        out: dict[str, float] = {"generate_s": gen_s}

        def store_open() -> None:
            Store.open(home.data / "node.db", "FULL", key).close()
        out["store_open_ms"] = _p50_ms(store_open, 5)

        proc = run_p2pm(home, "--json", "up", "--timeout", "120", check=True, timeout=180)
        node.up_output = orjson.loads(proc.stdout)
        out["healthy_s"] = float(node.up_output["healthy_after_s"])
        out.update(trio.run(_timed_calls, home, info["busiest"], messages))
        pids = {**node.pids(), "supervisord": node.supervisor().pid()}
        out["rss_storage_mib"] = rss_kib(pids["storage"]) / 1024
        out["rss_node_mib"] = sum(rss_kib(p) for p in pids.values() if p) / 1024
        out["disk_bytes"] = disk_bytes(home.data)
        print(f"scale {messages}: {out}", file=sys.stderr, flush=True)
        return out
    finally:
        if node is not None:
            node.destroy()
        else:
            destroy_home(home)


ROWS = (  # key, row name, unit, digits
    ("healthy_s", "time to healthy after p2pm up", "s", 2),
    ("store_open_ms", "storage store open (migrate, key check, count)", "ms", 1),
    ("history_ms", "gateway history, busiest conversation, newest 50, p50", "ms", 1),
    ("storage_history_ms", "storage history RPC, same page, p50", "ms", 1),
    ("inbox_ms", "gateway inbox, p50", "ms", 1),
    ("conversations_ms", "gateway conversations, p50", "ms", 1),
    ("storage_list_ms", "storage conversation_list RPC, p50", "ms", 1),
    ("rss_storage_mib", "RSS of the storage actor", "MiB", 1),
    ("rss_node_mib", "RSS of 6 actors + supervisord", "MiB", 1),
)


def run() -> list[dict[str, Any]]:
    tmp = Path(tempfile.mkdtemp(prefix="p2pm-bench-scale-", dir="/tmp"))
    try:
        figures = {size: measure(size, tmp) for size in SIZES}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    empty = figures[0]
    rows: list[dict[str, Any]] = []
    for key, name, unit, digits in ROWS:
        for size in SIZES[1:]:
            rows.append({"name": f"scale {size:,} msgs: {name}",
                         "value": round(figures[size][key], digits), "unit": unit,
                         "baseline": "empty node, same run",
                         "baseline_value": round(empty[key], digits)})
    for size in SIZES[1:]:
        rows.append({"name": f"scale {size:,} msgs: bytes on disk per message (db + WAL)",
                     "value": round((figures[size]["disk_bytes"] - empty["disk_bytes"]) / size),
                     "unit": "B", "baseline": "empty node's db + WAL, bytes",
                     "baseline_value": empty["disk_bytes"]})
        rows.append({"name": f"scale {size:,} msgs: generating the home", "value":
                     round(figures[size]["generate_s"], 1), "unit": "s",
                     "baseline": "", "baseline_value": None})
    return rows


if __name__ == "__main__":
    sizes = [int(a) for a in sys.argv[1:]]
    if sizes:
        SIZES = (0, *sizes)
    for row in run():
        print(f"{row['name']:<78} {row['value']:>9} {row['unit']:<4} "
              f"({row['baseline']}: {row['baseline_value']})", flush=True)
