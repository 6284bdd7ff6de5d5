"""The pubsub RPC on the shared codec, cross-checked byte for byte against py-libp2p's
generated classes, and StrictSign signatures checked in both directions."""

from __future__ import annotations

import dataclasses

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.validators import signature_validator

from p2pm.common import identity
from p2pm.services.gossip.router import messages as m
from p2pm.services.gossip.router.signing import ed25519_signer, peer_id_bytes, verify_ed25519

small = st.binary(max_size=40)
topic = st.text(max_size=20)
opt = lambda s: st.none() | s  # noqa: E731

messages = st.builds(m.Message, from_=opt(small), data=opt(small), seqno=opt(small),
                     topic=opt(topic), signature=opt(small), key=opt(small))
peer_infos = st.builds(m.PeerInfo, peer_id=opt(small), signed_peer_record=opt(small))
ids = st.lists(small, max_size=4).map(tuple)
controls = st.builds(
    m.ControlMessage,
    ihave=st.lists(st.builds(m.ControlIHave, topic_id=opt(topic), message_ids=ids),
                   max_size=3).map(tuple),
    iwant=st.lists(st.builds(m.ControlIWant, message_ids=ids), max_size=2).map(tuple),
    graft=st.lists(st.builds(m.ControlGraft, topic_id=opt(topic)), max_size=3).map(tuple),
    prune=st.lists(st.builds(m.ControlPrune, topic_id=opt(topic),
                             peers=st.lists(peer_infos, max_size=3).map(tuple),
                             backoff=opt(st.integers(0, 2**64 - 1))), max_size=2).map(tuple),
    idontwant=st.lists(st.builds(m.ControlIDontWant, message_ids=ids), max_size=2).map(tuple),
)
rpcs = st.builds(
    m.RPC,
    subscriptions=st.lists(st.builds(m.SubOpts, subscribe=opt(st.booleans()),
                                     topicid=opt(topic)), max_size=3).map(tuple),
    publish=st.lists(messages, max_size=3).map(tuple),
    control=opt(controls),
)


def to_libp2p(rpc: m.RPC) -> rpc_pb2.RPC:
    """The same RPC built with py-libp2p's generated classes."""
    out = rpc_pb2.RPC()

    def put(target, **fields):  # type: ignore[no-untyped-def]
        for name, value in fields.items():
            if value is not None:
                setattr(target, name, value)

    for sub in rpc.subscriptions:
        put(out.subscriptions.add(), subscribe=sub.subscribe, topicid=sub.topicid)
    for msg in rpc.publish:
        pm = out.publish.add()
        put(pm, from_id=msg.from_, data=msg.data, seqno=msg.seqno,
            signature=msg.signature, key=msg.key)
        if msg.topic is not None:
            pm.topicIDs.append(msg.topic)
    if rpc.control is not None:
        c = out.control
        c.SetInParent()
        for ih in rpc.control.ihave:
            x = c.ihave.add()
            put(x, topicID=ih.topic_id)
            x.messageIDs.extend(ih.message_ids)
        for iw in rpc.control.iwant:
            c.iwant.add().messageIDs.extend(iw.message_ids)
        for g in rpc.control.graft:
            put(c.graft.add(), topicID=g.topic_id)
        for pr in rpc.control.prune:
            x = c.prune.add()
            put(x, topicID=pr.topic_id, backoff=pr.backoff)
            for pi in pr.peers:
                put(x.peers.add(), peerID=pi.peer_id, signedPeerRecord=pi.signed_peer_record)
        for idw in rpc.control.idontwant:
            c.idontwant.add().messageIDs.extend(idw.message_ids)
    return out


@settings(max_examples=120, deadline=None)
@given(rpcs)
def test_rpc_encoding_is_byte_identical_to_py_libp2p(rpc: m.RPC) -> None:
    ours = m.encode(rpc)
    theirs = to_libp2p(rpc).SerializeToString()
    assert ours == theirs
    assert m.decode_rpc(theirs, 1 << 20) == rpc


