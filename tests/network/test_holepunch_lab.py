"""Hole punching the way friends do it: both add each other and write at once.

Two nodes behind home routers know only a public relay. Each adds the other (from an
invite, or one of them by bare peer ID) and sends a direct message straight away, as
the README's "Your own node, and friends" says. What a user notices, and what is
asserted: both messages arrive through the relay within seconds, the connection
then turns direct (easy NATs) or stays relayed and keeps delivering (a symmetric NAT),
the two nodes hold one connection to each other, not a pile of circuits, and the
punch runs once, not in a storm.

Each test prints what it measured (`holepunch.timing ...`): seconds from both nodes
being reachable (each advertising its relay address) to both first messages being in
the recipients' histories, and from then to the direct connection on both sides. Run
with `-s` to see them.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier
from typing import Any

from tests.helpers import needs_root, wait_for

from .lab import INET, Lab, LabNode

pytestmark = needs_root

REACHABLE_S = 40.0
DELIVERY_S = 30.0  # generous: the target is under 5 s, and the figure is printed
DIRECT_S = 30.0  # target: under 10 s after the first message


def circuit_addr(node: LabNode) -> str | None:
    addrs = [a for a in node.status()["addrs"] if "/p2p-circuit/" in a]
    return addrs[0] if addrs else None


def dcutr(node: LabNode) -> dict[str, Any]:
    return node.status()["nat"]["dcutr"]


def relay_stats(relay: LabNode) -> dict[str, Any]:
    return relay.status()["nat"]["relay_service"]


def connections_to(a: LabNode, b: LabNode) -> list[dict[str, Any]]:
    entry = a.peer(b.peer_id)
    return entry["connections"] if entry else []


def direct(a: LabNode, b: LabNode) -> dict[str, Any] | None:
    entry = a.peer(b.peer_id)
    return entry if entry and not entry["relayed"] else None


def in_history(node: LabNode, conversation: str, msg_id: str, text: str) -> bool:
    history = node.call("history", {"conversation": conversation, "limit": 50},
                        actor="gateway")
    return any(m["id"] == msg_id and m["body"] == text for m in history)


def state_of(node: LabNode, conversation: str, msg_id: str) -> str | None:
    history = node.call("history", {"conversation": conversation, "limit": 50},
                        actor="gateway")
    return next((m["state"] for m in history if m["id"] == msg_id), None)


def explain(lab: Lab, *roles: str) -> str:
    words = ("dcutr", "relay.", "transport.dial", "duplicate")
    return "\n".join(f"--- {r}:\n{lab.log_lines(r, *words)}" for r in roles)


def both_reachable(h1: LabNode, h2: LabNode) -> float:
    wait_for(lambda: circuit_addr(h1) and circuit_addr(h2), REACHABLE_S,
             "both nodes to advertise a relay address")
    return time.monotonic()


def add_and_send_at_once(h1: LabNode, h2: LabNode, how2: str = "invite"
                         ) -> dict[str, tuple[str, str]]:
    """Each adds the other and sends a DM, both at the same moment (a barrier
    releases the two threads together). h2 adds h1 from an invite, or by its bare
    peer ID when `how2` is "peer_id". Returns {sender: (message id, text)}."""
    invites = {n.name: n.call("invite", {"name": n.name}, actor="gateway")["invite"]
               for n in (h1, h2)}
    start = Barrier(2)

    def act(me: LabNode, other: LabNode, by: str) -> tuple[str, str]:
        text = f"hi {other.name}, from {me.name} \N{WAVING HAND SIGN}"
        start.wait()
        me.call("contact_add", {"name": other.name,
                                "invite": invites[other.name] if by == "invite"
                                else other.peer_id}, actor="gateway", timeout=20)
        sent = me.call("send", {"contact": other.name, "text": text}, actor="gateway",
                       timeout=20)
        return sent["id"], text

    with ThreadPoolExecutor(2) as pool:
        f1 = pool.submit(act, h1, h2, "invite")
        f2 = pool.submit(act, h2, h1, how2)
        return {"h1": f1.result(), "h2": f2.result()}


def wait_delivered(h1: LabNode, h2: LabNode, sent: dict[str, tuple[str, str]],
                   lab: Lab) -> None:
    try:
        wait_for(lambda: in_history(h2, "h1", *sent["h1"]) and
                 in_history(h1, "h2", *sent["h2"]), DELIVERY_S,
                 "both first messages to arrive")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(lab, 'h1', 'h2')}") from None


def report(case: str, first_s: float, direct_s: float | None, relay: LabNode,
           h1: LabNode, h2: LabNode) -> None:
    shown = "stays-relayed" if direct_s is None else f"{direct_s:.2f}"
    crossings = sum(n.status()["nat"]["relay_client"]["crossing_refused"] for n in (h1, h2))
    print(f"\nholepunch.timing case={case} first_message_s={first_s:.2f} "
          f"direct_after_first_s={shown} "
          f"circuits_opened={relay_stats(relay)['circuits_opened']} "
          f"crossings_refused={crossings}")


def assert_one_connection_each(h1: LabNode, h2: LabNode, lab: Lab) -> None:
    """One connection between the two, on both sides (circuits that crossed were
    reconciled, a replaced relayed one was closed)."""
    try:
        wait_for(lambda: len(connections_to(h1, h2)) == 1 and
                 len(connections_to(h2, h1)) == 1, 15, "one connection on each side")
    except AssertionError as exc:
        raise AssertionError(f"{exc}: h1 {connections_to(h1, h2)} h2 "
                             f"{connections_to(h2, h1)}\n{explain(lab, 'h1', 'h2')}") from None


def punched_once(h1: LabNode, h2: LabNode) -> None:
    """Exactly one side ran the punch (as DCUtR's initiator), and it worked."""
    d1, d2 = dcutr(h1), dcutr(h2)
    assert d1["upgraded"] + d2["upgraded"] == 1, (d1, d2)
    assert d1["failed"] + d2["failed"] == 0, (d1, d2)
    # Both may start when each accepted a circuit at once; the rule then makes one
    # step back before dialling ("yielded"): what counts is that one ran it through.
    assert (d1["runs"] - d1["yielded"]) + (d2["runs"] - d2["yielded"]) == 1, (d1, d2)


def run_easy(lab: Lab, how2: str) -> tuple[float, float]:
    relay, h1, h2 = lab.start_standard()
    t0 = both_reachable(h1, h2)
    sent = add_and_send_at_once(h1, h2, how2)
    wait_delivered(h1, h2, sent, lab)
    first = time.monotonic() - t0
    try:
        wait_for(lambda: direct(h1, h2) and direct(h2, h1), DIRECT_S,
                 "a direct connection on both sides")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(lab, 'h1', 'h2')}") from None
    after = time.monotonic() - t0 - first
    report(f"both-add-{how2}", first, after, relay, h1, h2)
    punched_once(h1, h2)
    assert_one_connection_each(h1, h2, lab)
    assert direct(h1, h2)["remote_addr"] == f"/ip4/{INET}.12/tcp/4001"
    assert direct(h2, h1)["remote_addr"] == f"/ip4/{INET}.11/tcp/4001"
    wait_for(lambda: relay_stats(relay)["circuits"] == 0, 15, "the relay circuit to close")
    # The conversation goes on over the hole: the relay carries none of it.
    before = relay_stats(relay)["bytes_relayed"]
    for me, other, name in ((h1, h2, "h2"), (h2, h1, "h1")):
        text = f"second from {me.name}: direct now"
        msg = me.call("send", {"contact": name, "text": text}, actor="gateway")["id"]
        wait_for(lambda: in_history(other, me.name, msg, text), 15,
                 f"{me.name}'s second message")
        wait_for(lambda: state_of(me, name, msg) == "delivered", 15,
                 f"{me.name}'s receipt")
    assert relay_stats(relay)["bytes_relayed"] == before
    return first, after


