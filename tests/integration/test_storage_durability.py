"""Storage as its own process: an acknowledged write survives SIGKILL.

Several writers store messages over the bus as fast as the actor acknowledges them;
the process is killed at a random moment with writes in flight, restarted, and every
acknowledged message must be there, byte for byte, in a database that passes
SQLite's integrity check. Several rounds run on the same database. A keystore process
runs beside it: the storage actor opens its sealed database with the keystore's key.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
import trio
import zmq

from p2pm.common import errors, identity, wire
from p2pm.common.client import Client, open_client
from p2pm.common.home import Home
from tests.helpers import ActorProcesses, make_home

WRITERS = 4
ROUNDS = 3
START_DEADLINE_S = 20.0
CONVERSATION = "durability"

pytestmark = pytest.mark.slow


@pytest.fixture
def procs() -> Iterator[ActorProcesses]:
    home = make_home().ensure()
    identity.create_identity(home.identity_file, None)
    p = ActorProcesses(home)
    p.start("keystore")
    try:
        yield p
    finally:
        p.kill_all()
        shutil.rmtree(home.root, ignore_errors=True)


async def wait_healthy(client: Client, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    with trio.fail_after(START_DEADLINE_S):
        while True:
            assert proc.poll() is None, f"storage exited with {proc.returncode}"
            try:
                status = await client.call("sys.status", timeout=0.5, retries=0)
            except errors.BusError:
                status = {}
            if status.get("healthy") and status.get("pid") == proc.pid:
                return status
            await trio.sleep(0.05)


def body_of(author: str, seq: int) -> bytes:
    return f"{author}/{seq}/".encode() * 8


async def write_forever(client: Client, author: str, first_seq: int,
                        acked: list[int]) -> None:
    """Store seq after seq until cancelled; a seq goes into `acked` only once its reply
    arrived. A timeout (a slow machine) retries the same message, which is harmless
    because message_put is idempotent."""
    seq = first_seq
    while True:
        params = {"id": f"{author}-{seq}", "conversation": CONVERSATION, "author": author,
                  "seq": seq, "ts": float(seq), "body": wire.b64e(body_of(author, seq)),
                  "state": "pending"}
        try:
            await client.call("message_put", params, timeout=2.0, retries=0)
        except errors.BusError as exc:
            assert exc.code == errors.TIMEOUT, exc
            continue
        acked.append(seq)
        seq += 1


def check_database(home: Home) -> None:
    conn = sqlite3.connect(home.data / "node.db")
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        conn.close()


def test_acknowledged_writes_survive_sigkill(procs: ActorProcesses) -> None:
    seed = int.from_bytes(os.urandom(4), "big")
    rng = random.Random(seed)
    authors = [f"12D3KooWWriter{i}" for i in range(WRITERS)]
    acked: dict[str, list[int]] = {a: [] for a in authors}

    async def main() -> None:
        ctx = zmq.Context.instance()
        async with open_client(ctx, procs.home.endpoints().rpc("storage"),
                               "storage") as client:
            for round_no in range(ROUNDS):
                proc = procs.start("storage")
                status = await wait_healthy(client, proc)
                await verify(client, status)
                if round_no == 0:
                    await client.call("conversation_put", {
                        "id": CONVERSATION, "kind": "room", "secret": wire.b64e(bytes(32)),
                        "members": authors})
                async with trio.open_nursery() as nursery:
                    for a in authors:
                        first = max(acked[a], default=0) + 1
                        nursery.start_soon(write_forever, client, a, first, acked[a])
                    # Kill only once writes are flowing, at a random moment after.
                    base = sum(len(v) for v in acked.values())
                    with trio.fail_after(30):
                        while sum(len(v) for v in acked.values()) < base + 20:
                            await trio.sleep(0.005)
                    await trio.sleep(rng.uniform(0, 0.3))
                    os.killpg(proc.pid, signal.SIGKILL)
                    # Calls in flight now are unacknowledged: abandon them.
                    nursery.cancel_scope.cancel()
                await trio.to_thread.run_sync(proc.wait)
                assert proc.returncode == -signal.SIGKILL
                check_database(procs.home)
            proc = procs.start("storage")
            await verify(client, await wait_healthy(client, proc))
            proc.send_signal(signal.SIGTERM)
            assert await trio.to_thread.run_sync(proc.wait) == 0
            check_database(procs.home)

    async def verify(client: Client, status: dict[str, Any]) -> None:
        total = sum(len(v) for v in acked.values())
        if not total:
            return
        # Unacknowledged writes may or may not have landed; acknowledged ones must.
        assert status["messages"] >= total, f"seed {seed}"
        ranges = (await client.call("author_ranges", {"conversation": CONVERSATION}))
        for author, seqs in acked.items():
            assert seqs == list(range(1, len(seqs) + 1))
            held = ranges["authors"][author]
            assert held["contiguous"] >= len(seqs), f"seed {seed}: {author} lost writes"
            page = await client.call("messages_by_author", {
                "conversation": CONVERSATION, "author": author, "to_seq": len(seqs),
                "limit": 1000})
            got = {m["seq"]: wire.b64d(m["body"]) for m in page["messages"]}
            assert got == {s: body_of(author, s) for s in seqs}, f"seed {seed}"

    trio.run(main)
    assert sum(len(v) for v in acked.values()) >= ROUNDS * 20
