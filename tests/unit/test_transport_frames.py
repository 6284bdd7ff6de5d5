"""The stream API's sans-IO pieces: frames, uvarint messages, registration checks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p2pm.common.streams import frames as fr
from p2pm.common.streams.frames import FrameError, MessageDecoder, MessageTooLarge


@given(st.integers(min_value=0, max_value=2**63 - 1))
def test_uvarint_round_trips(value: int) -> None:
    data = fr.encode_uvarint(value)
    assert fr.decode_uvarint(data + b"tail") == (value, len(data))


def test_uvarint_prefix_is_incomplete_not_an_error() -> None:
    assert fr.decode_uvarint(fr.encode_uvarint(300)[:1]) == (0, 0)
    with pytest.raises(FrameError):
        fr.decode_uvarint(b"\xff" * 10)


@given(st.lists(st.binary(max_size=300), max_size=20), st.integers(min_value=1, max_value=50))
def test_decoder_reassembles_messages_split_anywhere(messages: list[bytes], step: int) -> None:
    wire = b"".join(fr.encode_message(m) for m in messages)
    decoder = MessageDecoder(max_message=300)
    out: list[bytes] = []
    for i in range(0, len(wire), step):
        out += decoder.feed(wire[i:i + step])
    assert out == messages
    assert decoder.buffered == 0


def test_decoder_refuses_oversized_message_from_its_header() -> None:
    decoder = MessageDecoder(max_message=100)
    with pytest.raises(MessageTooLarge):
        decoder.feed(fr.encode_uvarint(101))  # refused before any payload arrives


def test_frame_round_trip_and_bad_frames() -> None:
    f = fr.parse(fr.frame(fr.OPEN, 7, {"protocol": "/x/1"}))
    assert (f.kind, f.sid, f.json()) == (fr.OPEN, 7, {"protocol": "/x/1"})
    assert fr.parse(fr.frame(fr.CREDIT, 3, fr.encode_uvarint(4096))).credit() == 4096
    for bad in ([b"D", b"x"], [b"Q", fr.encode_sid(1), b""], [b"D", b"123", b""]):
        with pytest.raises(FrameError):
            fr.parse(bad)
    with pytest.raises(FrameError):
        fr.parse(fr.frame(fr.CREDIT, 3, b"\x00")).credit()  # zero credit is meaningless
    with pytest.raises(FrameError):
        fr.parse([fr.REGISTER, fr.encode_sid(0), b"[1, 2]"]).json()


def test_protocol_spec_validation() -> None:
    spec = fr.ProtocolSpec.from_wire({"messages": True, "max_message": 4096}, "p")
    assert spec == fr.ProtocolSpec(True, 4096)
    assert fr.ProtocolSpec.from_wire(spec.to_wire(), "p") == spec
    for bad in ({"messages": "yes"}, {"max_message": 0}, {"max_message": True}, []):
        with pytest.raises(FrameError):
            fr.ProtocolSpec.from_wire(bad, "p")
    with pytest.raises(FrameError):
        fr.check_protocol_id("kad")
    with pytest.raises(FrameError):
        fr.check_window(10)
