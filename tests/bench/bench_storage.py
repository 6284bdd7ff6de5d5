"""Storage benchmark: acknowledged message writes per second.

    python -m tests.bench.bench_storage

Baselines from the same run: the store called directly (no bus, no process hop), and
synchronous=NORMAL next to the default FULL (FULL pays an fsync per commit; group
commit shares it between concurrent writers); and the cost of sealing at rest, a
message put and read back through the store sealed next to the same in clear.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import zmq

from p2pm.common import identity, wire
from p2pm.common.client import open_client
from p2pm.common.home import Home
from p2pm.services.storage.store import Message, Store

WRITES = 2000
BODY = b"x" * 512
KEY = bytes(range(32))  # the at-rest key; any 32 bytes cost the same


def direct(sync: str) -> float:
    folder = tempfile.mkdtemp(prefix="p2pm-", dir="/tmp")
    try:
        store = Store.open(Path(folder) / "node.db", sync, KEY)
        store.conversation_put("c", "room", "", bytes(32), ["a"], 0.0)
        started = time.perf_counter()
        for i in range(WRITES):
            store.message_put(Message(f"m{i}", "c", "a", i + 1, float(i), BODY, "received", 0.0))
        rate = WRITES / (time.perf_counter() - started)
        store.close()
        return rate
    finally:
        shutil.rmtree(folder)


def put_get_us(key: bytes | None) -> float:
    """Microseconds per message stored and read back (synchronous=OFF, so the figure
    is SQL and sealing, not the disk), sealed under `key` or in clear (None)."""
    folder = tempfile.mkdtemp(prefix="p2pm-", dir="/tmp")
    try:
        store = Store.open(Path(folder) / "node.db", "OFF", key)
        store.conversation_put("c", "room", "", bytes(32), ["a"], 0.0)
        started = time.perf_counter()
        for i in range(WRITES):
            store.message_put(Message(f"m{i}", "c", "a", i + 1, float(i), BODY, "received", 0.0))
            assert store.message_get(f"m{i}").body == BODY
        cost = (time.perf_counter() - started) / WRITES * 1e6
        store.close()
        return cost
    finally:
        shutil.rmtree(folder)


def over_bus(sync: str, writers: int) -> float:
    home = Home(Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))).ensure()
    home.config_file.write_text(f'[storage]\nsynchronous = "{sync}"\n')
    # The storage actor opens the database with the keystore's at-rest key.
    identity.create_identity(home.identity_file, None)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "p2pm.common.service", actor, "--home", str(home.root)],
        stderr=subprocess.DEVNULL, start_new_session=True) for actor in ("keystore", "storage")]
    result: dict[str, float] = {}

    async def main() -> None:
        ep = home.endpoints().rpc("storage")
        async with open_client(zmq.Context.instance(), ep, "storage") as c:
            with trio.fail_after(30):
                while not (await c.call("sys.status", timeout=1, retries=20)).get("healthy"):
                    await trio.sleep(0.05)
            await c.call("conversation_put", {"id": "c", "kind": "room",
                                              "secret": wire.b64e(bytes(32)), "members": ["a"]})
            body = wire.b64e(BODY)
            per = WRITES // writers

            async def writer(k: int) -> None:
                for i in range(per):
                    seq = k * per + i + 1
                    await c.call("message_put", {
                        "id": f"m{seq}", "conversation": "c", "author": "a", "seq": seq,
                        "ts": float(seq), "body": body, "state": "received"})

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for k in range(writers):
                    nursery.start_soon(writer, k)
            result["rate"] = per * writers / (time.perf_counter() - started)

    try:
        trio.run(main)
    finally:
        for proc in procs:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(home.root)
    return result["rate"]


def run() -> list[dict[str, Any]]:
    direct_full = direct("FULL")
    rows = []
    for writers in (1, 16):
        full = over_bus("FULL", writers)
        normal = over_bus("NORMAL", writers)
        rows.append({"name": f"storage acknowledged writes, {writers} writer(s), FULL",
                     "value": round(full), "unit": "writes/s",
                     "baseline": "same with synchronous=NORMAL", "baseline_value": round(normal)})
    rows.append({"name": "storage writes through the bus, 16 writers, FULL",
                 "value": rows[-1]["value"], "unit": "writes/s",
                 "baseline": "Store called directly, 1 writer, FULL",
                 "baseline_value": round(direct_full)})
    rows.append({"name": "storage message put + get, sealed at rest", "value":
                 round(put_get_us(KEY), 1), "unit": "us/message",
                 "baseline": "same in clear", "baseline_value": round(put_get_us(None), 1)})
    return rows


if __name__ == "__main__":
    for row in run():
        print(f"{row['name']}: {row['value']} {row['unit']} "
              f"(baseline {row['baseline']}: {row['baseline_value']})")
