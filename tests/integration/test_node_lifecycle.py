"""A node's life under supervisord, on real processes: up, crash and restart of each
actor, a clean stop, replacing an actor by hand, a wrong passphrase, two nodes side by
side, and no secret key on the bus or in the logs.

Times to healthy are printed (run with -s to see them), never asserted.
"""

from __future__ import annotations

import base64
import os
import signal
import time
from pathlib import Path

import orjson
import pytest
import zmq

from p2pm.common import errors, identity, supervisor as supmod, wire
from p2pm.common.home import ACTORS
from tests.helpers import Node, wait_for

pytestmark = pytest.mark.slow

PASSPHRASE = "correct horse battery staple"


def test_fresh_node_comes_up_with_every_actor_healthy(node: Node) -> None:
    assert set(node.up_output["actors"]) == set(ACTORS)
    assert all(row["healthy"] for row in node.up_output["actors"].values()), node.up_output
    assert node.up_output["peer_id"] == node.peer_id
    print(f"\ntime to healthy after up: {node.up_output['healthy_after_s']:.3f}s")

    status = orjson.loads(node.p2pm("status", "--json", check=True).stdout)
    pids = node.pids()
    for name in ACTORS:
        row = status["actors"][name]
        assert row["healthy"] is True, (name, row)
        assert row["pid"] == pids[name] != 0, (name, row, pids)
        assert row["supervised"] is True, (name, row)
    assert node.call("keystore", "identity")["peer_id"] == node.peer_id
    # Every actor asked the keystore only for what its job needs: nothing refused while
    # the node came up, and each that asked did so with its own token, kept private.
    assert status["actors"]["keystore"]["refused"] == {}
    tokens = node.home.run / "tokens"
    assert tokens.stat().st_mode & 0o777 == 0o700
    issued = {p.name: p.stat().st_mode & 0o777 for p in tokens.iterdir()}
    assert {"transport.token", "dht.token", "gossip.token"} <= set(issued), issued
    assert set(issued.values()) == {0o600}, issued
    assert len({p.read_text() for p in tokens.iterdir()}) == len(issued)
    # supervisord and the actors log where the home says.
    for name in (*ACTORS, "supervisord"):
        assert (node.home.logs / f"{name}.log").exists(), name


def test_each_killed_actor_is_restarted_and_the_others_keep_running(node_factory) -> None:
    # A protected identity: the restarted keystore must unlock from supervisord's
    # environment, without the passphrase.
    node = node_factory(passphrase=PASSPHRASE)
    for victim in ACTORS:
        before = node.pids()
        os.kill(before[victim], signal.SIGKILL)
        killed_at = time.monotonic()

        def restarted() -> bool:
            pid = node.pids()[victim]
            return pid not in (0, before[victim])

        wait_for(restarted, 20, f"supervisord to restart {victim}")
        new_pid = node.pids()[victim]

        def healthy_again() -> bool:
            try:
                st = node.call(victim, "sys.status", timeout=0.5, retries=0)
            except errors.BusError:
                return False
            return st["pid"] == new_pid and st["healthy"]

        wait_for(healthy_again, 20, f"{victim} to be healthy again")
        print(f"\n{victim}: healthy again {time.monotonic() - killed_at:.3f}s after kill -9")
        after = node.pids()
        assert {n: p for n, p in after.items() if n != victim} == \
            {n: p for n, p in before.items() if n != victim}
    assert node.call("keystore", "identity")["peer_id"] == node.peer_id

    # A command sent while its actor restarts is answered by the new process.
    old = node.pids()["gateway"]
    os.kill(old, signal.SIGKILL)
    out = node.p2pm("--json", "call", "gateway", "sys.ping", check=True)
    assert orjson.loads(out.stdout)["pid"] not in (0, old)


