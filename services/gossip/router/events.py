"""What goes into and comes out of the router (`core.Router`): the verdicts of the
application's validator, the events a router input produces, and the frames and
publish results it returns. Plain frozen data; see core.py for when each occurs."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Union

from .messages import Message, PeerInfo

# verify(author, key, signing_data, signature) -> bool; the signed bytes are
# "libp2p-pubsub:" + signing_data.
Verifier = Callable[[bytes, "bytes | None", bytes, bytes], bool]
Signer = Callable[[bytes], bytes]


class Validation(enum.Enum):
    ACCEPT = "accept"
    REJECT = "reject"  # invalid: not delivered, not forwarded, P4 for the sender
    IGNORE = "ignore"  # not delivered, not forwarded, no penalty
    # Decided later with `Router.report_validation` (a validator that must ask
    # another actor); the message waits, bounded by `max_pending_validations`.
    PENDING = "pending"


Validator = Callable[[Message], Validation]


def default_message_id(msg: Message) -> bytes:
    """from + seqno, the spec's default (origin-stamped messaging)."""
    return (msg.from_ or b"") + (msg.seqno or b"")


# -- outputs ---------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageReceived:
    msg_id: bytes
    topic: str
    message: Message
    source: bytes  # the peer that forwarded it (not necessarily the author)


@dataclass(frozen=True)
class Grafted:
    peer: bytes
    topic: str


@dataclass(frozen=True)
class Pruned:
    peer: bytes
    topic: str


@dataclass(frozen=True)
class PeerExchange:
    """A peer pruned us and suggested these peers for the topic; the shell may
    connect to them (their addresses come from the DHT or the signed record)."""

    topic: str
    source: bytes
    peers: tuple[PeerInfo, ...]


Event = Union[MessageReceived, Grafted, Pruned, PeerExchange]


@dataclass(frozen=True)
class SendRpc:
    peer: bytes
    frame: bytes  # one RPC, without the uvarint length prefix


@dataclass(frozen=True)
class Published:
    msg_id: bytes
    peers: tuple[bytes, ...]  # queued for these peers; empty: nobody to send to yet
    duplicate: bool = False  # this message was published already; nothing was done


@dataclass(frozen=True)
class Backpressure:
    """The publish was refused and nothing changed: these peers' own-message queues
    are full. Keep the message (the outbox does) and publish again after a flush."""

    msg_id: bytes
    full_peers: tuple[bytes, ...]
