"""Kademlia messages: byte-for-byte agreement with py-libp2p's generated protobuf classes,
and refusal of hostile encodings."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.common.protobuf import DecodeError
from p2pm.services.dht.messages import (MAX_MESSAGE_BYTES, Message, MessageType, Peer,
                                        Record, decode_message, encode_message)

kpb = pytest.importorskip("libp2p.kad_dht.pb.kademlia_pb2")


def _reference(msg: Message) -> bytes:
    ref = kpb.Message(type=msg.type, key=msg.key, clusterLevelRaw=msg.cluster_level_raw)
    if msg.record is not None:
        ref.record.CopyFrom(kpb.Record(key=msg.record.key, value=msg.record.value,
                                       timeReceived=msg.record.time_received))
    for mine, theirs in ((msg.closer_peers, ref.closerPeers),
                         (msg.provider_peers, ref.providerPeers)):
        for p in mine:
            theirs.add(id=p.id, addrs=list(p.addrs), connection=p.connection)
    return ref.SerializeToString(deterministic=True)


peer_st = st.builds(Peer, id=st.binary(min_size=1, max_size=40),
                    addrs=st.lists(st.binary(max_size=30), max_size=3).map(tuple),
                    connection=st.integers(0, 3))
message_st = st.builds(
    Message, type=st.sampled_from(list(MessageType)).map(int), key=st.binary(max_size=50),
    record=st.none() | st.builds(Record, key=st.binary(max_size=20),
                                 value=st.binary(max_size=60), time_received=st.text(max_size=30)),
    closer_peers=st.lists(peer_st, max_size=4).map(tuple),
    provider_peers=st.lists(peer_st, max_size=3).map(tuple),
    cluster_level_raw=st.integers(-(2**31), 2**31 - 1))


@settings(max_examples=200, deadline=None)
@given(message_st)
def test_encoding_matches_py_libp2p_byte_for_byte(msg: Message) -> None:
    ours = encode_message(msg)
    assert ours == _reference(msg)
    assert decode_message(ours) == msg
    parsed = kpb.Message()
    parsed.ParseFromString(ours)
    assert parsed.key == msg.key and len(parsed.closerPeers) == len(msg.closer_peers)


def test_fields_py_libp2p_adds_are_skipped() -> None:
    ref = kpb.Message(type=kpb.Message.FIND_NODE, key=b"k", senderRecord=b"envelope")
    ref.closerPeers.add(id=b"p", addrs=[b"a"], signedRecord=b"sig")
    ref.record.CopyFrom(kpb.Record(key=b"k", value=b"v", author=b"x", signature=b"y"))
    msg = decode_message(ref.SerializeToString())
    assert msg == Message(type=MessageType.FIND_NODE, key=b"k", record=Record(b"k", b"v"),
                          closer_peers=(Peer(b"p", (b"a",)),))


@pytest.mark.parametrize("msg,why", [
    (Message(type=9), "unknown message type 9"),
    (Message(type=4, key=b"k" * 2000), "key of 2000 bytes"),
    (Message(type=4, closer_peers=(Peer(b""),)), "peer id of 0 bytes"),
    (Message(type=4, closer_peers=tuple(Peer(bytes([i])) for i in range(65))), "65 closer_peers"),
    (Message(type=4, provider_peers=(Peer(b"p", (b"a" * 600,)),)), "address longer"),
])
def test_structurally_hostile_messages_are_refused(msg: Message, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        decode_message(encode_message(msg))


def test_oversized_message_is_refused() -> None:
    big = encode_message(Message(type=0, record=Record(b"k", b"v" * MAX_MESSAGE_BYTES)))
    with pytest.raises(DecodeError, match="exceeds the limit"):
        decode_message(big)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_only_raise_decode_error(data: bytes) -> None:
    try:
        decode_message(data)
    except DecodeError:
        pass