def test_both_add_from_invites_and_send_at_once(make_lab: Any) -> None:
    run_easy(make_lab(nat1="easy", nat2="easy"), "invite")


def test_one_adds_by_invite_the_other_by_peer_id(make_lab: Any) -> None:
    run_easy(make_lab(nat1="easy", nat2="easy"), "peer_id")


def test_one_sided_add_punches_once(make_lab: Any) -> None:
    """h2 knows h1 (it added h1 earlier) but does not write; h1 adds h2 and writes.
    Only h1's user acts (h2's dht may still dial h1 on its own: either side may end
    up accepting the circuit, and that side punches)."""
    lab: Lab = make_lab(nat1="easy", nat2="easy")
    relay, h1, h2 = lab.start_standard()
    t0 = both_reachable(h1, h2)
    invites = {n.name: n.call("invite", {"name": n.name}, actor="gateway")["invite"]
               for n in (h1, h2)}
    h2.call("contact_add", {"name": "h1", "invite": invites["h1"]}, actor="gateway")
    h1.call("contact_add", {"name": "h2", "invite": invites["h2"]}, actor="gateway")
    text = "hello h2, only I am writing"
    msg = h1.call("send", {"contact": "h2", "text": text}, actor="gateway", timeout=20)["id"]
    try:
        wait_for(lambda: in_history(h2, "h1", msg, text), DELIVERY_S,
                 "h1's message to reach h2")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{explain(lab, 'h1', 'h2')}") from None
    first = time.monotonic() - t0
    wait_for(lambda: direct(h1, h2) and direct(h2, h1), DIRECT_S,
             "a direct connection on both sides")
    report("one-sided", first, time.monotonic() - t0 - first, relay, h1, h2)
    punched_once(h1, h2)
    assert_one_connection_each(h1, h2, lab)
    reply = h2.call("send", {"contact": "h1", "text": "got it"}, actor="gateway")["id"]
    wait_for(lambda: in_history(h1, "h2", reply, "got it"), 15, "h2's reply")
    wait_for(lambda: state_of(h1, "h2", msg) == "delivered", 15, "h1's receipt")


