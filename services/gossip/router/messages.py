"""The pubsub RPC of libp2p (pubsub/README.md, gossipsub v1.0/v1.1/v1.2) as typed
messages on the shared protobuf codec.

Field numbers and kinds follow the spec's rpc.proto (proto2): presence matters, so
scalars are declared `optional` and a present-but-empty value survives a round trip,
byte for byte as go-libp2p and py-libp2p marshal it. `Message.topic` is field 4,
which old implementations declare `repeated string topicIDs`; one topic is the same
bytes either way. Unknown fields are skipped by the codec (newer protocol versions
add control fields); the router counts them, see `control_has_unknown_fields`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from p2pm.common import protobuf as pb
from p2pm.common.protobuf import DecodeError, field

__all__ = ["RPC", "SubOpts", "Message", "ControlMessage", "ControlIHave", "ControlIWant",
           "ControlGraft", "ControlPrune", "ControlIDontWant", "PeerInfo", "DecodeError",
           "encode", "decode_rpc", "signing_data", "signed_prefix", "control_has_unknown_fields",
           "publish_field", "SIGNING_DOMAIN"]

SIGNING_DOMAIN = "libp2p-pubsub:"


@pb.message
@dataclass(frozen=True, slots=True)
class SubOpts:
    subscribe: bool | None = field(1, "bool", optional=True)
    topicid: str | None = field(2, "string", optional=True)


@pb.message
@dataclass(frozen=True, slots=True)
class Message:
    from_: bytes | None = field(1, "bytes", optional=True)
    data: bytes | None = field(2, "bytes", optional=True)
    seqno: bytes | None = field(3, "bytes", optional=True)
    topic: str | None = field(4, "string", optional=True)
    signature: bytes | None = field(5, "bytes", optional=True)
    key: bytes | None = field(6, "bytes", optional=True)


@pb.message
@dataclass(frozen=True, slots=True)
class ControlIHave:
    topic_id: str | None = field(1, "string", optional=True)
    message_ids: tuple[bytes, ...] = field(2, "bytes", repeated=True)


@pb.message
@dataclass(frozen=True, slots=True)
class ControlIWant:
    message_ids: tuple[bytes, ...] = field(1, "bytes", repeated=True)


@pb.message
@dataclass(frozen=True, slots=True)
class ControlGraft:
    topic_id: str | None = field(1, "string", optional=True)


@pb.message
@dataclass(frozen=True, slots=True)
class PeerInfo:
    peer_id: bytes | None = field(1, "bytes", optional=True)
    signed_peer_record: bytes | None = field(2, "bytes", optional=True)


@pb.message
@dataclass(frozen=True, slots=True)
class ControlPrune:
    topic_id: str | None = field(1, "string", optional=True)
    peers: tuple[PeerInfo, ...] = field(2, PeerInfo, repeated=True)  # v1.1 PX
    backoff: int | None = field(3, "uint64", optional=True)  # v1.1, seconds


@pb.message
@dataclass(frozen=True, slots=True)
class ControlIDontWant:
    message_ids: tuple[bytes, ...] = field(1, "bytes", repeated=True)


@pb.message
@dataclass(frozen=True, slots=True)
class ControlMessage:
    ihave: tuple[ControlIHave, ...] = field(1, ControlIHave, repeated=True)
    iwant: tuple[ControlIWant, ...] = field(2, ControlIWant, repeated=True)
    graft: tuple[ControlGraft, ...] = field(3, ControlGraft, repeated=True)
    prune: tuple[ControlPrune, ...] = field(4, ControlPrune, repeated=True)
    idontwant: tuple[ControlIDontWant, ...] = field(5, ControlIDontWant, repeated=True)

    def is_empty(self) -> bool:
        return not (self.ihave or self.iwant or self.graft or self.prune or self.idontwant)


@pb.message
@dataclass(frozen=True, slots=True)
class RPC:
    subscriptions: tuple[SubOpts, ...] = field(1, SubOpts, repeated=True)
    publish: tuple[Message, ...] = field(2, Message, repeated=True)
    control: ControlMessage | None = field(3, ControlMessage)


@pb.message
@dataclass(frozen=True, slots=True)
class _RawControl:
    """RPC seen only for its control bytes, to tell whether they held fields we skip."""

    control: bytes | None = field(3, "bytes", optional=True)


encode = pb.encode


def decode_rpc(data: bytes, max_size: int) -> RPC:
    """Decode one RPC frame; DecodeError (and nothing else) on bad or oversized input."""
    return pb.decode(RPC, data, max_size=max_size)


def control_has_unknown_fields(data: bytes, rpc: RPC) -> bool:
    """Whether the control part of `data` carried fields the decoded `rpc` dropped.

    The codec skips unknown fields silently; a canonical re-encoding of what was kept
    is shorter than the original exactly when something was skipped (or a field was
    sent twice, which canonical encoders never do either)."""
    if rpc.control is None:
        return False
    raw = pb.decode(_RawControl, data).control or b""
    return len(pb.encode(rpc.control)) != len(raw)


def signing_data(msg: Message) -> bytes:
    """What the author signs (after the `libp2p-pubsub:` domain prefix): the message
    marshalled without `signature` and `key`, as go-libp2p computes it."""
    return pb.encode(dataclasses.replace(msg, signature=None, key=None))


def signed_prefix(encoded: bytes, msg: Message) -> bytes:
    """`signing_data(msg)` cut from `encode(msg)`: signature (5) and key (6) are the
    last fields of a canonical encoding, so what is signed is everything before them."""
    tail = 0
    for value in (msg.signature, msg.key):
        if value is not None:
            tail += 1 + len(pb.encode_uvarint(len(value))) + len(value)
    return encoded[:len(encoded) - tail]


_PUBLISH_TAG = pb.encode_uvarint((2 << 3) | pb.LEN)


def publish_field(encoded_message: bytes) -> bytes:
    """One `RPC.publish` entry around an already marshalled Message: a message is
    encoded once and spliced into the frame of every peer it goes to."""
    return _PUBLISH_TAG + pb.encode_uvarint(len(encoded_message)) + encoded_message


def rpc_frame(subscriptions: tuple[SubOpts, ...], publish_fields: list[bytes],
              control: ControlMessage | None) -> bytes:
    """An RPC frame from parts, fields in number order (identical to `encode(RPC(...))`
    for the same content)."""
    out = bytearray()
    if subscriptions:
        out += pb.encode(RPC(subscriptions=subscriptions))
    for part in publish_fields:
        out += part
    if control is not None and not control.is_empty():
        out += pb.encode(RPC(control=control))
    return bytes(out)
