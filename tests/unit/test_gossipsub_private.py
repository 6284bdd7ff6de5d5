"""Private topics of the router (conversations): a peer that was not admitted learns
nothing about the topic and gets nothing of it, whatever it sends; an admitted peer
takes part as in any topic; a revoked one is a stranger again. Driven directly, no
sockets."""

from __future__ import annotations

from p2pm.services.gossip.router import PROTOCOL_V11, PROTOCOL_V12, MessageReceived, Published
from p2pm.services.gossip.router import messages as m

from .test_gossipsub_router import A, B, C, T, frame, make_router, published, sent, signed

PUBLIC = "public-topic"


def subscriptions(rpcs: list[m.RPC]) -> dict[str, bool]:
    return {s.topicid: s.subscribe for rpc in rpcs for s in rpc.subscriptions}


def private_room(*admitted: bytes):  # type: ignore[no-untyped-def]
    router = make_router()
    router.make_private(T)
    for peer in admitted:
        router.admit(T, peer, 0.0)
    router.subscribe(T, 0.0)
    router.subscribe(PUBLIC, 0.0)
    return router


def test_a_stranger_is_not_told_about_the_private_topic_but_a_member_is() -> None:
    router = private_room(A)
    for peer in (A, B):
        router.add_peer(peer, PROTOCOL_V11, outbound=True, now=0.0)
    out = sent(router)
    assert subscriptions(out[A]) == {T: True, PUBLIC: True}
    assert subscriptions(out[B]) == {PUBLIC: True}


def test_a_stranger_subscribed_to_the_topic_gets_no_message_mesh_or_gossip() -> None:
    router = private_room(A)
    for peer in (A, B):
        router.add_peer(peer, PROTOCOL_V11, outbound=True, now=0.0)
        router.handle_rpc(peer, frame(subs=(T,)), 0.0)
    router.flush()
    assert router.topic_peers(T) == {A}
    assert router.claimants(T) == {B}
    result = router.publish(T, b"secret", 1.0)
    assert isinstance(result, Published) and result.peers == (A,)
    for now in (2.0, 3.0, 4.0):
        router.heartbeat(now)
    out = sent(router)
    assert published(out[A])
    rpcs_b = out.get(B, [])
    assert not published(rpcs_b)
    assert all(rpc.control is None or not (rpc.control.ihave or rpc.control.graft)
               for rpc in rpcs_b)
    assert B not in router.mesh(T)


def test_a_strangers_messages_iwant_graft_and_ihave_are_dropped_without_a_reply() -> None:
    router = private_room(A)
    for peer in (A, B):
        router.add_peer(peer, PROTOCOL_V12, outbound=True, now=0.0)
        router.handle_rpc(peer, frame(subs=(T,)), 0.0)
    result = router.publish(T, b"secret", 1.0)
    assert isinstance(result, Published)
    mid = result.msg_id
    router.flush()
    events = router.handle_rpc(B, frame(signed(2, b"from a stranger", 1)), 1.0)
    assert events == []
    router.handle_rpc(B, frame(control=m.ControlMessage(
        iwant=(m.ControlIWant(message_ids=(mid,)),),
        graft=(m.ControlGraft(topic_id=T),),
        ihave=(m.ControlIHave(topic_id=T, message_ids=(b"x" * 20,)),))), 1.0)
    assert B not in sent(router)  # not even a PRUNE: that would confirm the topic
    assert B not in router.mesh(T)
    counters = router.statistics()["counters"]
    for name in ("msg_not_admitted", "iwant_not_admitted", "graft_not_admitted",
                 "ihave_not_admitted", "subscription_not_admitted"):
        assert counters[name] == 1, name
    # A member asking the same is answered.
    router.handle_rpc(A, frame(control=m.ControlMessage(
        iwant=(m.ControlIWant(message_ids=(mid,)),))), 1.0)
    assert published(sent(router)[A])


def test_admitting_a_claimant_lets_it_in_and_revoking_shuts_it_out() -> None:
    router = private_room()
    router.add_peer(C, PROTOCOL_V11, outbound=True, now=0.0)
    router.handle_rpc(C, frame(subs=(T,)), 0.0)
    router.flush()
    assert router.topic_peers(T) == set()
    router.admit(T, C, 1.0)
    assert subscriptions(sent(router)[C]) == {T: True}
    assert router.topic_peers(T) == {C}
    events = router.handle_rpc(C, frame(signed(3, b"hello", 1)), 1.0)
    assert [type(e) for e in events] == [MessageReceived]
    router.heartbeat(2.0)
    assert C in router.mesh(T)
    router.flush()
    router.revoke(T, C, 3.0)
    assert C not in router.mesh(T) and router.topic_peers(T) == set()
    assert subscriptions(sent(router)[C]) == {T: False}
    assert router.handle_rpc(C, frame(signed(3, b"after removal", 2)), 3.0) == []
    result = router.publish(T, b"after removal", 4.0)
    assert isinstance(result, Published) and result.peers == ()


def test_making_a_topic_private_drops_strangers_already_counted() -> None:
    router = make_router()
    router.subscribe(T, 0.0)
    router.add_peer(A, PROTOCOL_V11, outbound=True, now=0.0)
    router.handle_rpc(A, frame(subs=(T,)), 0.0)
    router.heartbeat(1.0)
    assert A in router.mesh(T)
    router.make_private(T)
    assert router.topic_peers(T) == set() and A not in router.mesh(T)
    assert router.claimants(T) == {A}