def test_symmetric_nat_stays_relayed_delivers_and_does_not_storm(make_lab: Any) -> None:
    lab: Lab = make_lab(nat1="symmetric", nat2="easy")
    relay, h1, h2 = lab.start_standard()
    t0 = both_reachable(h1, h2)
    sent = add_and_send_at_once(h1, h2)
    wait_delivered(h1, h2, sent, lab)
    first = time.monotonic() - t0
    report("symmetric", first, None, relay, h1, h2)
    # The punch gives up after the spec's three attempts, run by one side only...
    wait_for(lambda: dcutr(h1)["failed"] + dcutr(h2)["failed"] >= 1, 60,
             "the hole punch to give up")
    d1, d2 = dcutr(h1), dcutr(h2)
    # Both may start when each accepted a circuit at once; the rule then makes one
    # step back before dialling ("yielded"): what counts is that one ran it through.
    assert (d1["runs"] - d1["yielded"]) + (d2["runs"] - d2["yielded"]) == 1, (d1, d2)
    assert d1["attempts"] + d2["attempts"] == 3, (d1, d2)
    assert d1["upgraded"] + d2["upgraded"] == 0, (d1, d2)
    # ...and does not start again while the relayed connection lasts.
    assert_one_connection_each(h1, h2, lab)
    assert relay_stats(relay)["circuits"] == 1
    for me, other, name in ((h1, h2, "h2"), (h2, h1, "h1")):
        text = f"still relayed, from {me.name}"
        msg = me.call("send", {"contact": name, "text": text}, actor="gateway")["id"]
        wait_for(lambda: in_history(other, me.name, msg, text), 15,
                 f"{me.name}'s second message")
    d1, d2 = dcutr(h1), dcutr(h2)
    # Both may start when each accepted a circuit at once; the rule then makes one
    # step back before dialling ("yielded"): what counts is that one ran it through.
    assert (d1["runs"] - d1["yielded"]) + (d2["runs"] - d2["yielded"]) == 1, (d1, d2)
    assert h1.peer(h2.peer_id)["relayed"] and h2.peer(h1.peer_id)["relayed"]
