"""Byte-level mutation of valid encodings: most bugs hide just past the first checks a
random byte string never gets through, so every decoder is also fed well-formed input
with a few bytes flipped, cut, duplicated or inserted."""

from __future__ import annotations

from hypothesis import strategies as st


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(("flip", "cut", "insert", "dup", "set")))
        pos = draw(st.integers(0, len(data)))
        if op == "flip" and data:
            data[pos % len(data)] ^= 1 << draw(st.integers(0, 7))
        elif op == "set" and data:
            data[pos % len(data)] = draw(st.sampled_from((0x00, 0x7F, 0x80, 0xFF)))
        elif op == "cut":
            del data[pos:pos + draw(st.integers(1, 16))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "dup" and data:
            end = min(len(data), pos + draw(st.integers(1, 32)))
            data[pos:pos] = data[pos:end]
    return bytes(data)


def fuzzed(valid: st.SearchStrategy[bytes], max_random: int = 512) -> st.SearchStrategy[bytes]:
    """Random bytes, valid encodings, and mutations of valid encodings."""
    return st.one_of(st.binary(max_size=max_random), valid, mutated(valid))
