"""The stream API's wire: frames between the transport and an owner actor, and the
uvarint message codec. Sans-IO: nothing here touches a socket.

Theory of operation
-------------------
An owner actor (dht, gossip, ...) connects a DEALER to the transport's stream ROUTER
(`<run>/transport.streams`), separate from the RPC socket so bulk data never queues
behind requests. Every frame is a ZMQ multipart message `[kind, sid, body]`:

  owner -> transport                         transport -> owner
  REGISTER  -   {owner, instance, protocols}  WELCOME  -   {epoch, refused}
  OPEN      sid {peer, protocol, addrs, ...}  OPENED   sid {peer, protocol, addr}
                                              INBOUND  sid {peer, protocol, addr, ...}
  DATA      sid bytes (or one message)        DATA     sid bytes (or one message)
  CREDIT    sid uvarint byte count            CREDIT   sid uvarint byte count
  EOF       sid -   (we are done writing)     EOF      sid -   (the remote is done)
  RESET     sid reason                        RESET    sid reason

Stream ids are chosen by whoever opens: odd by the owner, even by the transport.

Flow control is credit-based, per stream and per direction, counted in bytes: a side
may send DATA while its credit is positive (a message may overshoot by itself, at most
`max_message`), and the receiver grants credit back as its user consumes. The transport
reads from the libp2p stream only while the owner has granted credit, so a slow owner
stops the reads, Yamux's window fills, and the remote peer's writes block: memory stays
bounded end to end.

REGISTER doubles as the owner's heartbeat (every `HEARTBEAT_S`), and WELCOME as the
transport's: each carries an identity (`instance` / `epoch`) that changes on restart.
The transport resets the streams of an owner it has not heard from for `OWNER_TIMEOUT_S`
or that registers with a new instance; an owner that sees a new epoch knows its
streams are gone and that its registration was just renewed.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson

from p2pm.common import protobuf as pb

REGISTER = b"R"
OPEN = b"O"
WELCOME = b"W"
OPENED = b"K"
INBOUND = b"I"
DATA = b"D"
CREDIT = b"C"
EOF = b"E"
RESET = b"X"

KINDS = {REGISTER, OPEN, WELCOME, OPENED, INBOUND, DATA, CREDIT, EOF, RESET}

HEARTBEAT_S = 0.5
OWNER_TIMEOUT_S = 2.5
DEFAULT_WINDOW = 256 * 1024
MAX_WINDOW = 16 * 1024 * 1024
DEFAULT_MAX_MESSAGE = 1024 * 1024
MAX_MESSAGE_LIMIT = 8 * 1024 * 1024
CHUNK = 64 * 1024  # raw bytes per DATA frame
MAX_UVARINT_BYTES = 9


class FrameError(ValueError):
    """A frame that does not follow this protocol (the sender broke it)."""


class MessageTooLarge(ValueError):
    """A length-delimited message announced more than the stream's maximum."""


# -- frames --------------------------------------------------------------------------


def encode_sid(sid: int) -> bytes:
    return sid.to_bytes(8, "big")


def frame(kind: bytes, sid: int = 0, body: bytes | Any = b"") -> list[bytes]:
    if not isinstance(body, (bytes, bytearray, memoryview)):
        body = orjson.dumps(body)
    return [kind, encode_sid(sid), bytes(body)]


@dataclasses.dataclass(frozen=True, slots=True)
class Frame:
    kind: bytes
    sid: int
    body: bytes

    def json(self) -> dict[str, Any]:
        try:
            obj = orjson.loads(self.body)
        except orjson.JSONDecodeError:
            raise FrameError(f"{self.kind!r} frame body is not JSON") from None
        if not isinstance(obj, dict):
            raise FrameError(f"{self.kind!r} frame body must be a JSON object")
        return obj

    def credit(self) -> int:
        value, used = decode_uvarint(self.body)
        if used != len(self.body) or value <= 0 or value > MAX_WINDOW + MAX_MESSAGE_LIMIT:
            raise FrameError("CREDIT body must be one positive uvarint")
        return value