def test_clean_stop_of_an_actor_stays_stopped(node: Node) -> None:
    pid = node.pids()["gossip"]
    os.kill(pid, signal.SIGTERM)
    wait_for(lambda: node.states()["gossip"] == "EXITED", 15, "gossip to exit")
    info = node.supervisor().process("gossip")
    assert info.exitstatus == 0 and info.pid == 0
    # supervisord decides on a restart as it reaps the process: watch it stay down
    # for a few of its ticks, and the other actors stay healthy meanwhile.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert node.states()["gossip"] == "EXITED"
        time.sleep(0.1)
    with pytest.raises(errors.BusError) as exc:
        node.call("gossip", "sys.ping", timeout=0.3, retries=0)
    assert exc.value.code == errors.TIMEOUT
    assert node.healthy(tuple(a for a in ACTORS if a != "gossip"))


def test_an_actor_is_replaced_by_one_run_by_hand(node: Node) -> None:
    # While supervisord's dht runs, a second one is refused before it binds anything.
    second = node.p2pm("service", "dht", timeout=30)
    assert second.returncode != 0
    assert "dht is already running" in second.stderr
    assert node.call("dht", "sys.ping")["pid"] == node.pids()["dht"]

    assert node.supervisor().stop_process("dht")
    assert node.states()["dht"] == "STOPPED"
    by_hand = node.spawn("service", "dht")

    def answers_from_hand_run() -> bool:
        out = node.p2pm("--json", "call", "dht", "sys.ping", "--timeout", "0.5")
        return out.returncode == 0 and orjson.loads(out.stdout)["pid"] == by_hand.pid

    wait_for(answers_from_hand_run, 20, "the hand-run dht to answer")
    status = orjson.loads(node.p2pm("status", "--json", check=True).stdout)["actors"]["dht"]
    assert status["state"] == "STOPPED" and status["healthy"] is True
    assert status["pid"] == by_hand.pid and status["supervised"] is False

    third = node.p2pm("service", "dht", timeout=30)
    assert third.returncode != 0 and "already running" in third.stderr
    assert by_hand.poll() is None

    # Back to supervisord: the hand-run one exits cleanly on SIGTERM.
    by_hand.terminate()
    assert by_hand.wait(15) == 0
    assert node.supervisor().start_process("dht")
    new_pid = node.pids()["dht"]

    def answers_from_supervisord() -> bool:
        # Starting takes its imports' time first (seconds on a busy machine): an
        # unanswered ping is "not yet", not a failure.
        try:
            return node.call("dht", "sys.ping", timeout=0.5)["pid"] == new_pid
        except errors.BusError:
            return False

    wait_for(answers_from_supervisord, 60, "supervisord's dht to answer again")


def test_wrong_passphrase_at_up_starts_nothing(node_factory) -> None:
    node = node_factory(passphrase=PASSPHRASE, up=False)
    wrong = node.root / "wrong.txt"
    wrong.write_text("not the passphrase\n")
    out = node.p2pm("up", "--passphrase-file", str(wrong), "--timeout", "20")
    assert out.returncode != 0
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "wrong passphrase" in lines[0], out.stderr
    assert not node.supervisor().is_running()
    assert supmod.supervisord_pid(node.home) is None
    assert supmod.actor_pids(node.home) == {}
    assert not node.home.supervisor_sock.exists()

    right = node.root / "right.txt"
    right.write_text(PASSPHRASE + "\n")
    node.p2pm("up", "--passphrase-file", str(right), check=True)
    assert node.call("keystore", "identity")["peer_id"] == node.peer_id


def test_two_nodes_run_side_by_side(node_factory) -> None:
    a, b = node_factory.many(2)
    assert a.peer_id != b.peer_id
    assert set(a.pids().values()).isdisjoint(b.pids().values())
    assert a.call("keystore", "identity")["peer_id"] == a.peer_id
    assert b.call("keystore", "identity")["peer_id"] == b.peer_id
    a.p2pm("down", check=True)
    assert supmod.actor_pids(a.home) == {} and supmod.supervisord_pid(a.home) is None
    assert b.healthy()
    assert b.p2pm("status").returncode == 0
    assert a.p2pm("status").returncode != 0