def test_frame_built_from_parts_equals_whole_encoding() -> None:
    msgs = (m.Message(from_=b"a", data=b"x", seqno=b"1", topic="t"),
            m.Message(from_=b"b", data=b"", seqno=b"2", topic="u"))
    control = m.ControlMessage(graft=(m.ControlGraft(topic_id="t"),))
    subs = (m.SubOpts(subscribe=True, topicid="t"),)
    frame = m.rpc_frame(subs, [m.publish_field(m.encode(x)) for x in msgs], control)
    assert frame == m.encode(m.RPC(subscriptions=subs, publish=msgs, control=control))


def test_malformed_and_oversized_frames_raise_decode_error_only() -> None:
    good = m.encode(m.RPC(publish=(m.Message(data=b"x" * 100, topic="t"),)))
    for bad in (good[:-1], b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff", b"\x0a\x02\x08\x05",
                b"\x1a\x03\x0a\x01\xff"):
        with pytest.raises(m.DecodeError):
            m.decode_rpc(bad, 1 << 20)
    with pytest.raises(m.DecodeError):
        m.decode_rpc(good, max_size=50)


def test_unknown_control_fields_are_detected() -> None:
    known = m.RPC(control=m.ControlMessage(graft=(m.ControlGraft(topic_id="t"),)))
    data = m.encode(known)
    assert not m.control_has_unknown_fields(data, m.decode_rpc(data, 1 << 20))
    # ControlMessage field 9 (not in any gossipsub version we speak), a varint.
    extra = m.encode(m.ControlMessage(graft=(m.ControlGraft(topic_id="t"),))) + b"\x48\x01"
    data = b"\x1a" + bytes([len(extra)]) + extra
    rpc = m.decode_rpc(data, 1 << 20)
    assert rpc == known
    assert m.control_has_unknown_fields(data, rpc)


def test_our_signature_verifies_in_py_libp2p_and_theirs_in_ours() -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    author = peer_id_bytes(bytes(key.verify_key))
    msg = m.Message(from_=author, data=b"hello", seqno=(7).to_bytes(8, "big"), topic="room")
    signed = dataclasses.replace(msg, signature=ed25519_signer(key)(m.signing_data(msg)))
    theirs = to_libp2p(m.RPC(publish=(signed,))).publish[0]
    assert signature_validator(theirs)
    tampered = to_libp2p(m.RPC(publish=(dataclasses.replace(signed, data=b"hellO"),)))
    assert not signature_validator(tampered.publish[0])

    pair = create_new_key_pair(bytes(range(1, 33)))
    their_id = ID.from_pubkey(pair.public_key).to_bytes()
    pm = rpc_pb2.Message(from_id=their_id, data=b"hi", seqno=b"\0" * 8, topicIDs=["room"])
    signature = pair.private_key.sign(b"libp2p-pubsub:" + pm.SerializeToString())
    decoded = m.decode_rpc(rpc_pb2.RPC(publish=[pm]).SerializeToString(), 1 << 20).publish[0]
    assert verify_ed25519(their_id, None, m.signing_data(decoded), signature)
    assert not verify_ed25519(their_id, None, m.signing_data(decoded), bytes(64))
    assert not verify_ed25519(author, None, m.signing_data(decoded), signature)
    # The optional key field must be the key the peer id inlines.
    key_proto = identity.public_key_proto(bytes(pair.public_key.to_bytes()))
    assert verify_ed25519(their_id, key_proto, m.signing_data(decoded), signature)
    other = identity.public_key_proto(bytes(key.verify_key))
    assert not verify_ed25519(their_id, other, m.signing_data(decoded), signature)


@settings(max_examples=100, deadline=None)
@given(messages)
def test_signed_prefix_of_the_encoding_is_the_signing_data(msg: m.Message) -> None:
    assert m.signed_prefix(m.encode(msg), msg) == m.signing_data(msg)