def parse(frames: list[bytes]) -> Frame:
    if len(frames) != 3:
        raise FrameError(f"a stream frame has 3 parts, got {len(frames)}")
    kind, sid, body = frames
    if kind not in KINDS:
        raise FrameError(f"unknown frame kind {kind[:8]!r}")
    if len(sid) != 8:
        raise FrameError("stream id must be 8 bytes")
    return Frame(kind, int.from_bytes(sid, "big"), body)


# -- uvarint messages ----------------------------------------------------------------


# The one uvarint codec is common/protobuf's (minimal encodings only, as the
# multiformats spec asks); here is its streaming form, for bytes that arrive in parts.
encode_uvarint = pb.encode_uvarint


def decode_uvarint(data: bytes | bytearray | memoryview, start: int = 0) -> tuple[int, int]:
    """(value, bytes used); (0, 0) if `data` holds only a prefix of a uvarint;
    FrameError if it is longer than MAX_UVARINT_BYTES or not minimal."""
    try:
        value, end = pb.decode_uvarint(data, start, MAX_UVARINT_BYTES)
    except pb.TruncatedVarint:
        return 0, 0
    except pb.DecodeError as exc:
        raise FrameError(f"bad uvarint: {exc}") from None
    return value, end - start


def encode_message(payload: bytes) -> bytes:
    return encode_uvarint(len(payload)) + payload


class MessageDecoder:
    """Splits a byte stream into uvarint-length-delimited messages.

    `feed(data)` returns the messages completed so far; a length above `max_message`
    raises MessageTooLarge before any of that message is buffered."""

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        out: list[bytes] = []
        pos = 0
        while True:
            try:
                size, used = decode_uvarint(self._buf, pos)
            except FrameError as exc:
                raise MessageTooLarge(str(exc)) from None
            if not used:
                break
            if size > self.max_message:
                raise MessageTooLarge(
                    f"message of {size} bytes exceeds the maximum of {self.max_message}")
            if len(self._buf) - pos - used < size:
                break
            out.append(bytes(self._buf[pos + used:pos + used + size]))
            pos += used + size
        del self._buf[:pos]
        return out


# -- registration --------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ProtocolSpec:
    """How an owner wants one protocol's streams delivered."""

    messages: bool = False  # whole uvarint-delimited messages instead of bytes
    max_message: int = DEFAULT_MAX_MESSAGE

    def to_wire(self) -> dict[str, Any]:
        return {"messages": self.messages, "max_message": self.max_message}

    @classmethod
    def from_wire(cls, obj: Any, where: str) -> "ProtocolSpec":
        if not isinstance(obj, dict):
            raise FrameError(f"{where} must be an object")
        messages = obj.get("messages", False)
        max_message = obj.get("max_message", DEFAULT_MAX_MESSAGE)
        if not isinstance(messages, bool):
            raise FrameError(f"{where}.messages must be true or false")
        if (not isinstance(max_message, int) or isinstance(max_message, bool)
                or not 1 <= max_message <= MAX_MESSAGE_LIMIT):
            raise FrameError(f"{where}.max_message must be 1..{MAX_MESSAGE_LIMIT}")
        return cls(messages, max_message)


def check_protocol_id(proto: Any) -> str:
    if not isinstance(proto, str) or not proto.startswith("/") or not 2 <= len(proto) <= 256:
        raise FrameError(f"protocol id must be a string starting with '/': {proto!r}")
    return proto


def check_window(value: Any) -> int:
    if value is None:
        return DEFAULT_WINDOW
    if (not isinstance(value, int) or isinstance(value, bool)
            or not 1024 <= value <= MAX_WINDOW):
        raise FrameError(f"window must be 1024..{MAX_WINDOW} bytes")
    return value
