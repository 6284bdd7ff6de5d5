"""The Kademlia wire messages (`/ipfs/kad/1.0.0`, libp2p kad-dht spec `dht.proto`).

Field numbers and kinds follow the spec byte for byte; fields that py-libp2p or others
add (author, signature, senderRecord, signedRecord) are not declared, so they are
skipped on decode as unknown fields. `decode_message` is the boundary: everything that
comes off a stream goes through it and either becomes a `Message` or a DecodeError.
"""

from __future__ import annotations

import dataclasses
import enum

from p2pm.common import protobuf as pb
from p2pm.common.protobuf import DecodeError, field, message

# Larger than the largest legitimate reply (20 closer + 20 provider peers with their
# addresses, plus a 10 KiB record) and small enough that a peer cannot make us buffer much.
MAX_MESSAGE_BYTES = 64 * 1024
MAX_PEERS_PER_MESSAGE = 64
MAX_ADDRS_PER_PEER = 32
MAX_ADDR_BYTES = 512
MAX_PEER_ID_BYTES = 128
MAX_KEY_BYTES = 1024


class MessageType(enum.IntEnum):
    PUT_VALUE = 0
    GET_VALUE = 1
    ADD_PROVIDER = 2
    GET_PROVIDERS = 3
    FIND_NODE = 4
    PING = 5


class ConnectionType(enum.IntEnum):
    NOT_CONNECTED = 0
    CONNECTED = 1
    CAN_CONNECT = 2
    CANNOT_CONNECT = 3


@message
@dataclasses.dataclass(frozen=True, slots=True)
class Record:
    key: bytes = field(1, "bytes")
    value: bytes = field(2, "bytes")
    time_received: str = field(5, "string")


@message
@dataclasses.dataclass(frozen=True, slots=True)
class Peer:
    id: bytes = field(1, "bytes")
    addrs: tuple[bytes, ...] = field(2, "bytes", repeated=True)
    connection: int = field(3, "enum")


@message
@dataclasses.dataclass(frozen=True, slots=True)
class Message:
    type: int = field(1, "enum")
    key: bytes = field(2, "bytes")
    record: Record | None = field(3, Record)
    closer_peers: tuple[Peer, ...] = field(8, Peer, repeated=True)
    provider_peers: tuple[Peer, ...] = field(9, Peer, repeated=True)
    cluster_level_raw: int = field(10, "int32")


def encode_message(msg: Message) -> bytes:
    return pb.encode(msg)


def _check_peer(peer: Peer, where: str) -> None:
    if not peer.id or len(peer.id) > MAX_PEER_ID_BYTES:
        raise DecodeError(f"{where}: peer id of {len(peer.id)} bytes")
    if len(peer.addrs) > MAX_ADDRS_PER_PEER:
        raise DecodeError(f"{where}: {len(peer.addrs)} addresses for one peer")
    if any(len(a) > MAX_ADDR_BYTES for a in peer.addrs):
        raise DecodeError(f"{where}: an address longer than {MAX_ADDR_BYTES} bytes")


def decode_message(data: bytes) -> Message:
    """Parse and bound-check one Kademlia message; DecodeError says what is wrong.

    Only structure is checked here (sizes, counts, a known type); whether the fields a
    type needs are present is the core's business, as it depends on request or reply.
    """
    msg = pb.decode(Message, data, max_size=MAX_MESSAGE_BYTES)
    if msg.type not in MessageType._value2member_map_:
        raise DecodeError(f"unknown message type {msg.type}")
    if len(msg.key) > MAX_KEY_BYTES:
        raise DecodeError(f"key of {len(msg.key)} bytes")
    for name in ("closer_peers", "provider_peers"):
        peers = getattr(msg, name)
        if len(peers) > MAX_PEERS_PER_MESSAGE:
            raise DecodeError(f"{len(peers)} {name}, at most {MAX_PEERS_PER_MESSAGE}")
        for peer in peers:
            _check_peer(peer, name)
    return msg