def _secret_forms(secret: bytes) -> list[bytes]:
    """The ways a secret could show up in text or bytes: raw, hex, and base64 (whole,
    and its first 30 bytes, which stay aligned inside a longer base64 string)."""
    forms = [secret, secret.hex().encode(), secret.hex().upper().encode()]
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        forms += [enc(secret), enc(secret).rstrip(b"="), enc(secret[:30])]
    return forms


def _leaks(blob: bytes, secrets: dict[str, bytes]) -> list[str]:
    return [name for name, secret in secrets.items()
            if any(form in blob for form in _secret_forms(secret))]


def test_no_secret_key_on_the_bus_or_in_logs(node_factory) -> None:
    node = node_factory(passphrase=PASSPHRASE)
    unlock_key = identity.derive_unlock_key(node.home.identity_file, PASSPHRASE)
    seed = bytes(identity.open_identity(node.home.identity_file, unlock_key))
    secrets = {"seed": seed, "unlock key": unlock_key}

    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for actor in ACTORS:
        sub.connect(node.home.endpoints().events(actor))
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    seen: list[bytes] = []
    heartbeats: dict[str, int] = {}
    replies: list[bytes] = []
    try:
        # Every actor's contract, and everything the keystore does with its key.
        calls = [(a, m, None) for a in ACTORS for m in ("sys.ping", "sys.status",
                                                         "sys.methods")]
        calls += [("keystore", "identity", None),
                  ("keystore", "sign", {"domain": "libp2p-pubsub:",
                                        "data": wire.b64e(b"hello")}),
                  ("keystore", "direct_secret", {"peer_id": node.peer_id}),
                  ("keystore", "unlock", {"passphrase": "wrong"}),
                  ("keystore", "unlock", {"passphrase": PASSPHRASE})]
        for actor, method, params in calls:
            try:
                replies.append(wire.dumps(node.call(actor, method, params)))
            except errors.BusError as exc:
                replies.append(wire.dumps(exc.to_wire()))
        for cmd in (("status", "--json"), ("id", "--json")):
            replies.append(node.p2pm(*cmd, check=True).stdout.encode())

        def two_heartbeats_each() -> bool:
            while sub.poll(50):
                frames = sub.recv_multipart()
                seen.extend(frames)
                topic = frames[0].decode()
                if topic.endswith(".sys.heartbeat"):
                    src = topic.split(".")[0]
                    heartbeats[src] = heartbeats.get(src, 0) + 1
            return all(heartbeats.get(a, 0) >= 2 for a in ACTORS)

        wait_for(two_heartbeats_each, 15, "two heartbeats from every actor")
    finally:
        sub.close()

    assert _leaks(b"\n".join(seen), secrets) == []
    assert _leaks(b"\n".join(replies), secrets) == []
    for path in sorted(node.home.root.rglob("*")):
        if path.is_file() and not path.is_socket():
            assert _leaks(path.read_bytes(), secrets) == [], path
    # The unlock key lives in supervisord's environment and reaches the keystore only;
    # the others see it blanked. The passphrase `p2pm up` read from its own
    # environment reaches nobody.
    for actor, pid in {**node.pids(), "supervisord": node.supervisor().pid()}.items():
        env = dict(entry.split(b"=", 1) for entry in
                   Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in entry)
        holders = ("keystore", "supervisord")
        expected = unlock_key.hex().encode() if actor in holders else b""
        assert env.get(b"P2PM_KEYSTORE_KEY") == expected, actor
        assert b"P2PM_PASSPHRASE" not in env, actor
        assert PASSPHRASE.encode() not in b"".join(env.values()), actor


def test_down_stops_actors_orphaned_by_a_dead_supervisord(node: Node) -> None:
    actors = node.pids()
    sup_pid = node.supervisor().pid()
    os.kill(sup_pid, signal.SIGKILL)
    wait_for(lambda: supmod.supervisord_pid(node.home) is None, 10, "supervisord to die")
    assert supmod.actor_pids(node.home) == actors  # the actors outlive it
    refused = node.p2pm("up")
    assert refused.returncode != 0 and "outside supervisord" in refused.stderr
    node.p2pm("down", check=True)
    assert supmod.wait_gone(list(actors.values()), 0) == []
    assert supmod.actor_pids(node.home) == {}
