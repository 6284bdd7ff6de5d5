"""Chaos: three real nodes in a room, two of them also in a direct chat, writing
steadily while every actor of every node is killed with SIGKILL in turn, and then one
whole node (supervisord and all its actors) dies at once and is brought back with
`p2pm up`.

Afterwards, what a user would check: every message written is in every member's
history exactly once, each author's messages in order and without holes; no message
was shown to a user twice; each database passes SQLite's integrity check; and every
message's outbox completed (delivered to every member).
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import ExitStack
from typing import Any

from p2pm.common import supervisor as supmod
from p2pm.common.home import ACTORS
from tests.helpers import Node, run_p2pm, wait_for

from .chatnet import (
    LOOPBACK, EventLog, Traffic, Writer, check_history, diagnose, integrity, open_direct,
    open_room, undelivered, wait_connected,
)

RECOVER_S = 60.0
CONVERGE_S = 90.0


def kill_actor(node: Node, actor: str) -> None:
    old = node.pids()[actor]
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: node.pids().get(actor) not in (0, old), RECOVER_S,
             f"supervisord restarting {actor}", interval=0.1)
    node.wait_healthy(RECOVER_S)


def children(parent: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                # pid (comm) state ppid ...: comm may hold spaces, so split after ")".
                if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                    found.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return found


def crash_node(node: Node) -> None:
    """Power loss, as far as processes go: supervisord and every actor at once.
    supervisord is frozen first, so it cannot start a replacement for an actor killed
    here (which would outlive it)."""
    sup = node.supervisor().pid()
    pids = [p for p in node.pids().values() if p]
    os.kill(sup, signal.SIGSTOP)
    pids += children(sup)
    for pid in [*set(pids), sup]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert not supmod.wait_gone([*pids, sup], 10)
    assert not supmod.actor_pids(node.home)


def wait_progress(writer: Writer, more: int) -> None:
    target = writer.count + more
    wait_for(lambda: writer.count >= target, RECOVER_S, f"{writer.label} writing again")


def test_messages_survive_killing_every_actor_and_a_whole_node(node_factory: Any) -> None:
    nodes = node_factory.many(3, listen=LOOPBACK)
    a, b, c = nodes
    room = open_room(nodes, "chaos")
    direct = open_direct(a, b)
    wait_connected(nodes, room)
    wait_connected([a, b], direct)
    members = {room: nodes, direct: [a, b]}
    writers = [Writer(a, [room, direct], "a"), Writer(b, [direct, room], "b"),
               Writer(c, [room], "c")]

    with ExitStack() as stack:
        logs = [stack.enter_context(EventLog(n.home)) for n in nodes]
        traffic = stack.enter_context(Traffic(writers, interval_s=0.3))
        for node in nodes:
            for actor in ACTORS:
                kill_actor(node, actor)
        crash_node(c)
        run_p2pm(c.home, "--json", "up", "--timeout", "60", check=True, timeout=120)
        c.wait_healthy(RECOVER_S)
        wait_progress(writers[2], 5)
        # Enough acknowledged room posts from everyone for the checks below to mean
        # something, however slowly this machine let them through.
        wait_for(lambda: all(len(w.acked.get(room, [])) >= 10 for w in writers), RECOVER_S,
                 "ten acknowledged room posts from every writer")
        traffic.stop()
        written = {conv: [t for w in writers for t in w.written(conv)] for conv in members}

        def converged() -> bool:
            return not any(check_history(n, conv, written[conv])
                           for conv, ns in members.items() for n in ns)

        started = time.monotonic()
        try:
            wait_for(converged, CONVERGE_S, "every member holding every message",
                     interval=1.0)
        finally:
            names = {n.peer_id: label for n, label in zip(nodes, "abc")}
            print(f"converged after {time.monotonic() - started:.1f}s; "
                  f"written {sum(map(len, written.values()))}; missing:",
                  *diagnose(members, written, names)[:20], sep="\n  ")

    for node, log in zip(nodes, logs):
        assert not log.shown_twice(), f"{node.peer_id[-6:]} showed {log.shown_twice()} twice"
        assert integrity(node) == "ok"
    def owed() -> list[str]:
        return [f"{n.peer_id[-6:]}: {u}" for conv, ns in members.items() for n in ns
                for u in undelivered(n, conv)]

    try:
        wait_for(lambda: not owed(), CONVERGE_S, "every outbox entry completing",
                 interval=1.0)
    finally:
        print("undelivered:", *owed()[:10], sep="\n  ")
