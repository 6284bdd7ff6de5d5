"""The strict protobuf codec: what it accepts, what it refuses, and round trips."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2pm.common import protobuf as pb
from p2pm.common.protobuf import DecodeError, DelimitedDecoder, field, message


@message
@dataclasses.dataclass(frozen=True, slots=True)
class Inner:
    name: str = field(1, "string")
    tags: tuple[bytes, ...] = field(2, "bytes", repeated=True)


@message
@dataclasses.dataclass(frozen=True, slots=True)
class Outer:
    count: int = field(1, "uint64")
    delta: int = field(2, "int32")
    flag: bool | None = field(3, "bool", optional=True)
    blob: bytes = field(4, "bytes")
    inner: Inner | None = field(5, Inner)
    inners: tuple[Inner, ...] = field(6, Inner, repeated=True)
    nums: tuple[int, ...] = field(7, "uint32", repeated=True)
    f32: int = field(8, "fixed32")
    f64: int = field(9, "fixed64")
    kind: int = field(10, "enum")
    packed: tuple[int, ...] = field(11, "int64", repeated=True, packed=True)


# -- varints --------------------------------------------------------------------------

@pytest.mark.parametrize("value,raw", [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (2**64 - 1, b"\xff" * 9 + b"\x01"),
])
def test_uvarint_known_encodings(value: int, raw: bytes) -> None:
    assert pb.encode_uvarint(value) == raw
    assert pb.decode_uvarint(raw) == (value, len(raw))


@pytest.mark.parametrize("raw,why", [
    (b"", "truncated"), (b"\x80", "truncated"), (b"\xff\xff", "truncated"),
    (b"\x80\x00", "non-minimal"), (b"\xff" * 9 + b"\x02", "overflows"),
    (b"\xff" * 10 + b"\x01", "longer than"),
])
def test_uvarint_refuses_bad_encodings(raw: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        pb.decode_uvarint(raw)


def test_uvarint_encoder_refuses_out_of_range() -> None:
    for bad in (-1, 2**64):
        with pytest.raises(pb.EncodeError):
            pb.encode_uvarint(bad)


# -- messages -------------------------------------------------------------------------

def test_defaults_encode_to_nothing_and_decode_back() -> None:
    assert pb.encode(Outer()) == b""
    assert pb.decode(Outer, b"") == Outer()


def test_optional_bool_false_is_sent() -> None:
    # proto2 `optional bool subscribe = 1` with False means "unsubscribe": presence matters.
    assert pb.encode(Outer(flag=False)) == b"\x18\x00"
    assert pb.decode(Outer, b"\x18\x00").flag is False
    assert pb.decode(Outer, b"").flag is None


def test_negative_int32_is_ten_bytes_twos_complement() -> None:
    data = pb.encode(Outer(delta=-1))
    assert data == b"\x10" + b"\xff" * 9 + b"\x01"
    assert pb.decode(Outer, data).delta == -1


def test_full_message_round_trip() -> None:
    obj = Outer(count=2**40, delta=-5, flag=True, blob=b"\x00\x01", inner=Inner("x", (b"a",)),
                inners=(Inner("y"), Inner("z", (b"", b"q"))), nums=(1, 2**32 - 1),
                f32=7, f64=2**63, kind=3, packed=(-1, 0, 5))
    assert pb.decode(Outer, pb.encode(obj)) == obj


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    unknown = (
        b"\xa0\x06\x96\x01"          # field 100 varint
        b"\xa1\x06" + b"\x00" * 8 +  # field 100 fixed64
        b"\xa2\x06\x03abc" +         # field 100 length-delimited
        b"\xa5\x06" + b"\x00" * 4 +  # field 100 fixed32
        b"\xa3\x06\x08\x01\xa4\x06"  # field 100 group holding a varint
    )
    data = unknown + pb.encode(Outer(count=9)) + unknown
    assert pb.decode(Outer, data) == Outer(count=9)


def test_last_scalar_wins_and_singular_messages_merge() -> None:
    first = pb.encode(Outer(count=1, inner=Inner(name="a", tags=(b"1",))))
    second = pb.encode(Outer(count=2, inner=Inner(tags=(b"2",))))
    assert pb.decode(Outer, first + second) == Outer(count=2, inner=Inner("a", (b"1", b"2")))


def test_repeated_numbers_accepted_packed_and_unpacked() -> None:
    unpacked = b"\x38\x01\x38\x02"
    packed = b"\x3a\x02\x01\x02"
    assert pb.decode(Outer, unpacked).nums == (1, 2)
    assert pb.decode(Outer, packed).nums == (1, 2)
    assert pb.decode(Outer, unpacked + packed).nums == (1, 2, 1, 2)
    assert pb.encode(Outer(packed=(1, 2))) == b"\x5a\x02\x01\x02"


@pytest.mark.parametrize("data,why", [
    (b"\x08", "truncated varint"),
    (b"\x22\x05abc", "length 5 exceeds"),
    (b"\x22\xff\xff\xff\xff\x0f", "exceeds"),
    (b"\x0a\x01a", "wire type 2, expected 0"),
    (b"\x2a\x01", "exceeds"),
    (b"\x28\x01", "wire type 0, expected 2"),
    (b"\x45\x00\x00", "truncated fixed32"),
    (b"\x00\x01", "invalid field number 0"),
    (b"\x2a\x02\x0a\x05", "length 5 exceeds"),
    (b"\x2a\x03\x0a\x01\xff", "not UTF-8"),
    (b"\x18\x02", "bool value 2"),
    (b"\x38\x80\x80\x80\x80\x10", "out of range for uint32"),
    (b"\xa7\x06", "invalid wire type 7"),
    (b"\xa4\x06", "end-group 100 without a start"),
    (b"\xa3\x06\xac\x06", "closed by end-group 101"),
    (b"\xa3\x06\x08\x01", "truncated"),
])
def test_malformed_messages_raise_decode_error(data: bytes, why: str) -> None:
    with pytest.raises(DecodeError, match=why):
        pb.decode(Outer, data)


def test_deeply_nested_groups_are_refused() -> None:
    data = b"\xa3\x06" * 100 + b"\xa4\x06" * 100
    with pytest.raises(DecodeError, match="too deeply"):
        pb.decode(Outer, data)


def test_max_size_is_enforced_before_parsing() -> None:
    with pytest.raises(DecodeError, match="exceeds the limit"):
        pb.decode(Outer, pb.encode(Outer(blob=b"x" * 100)), max_size=50)


def test_encode_refuses_values_that_do_not_fit() -> None:
    for bad in (Outer(count=-1), Outer(delta=2**31), Outer(blob="text"),  # type: ignore[arg-type]
                Outer(inner=Outer()), Outer(flag=1), Outer(nums=(2**32,)),  # type: ignore[arg-type]
                Outer(inners=Inner())):  # type: ignore[arg-type]
        with pytest.raises(pb.EncodeError):
            pb.encode(bad)


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(DecodeError):
        pb.decode(Outer, "text")  # type: ignore[arg-type]


# -- framing --------------------------------------------------------------------------

def test_delimited_decoder_reassembles_byte_by_byte() -> None:
    payloads = [b"", b"a", b"x" * 300, pb.encode(Outer(count=5))]
    stream = b"".join(pb.encode_delimited(p) for p in payloads)
    decoder = DelimitedDecoder(max_size=1000)
    got: list[bytes] = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i:i + 1])
    decoder.finish()
    assert got == payloads
    assert list(pb.iter_delimited(stream, 1000)) == payloads


def test_delimited_decoder_refuses_oversized_prefix_before_payload() -> None:
    decoder = DelimitedDecoder(max_size=1024)
    with pytest.raises(DecodeError, match="exceeds the limit of 1024"):
        decoder.feed(pb.encode_uvarint(1025))
    assert decoder.buffered == 0
    with pytest.raises(DecodeError, match="broken"):
        decoder.feed(b"\x00")


def test_delimited_decoder_refuses_long_or_non_minimal_prefix() -> None:
    with pytest.raises(DecodeError, match="longer than 9"):
        DelimitedDecoder(2**70).feed(b"\x80" * 9)
    with pytest.raises(DecodeError, match="non-minimal"):
        DelimitedDecoder(100).feed(b"\x81\x00")


def test_delimited_stream_cut_inside_a_message_is_an_error() -> None:
    decoder = DelimitedDecoder(100)
    assert decoder.feed(b"\x05abc") == []
    with pytest.raises(DecodeError, match="inside a message"):
        decoder.finish()


# -- fuzz -----------------------------------------------------------------------------

inner_st = st.builds(Inner, name=st.text(max_size=20),
                     tags=st.lists(st.binary(max_size=10), max_size=3).map(tuple))
outer_st = st.builds(
    Outer,
    count=st.integers(0, 2**64 - 1), delta=st.integers(-(2**31), 2**31 - 1),
    flag=st.none() | st.booleans(), blob=st.binary(max_size=50),
    inner=st.none() | inner_st, inners=st.lists(inner_st, max_size=3).map(tuple),
    nums=st.lists(st.integers(0, 2**32 - 1), max_size=5).map(tuple),
    f32=st.integers(0, 2**32 - 1), f64=st.integers(0, 2**64 - 1),
    kind=st.integers(-(2**31), 2**31 - 1),
    packed=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=5).map(tuple),
)


@settings(max_examples=300, deadline=None)
@given(outer_st)
def test_round_trip(obj: Outer) -> None:
    data = pb.encode(obj)
    assert pb.decode(Outer, data) == obj
    assert pb.encode(pb.decode(Outer, data)) == data


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    try:
        obj = pb.decode(Outer, data)
    except DecodeError:
        return
    # Whatever decodes must re-encode, and that encoding must decode to the same object.
    assert pb.decode(Outer, pb.encode(obj)) == obj


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6), st.data())
def test_delimited_random_chunking(payloads: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(pb.encode_delimited(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder = DelimitedDecoder(max_size=40)
    got: list[bytes] = []
    prev = 0
    for cut in cuts + [len(stream)]:
        got += decoder.feed(stream[prev:cut])
        prev = cut
    decoder.finish()
    assert got == payloads


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=60))
def test_delimited_random_bytes_raise_only_decode_error(data: bytes) -> None:
    decoder = DelimitedDecoder(max_size=16)
    try:
        for message_bytes in decoder.feed(data):
            assert len(message_bytes) <= 16
        decoder.finish()
    except DecodeError:
        pass
