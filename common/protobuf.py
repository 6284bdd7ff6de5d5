"""A small, strict protobuf wire codec for the libp2p protocols p2pm speaks itself.

The DHT (`/ipfs/kad/1.0.0`) and GossipSub messages are protobuf on the wire, and every
byte of them comes from a peer we do not trust. Generated code (and py-libp2p's copy of
it) is lenient and heavy to import; this module decodes into frozen dataclasses and
refuses anything malformed with one exception class, `DecodeError`, whose message
says what was wrong.

Declaring a message:

    @message
    @dataclasses.dataclass(frozen=True, slots=True)
    class Peer:
        id: bytes = field(1, "bytes")
        addrs: tuple[bytes, ...] = field(2, "bytes", repeated=True)
        connection: int = field(3, "enum")

    data = encode(Peer(id=b"..."))
    peer = decode(Peer, data)

Kinds: uint32, uint64, int32, int64, bool, enum, bytes, string, fixed32, fixed64, or a
message class for a nested message. Singular scalars follow proto3 (a zero value is not
sent) unless declared `optional=True` (proto2 `optional`, proto3 explicit presence):
then the default is None and any other value is sent. Repeated fields decode to
tuples; repeated numbers are accepted packed or not and sent unpacked unless
`packed=True`.

Decoding follows the protobuf rules where they are safe and is stricter where they are
lenient: unknown fields are skipped (including groups), the last value of a repeated
singular scalar wins and a repeated singular message is merged; but varints must be
minimal and at most 10 bytes, numbers must fit their kind, strings must be UTF-8, a
known field with the wrong wire type is an error, and nesting depth is bounded.

Framing: libp2p protocols prefix each message with its length as a multiformats
unsigned varint (minimal, at most 9 bytes). `encode_delimited` and `DelimitedDecoder`
handle that, with a maximum message size enforced before any payload is buffered.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterator
from typing import Any, TypeVar

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5

MAX_VARINT_BYTES = 10  # a 64-bit value needs at most ten 7-bit groups
MAX_UVARINT_PREFIX_BYTES = 9  # the multiformats unsigned-varint limit (63 bits)
MAX_DEPTH = 32
MAX_FIELD_NUMBER = (1 << 29) - 1
U64 = (1 << 64) - 1


class DecodeError(ValueError):
    """The bytes are not a valid encoding of the expected message."""


class TruncatedVarint(DecodeError):
    """The bytes end inside a varint (a stream reader waits for more)."""


class EncodeError(ValueError):
    """The object cannot be encoded: a value does not fit its declared kind."""


# -- varints --------------------------------------------------------------------------


def encode_uvarint(value: int) -> bytes:
    if value < 0 or value > U64:
        raise EncodeError(f"varint out of range: {value}")
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def decode_uvarint(data: bytes | memoryview, pos: int = 0,
                   max_bytes: int = MAX_VARINT_BYTES) -> tuple[int, int]:
    """Read one unsigned varint at `pos`; return (value, position after it).

    Refuses truncation, encodings longer than `max_bytes`, values above 2**64-1 and
    non-minimal encodings (a redundant trailing zero group), which a canonical encoder
    never produces and which would give one value several encodings.
    """
    result = 0
    shift = 0
    end = len(data)
    start = pos
    while True:
        if pos - start >= max_bytes:
            raise DecodeError(f"varint longer than {max_bytes} bytes")
        if pos >= end:
            raise TruncatedVarint("truncated varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if byte == 0 and pos - start > 1:
                raise DecodeError("non-minimal varint encoding")
            if result > U64:
                raise DecodeError("varint overflows 64 bits")
            return result, pos
        shift += 7


# -- schema ---------------------------------------------------------------------------

_SCALAR_WIRE = {
    "uint32": VARINT, "uint64": VARINT, "int32": VARINT, "int64": VARINT,
    "bool": VARINT, "enum": VARINT, "bytes": LEN, "string": LEN,
    "fixed32": I32, "fixed64": I64,
}
_ZERO: dict[str, Any] = {
    "uint32": 0, "uint64": 0, "int32": 0, "int64": 0, "bool": False, "enum": 0,
    "bytes": b"", "string": "", "fixed32": 0, "fixed64": 0,
}
_RANGES = {
    "uint32": (0, (1 << 32) - 1), "uint64": (0, U64), "int32": (-(1 << 31), (1 << 31) - 1),
    "int64": (-(1 << 63), (1 << 63) - 1), "enum": (-(1 << 31), (1 << 31) - 1),
    "fixed32": (0, (1 << 32) - 1), "fixed64": (0, U64), "bool": (0, 1),
}


@dataclasses.dataclass(frozen=True, slots=True)
class FieldSpec:
    number: int
    name: str
    kind: str | type  # a scalar kind name, or a @message class
    repeated: bool
    optional: bool
    packed: bool
    is_message: bool  # derived from kind, stored because encode/decode ask per value
    wire_type: int


def field(number: int, kind: str | type, *, repeated: bool = False,
          optional: bool = False, packed: bool = False) -> Any:
    """Declare a dataclass attribute as protobuf field `number` of `kind`."""
    if not 1 <= number <= MAX_FIELD_NUMBER:
        raise ValueError(f"field number out of range: {number}")
    if isinstance(kind, str) and kind not in _SCALAR_WIRE:
        raise ValueError(f"unknown field kind {kind!r}")
    if repeated and optional:
        raise ValueError("a repeated field cannot be optional")
    meta = {"pb": (number, kind, repeated, optional, packed)}
    if repeated:
        return dataclasses.field(default=(), metadata=meta)
    if optional or not isinstance(kind, str):
        return dataclasses.field(default=None, metadata=meta)
    return dataclasses.field(default=_ZERO[kind], metadata=meta)


T = TypeVar("T")


def message(cls: type[T]) -> type[T]:
    """Class decorator: collect the `field(...)` declarations of a dataclass."""
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls.__name__} must be a dataclass")
    specs = []
    for f in dataclasses.fields(cls):
        if "pb" not in f.metadata:
            raise TypeError(f"{cls.__name__}.{f.name} is not declared with protobuf.field()")
        number, kind, repeated, optional, packed = f.metadata["pb"]
        if not isinstance(kind, str) and not hasattr(kind, "__pb_fields__"):
            raise TypeError(f"{cls.__name__}.{f.name}: {kind!r} is not a @message class")
        is_msg = not isinstance(kind, str)
        specs.append(FieldSpec(number, f.name, kind, repeated, optional, packed, is_msg,
                               LEN if is_msg else _SCALAR_WIRE[kind]))
    numbers = [s.number for s in specs]
    if len(set(numbers)) != len(numbers):
        raise TypeError(f"{cls.__name__} declares a field number twice")
    specs.sort(key=lambda s: s.number)
    cls.__pb_fields__ = tuple(specs)  # type: ignore[attr-defined]
    cls.__pb_by_number__ = {s.number: s for s in specs}  # type: ignore[attr-defined]
    return cls


def _specs(cls: type) -> tuple[FieldSpec, ...]:
    try:
        return cls.__pb_fields__  # type: ignore[attr-defined,no-any-return]
    except AttributeError:
        raise TypeError(f"{cls.__name__} is not a @message class") from None


# -- encoding -------------------------------------------------------------------------


def _check_range(spec: FieldSpec, value: Any) -> int:
    if spec.kind == "bool":
        if not isinstance(value, bool):
            raise EncodeError(f"{spec.name}: expected bool, got {type(value).__name__}")
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise EncodeError(f"{spec.name}: expected int, got {type(value).__name__}")
    low, high = _RANGES[spec.kind]  # type: ignore[index]
    if not low <= value <= high:
        raise EncodeError(f"{spec.name}: {value} out of range for {spec.kind}")
    return value


def _encode_scalar(spec: FieldSpec, value: Any) -> bytes:
    kind = spec.kind
    if kind == "bytes":
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise EncodeError(f"{spec.name}: expected bytes, got {type(value).__name__}")
        return encode_uvarint(len(value)) + bytes(value)
    if kind == "string":
        if not isinstance(value, str):
            raise EncodeError(f"{spec.name}: expected str, got {type(value).__name__}")
        raw = value.encode("utf-8")
        return encode_uvarint(len(raw)) + raw
    number = _check_range(spec, value)
    if kind == "fixed32":
        return struct.pack("<I", number)
    if kind == "fixed64":
        return struct.pack("<Q", number)
    return encode_uvarint(number & U64)  # negative int32/int64: ten-byte two's complement


def _encode_value(spec: FieldSpec, value: Any) -> bytes:
    if spec.is_message:
        if not isinstance(value, spec.kind):  # type: ignore[arg-type]
            raise EncodeError(f"{spec.name}: expected {spec.kind.__name__}, "  # type: ignore[union-attr]
                              f"got {type(value).__name__}")
        body = encode(value)
        return encode_uvarint(len(body)) + body
    return _encode_scalar(spec, value)


def encode(obj: Any) -> bytes:
    """Serialise a @message instance, fields in number order (as protoc's runtimes do)."""
    out = bytearray()
    for spec in _specs(type(obj)):
        value = getattr(obj, spec.name)
        if spec.repeated:
            if not isinstance(value, (tuple, list)):
                raise EncodeError(f"{spec.name}: expected a tuple, got {type(value).__name__}")
            if spec.packed and value:
                body = b"".join(_encode_scalar(spec, v) for v in value)
                out += encode_uvarint((spec.number << 3) | LEN)
                out += encode_uvarint(len(body)) + body
                continue
            tag = encode_uvarint((spec.number << 3) | spec.wire_type)
            for item in value:
                out += tag
                out += _encode_value(spec, item)
            continue
        if value is None:
            if spec.optional or spec.is_message:
                continue
            raise EncodeError(f"{spec.name}: None for a non-optional field")
        if not spec.optional and not spec.is_message and value == _ZERO[spec.kind]:  # type: ignore[index]
            _encode_scalar(spec, value)  # still type-check what is left out
            continue
        out += encode_uvarint((spec.number << 3) | spec.wire_type)
        out += _encode_value(spec, value)
    return bytes(out)


# -- decoding -------------------------------------------------------------------------


def _skip_field(data: memoryview, pos: int, wire: int, number: int, depth: int) -> int:
    """Skip one unknown field's value, returning the position after it."""
    if wire == VARINT:
        return decode_uvarint(data, pos)[1]
    if wire == I64:
        if pos + 8 > len(data):
            raise DecodeError(f"truncated fixed64 in field {number}")
        return pos + 8
    if wire == I32:
        if pos + 4 > len(data):
            raise DecodeError(f"truncated fixed32 in field {number}")
        return pos + 4
    if wire == LEN:
        length, pos = decode_uvarint(data, pos)
        if length > len(data) - pos:
            raise DecodeError(f"field {number}: length {length} exceeds the "
                              f"{len(data) - pos} bytes left")
        return pos + length
    if wire == SGROUP:
        if depth >= MAX_DEPTH:
            raise DecodeError("groups nested too deeply")
        while True:
            key, pos = decode_uvarint(data, pos)
            inner_wire, inner_number = key & 7, key >> 3
            if inner_number == 0 or inner_number > MAX_FIELD_NUMBER:
                raise DecodeError(f"invalid field number {inner_number}")
            if inner_wire == EGROUP:
                if inner_number != number:
                    raise DecodeError(f"group {number} closed by end-group {inner_number}")
                return pos
            pos = _skip_field(data, pos, inner_wire, inner_number, depth + 1)
    if wire == EGROUP:
        raise DecodeError(f"end-group {number} without a start")
    raise DecodeError(f"invalid wire type {wire} in field {number}")


def _scalar_from_varint(spec: FieldSpec, raw: int) -> Any:
    kind = spec.kind
    if kind in ("int32", "int64", "enum") and raw >= 1 << 63:
        raw -= 1 << 64
    if kind == "bool":
        if raw > 1:
            raise DecodeError(f"{spec.name}: bool value {raw}")
        return bool(raw)
    low, high = _RANGES[kind]  # type: ignore[index]
    if not low <= raw <= high:
        raise DecodeError(f"{spec.name}: {raw} out of range for {kind}")
    return raw


def _read_scalar(spec: FieldSpec, data: memoryview, pos: int) -> tuple[Any, int]:
    kind = spec.kind
    if kind == "fixed32":
        if pos + 4 > len(data):
            raise DecodeError(f"{spec.name}: truncated fixed32")
        return struct.unpack_from("<I", data, pos)[0], pos + 4
    if kind == "fixed64":
        if pos + 8 > len(data):
            raise DecodeError(f"{spec.name}: truncated fixed64")
        return struct.unpack_from("<Q", data, pos)[0], pos + 8
    raw, pos = decode_uvarint(data, pos)
    return _scalar_from_varint(spec, raw), pos


def _read_len(spec: FieldSpec, data: memoryview, pos: int) -> tuple[memoryview, int]:
    length, pos = decode_uvarint(data, pos)
    if length > len(data) - pos:
        raise DecodeError(f"{spec.name}: length {length} exceeds the {len(data) - pos} bytes left")
    return data[pos:pos + length], pos + length


def _decode(cls: type[T], data: memoryview, depth: int) -> T:
    if depth > MAX_DEPTH:
        raise DecodeError("messages nested too deeply")
    by_number: dict[int, FieldSpec] = cls.__pb_by_number__  # type: ignore[attr-defined]
    values: dict[str, Any] = {}
    repeated: dict[str, list[Any]] = {}
    nested: dict[str, list[memoryview]] = {}
    pos, end = 0, len(data)
    while pos < end:
        key, pos = decode_uvarint(data, pos)
        wire, number = key & 7, key >> 3
        if number == 0 or number > MAX_FIELD_NUMBER:
            raise DecodeError(f"invalid field number {number}")
        spec = by_number.get(number)
        if spec is None:
            pos = _skip_field(data, pos, wire, number, depth)
            continue
        if spec.is_message:
            if wire != LEN:
                raise DecodeError(f"{cls.__name__}.{spec.name}: wire type {wire}, expected {LEN}")
            chunk, pos = _read_len(spec, data, pos)
            if spec.repeated:
                repeated.setdefault(spec.name, []).append(
                    _decode(spec.kind, chunk, depth + 1))  # type: ignore[arg-type]
            else:
                # Protobuf merges a repeated singular message; parsing the concatenation
                # of its encodings is exactly that merge.
                nested.setdefault(spec.name, []).append(chunk)
            continue
        expected = spec.wire_type
        if spec.repeated and wire == LEN and expected != LEN:
            packed, pos = _read_len(spec, data, pos)
            items = repeated.setdefault(spec.name, [])
            inner = 0
            while inner < len(packed):
                item, inner = _read_scalar(spec, packed, inner)
                items.append(item)
            continue
        if wire != expected:
            raise DecodeError(f"{cls.__name__}.{spec.name}: wire type {wire}, expected {expected}")
        if expected == LEN:
            chunk, pos = _read_len(spec, data, pos)
            if spec.kind == "string":
                try:
                    value: Any = str(chunk, "utf-8")
                except UnicodeDecodeError:
                    raise DecodeError(f"{cls.__name__}.{spec.name}: not UTF-8") from None
            else:
                value = bytes(chunk)
        else:
            value, pos = _read_scalar(spec, data, pos)
        if spec.repeated:
            repeated.setdefault(spec.name, []).append(value)
        else:
            values[spec.name] = value
    for name, chunks in nested.items():
        spec = next(s for s in cls.__pb_fields__ if s.name == name)  # type: ignore[attr-defined]
        joined = memoryview(b"".join(chunks)) if len(chunks) > 1 else chunks[0]
        values[name] = _decode(spec.kind, joined, depth + 1)  # type: ignore[arg-type]
    for name, items in repeated.items():
        values[name] = tuple(items)
    return cls(**values)


def decode(cls: type[T], data: bytes | bytearray | memoryview, max_size: int | None = None) -> T:
    """Parse `data` as a `cls` message; raises DecodeError and nothing else on bad input."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"expected bytes, got {type(data).__name__}")
    if max_size is not None and len(data) > max_size:
        raise DecodeError(f"message of {len(data)} bytes exceeds the limit of {max_size}")
    _specs(cls)
    try:
        return _decode(cls, memoryview(data).cast("B") if isinstance(data, memoryview)
                       else memoryview(data), 0)
    except RecursionError:
        raise DecodeError("messages nested too deeply") from None


# -- length-prefixed framing ----------------------------------------------------------


def encode_delimited(payload: bytes) -> bytes:
    """Prefix `payload` with its length as a multiformats unsigned varint."""
    return encode_uvarint(len(payload)) + payload


class DelimitedDecoder:
    """Split a byte stream into uvarint-length-prefixed messages.

    `feed(data)` returns the whole messages completed by `data`, in order. A length
    above `max_size` (or a malformed prefix) raises DecodeError as soon as the prefix is
    read, before the payload is buffered; the decoder is then unusable, as the stream
    has lost its framing and should be reset. `finish()` raises if the stream ended
    inside a message.
    """

    def __init__(self, max_size: int) -> None:
        if max_size < 0:
            raise ValueError("max_size must be >= 0")
        self.max_size = max_size
        self._buf = bytearray()
        self._need: int | None = None  # payload length once the prefix is read
        self._broken: str | None = None

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes]:
        if self._broken:
            raise DecodeError(f"stream framing already broken: {self._broken}")
        self._buf += data
        out: list[bytes] = []
        buf, pos = self._buf, 0
        try:
            while True:
                if self._need is None:
                    if not self._prefix_complete(pos):
                        break
                    length, pos = decode_uvarint(buf, pos, MAX_UVARINT_PREFIX_BYTES)
                    if length > self.max_size:
                        raise DecodeError(
                            f"message of {length} bytes exceeds the limit of {self.max_size}")
                    self._need = length
                if len(buf) - pos < self._need:
                    break
                out.append(bytes(buf[pos:pos + self._need]))
                pos += self._need
                self._need = None
        except DecodeError as exc:
            self._broken = str(exc)
            self._buf.clear()
            raise
        del buf[:pos]
        return out

    def _prefix_complete(self, pos: int) -> bool:
        """Whether a whole prefix (or enough bytes to judge it too long) is buffered."""
        for i in range(pos, min(len(self._buf), pos + MAX_UVARINT_PREFIX_BYTES)):
            if not self._buf[i] & 0x80:
                return True
        return len(self._buf) - pos >= MAX_UVARINT_PREFIX_BYTES

    def finish(self) -> None:
        if self._broken:
            raise DecodeError(f"stream framing broken: {self._broken}")
        if self._buf or self._need is not None:
            raise DecodeError("stream ended inside a message")


def iter_delimited(data: bytes, max_size: int) -> Iterator[bytes]:
    """Every message of a complete buffer of length-prefixed messages."""
    decoder = DelimitedDecoder(max_size)
    yield from decoder.feed(data)
    decoder.finish()

