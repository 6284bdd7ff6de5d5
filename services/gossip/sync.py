"""Catch-up sync (`/p2pm/sync/1.0.0`) without I/O: the frames, their validation, and
the range arithmetic that decides what each side is missing.

Theory of operation
-------------------
GossipSub only reaches members who are online when a message goes out. Whatever a
member missed, it gets from any other member it meets, by reconciling per-author
sequence ranges (storage's `author_ranges`): a message is identified by (author, seq),
and every author numbers their messages 1, 2, 3... in each conversation.

One stream per conversation and pair of peers; every frame is one uvarint-delimited
JSON object:

    initiator                                   responder
    HELLO {conv, proof, ranges, addrs}  ->
                                        <-      HELLO {ranges, addrs}
    ENVS {envs: [...]} * n              ->  <-  ENVS {envs: [...]} * n
    DONE                                ->  <-  DONE
    HAVE {ranges}                       ->  <-  HAVE {ranges}      (after storing)
    close                                       close

`proof` is a keyed hash (the conversation's content key) over the conversation id and
both peer ids: the responder answers only someone who holds the secret, and a proof
seen by one peer cannot be replayed to another. A responder that does not know the
conversation, or finds the proof wrong, resets the stream.

After the HELLOs each side sends, in ENVS batches, the envelopes it holds and the
other lacks (`missing(mine, theirs)`), then DONE. Envelopes are the encrypted,
author-signed ones storage keeps, so any member relays any author's messages and the
receiver verifies each one as if it came over gossip. HAVE carries the ranges after
storing what arrived: for an author, the other side's ranges are a receipt for every
message they cover (the stream is authenticated by the transport, so a peer vouches
only for itself). `addrs` shares the addresses known for the conversation's members,
which is how a member who joined through one inviter finds the others.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson

PROTOCOL = "/p2pm/sync/1.0.0"
MAX_FRAME = 1024 * 1024
ENVS_PER_FRAME = 64
MAX_AUTHORS = 1024
MAX_RANGES = 1024  # per author; a peer with more holes sends the first ones
MAX_PEERS_ADDRS = 64
MAX_ADDRS = 8
MAX_SEQ = 2**63 - 1

Ranges = dict[str, list[tuple[int, int]]]


class SyncError(ValueError):
    """A frame that breaks the protocol (the peer did)."""


@dataclass(frozen=True)
class Hello:
    ranges: Ranges
    addrs: dict[str, list[str]] = field(default_factory=dict)
    conversation: str | None = None  # initiator only
    proof: bytes | None = None  # initiator only


@dataclass(frozen=True)
class Envs:
    envelopes: tuple[bytes, ...]


@dataclass(frozen=True)
class Done:
    pass


@dataclass(frozen=True)
class Have:
    ranges: Ranges


Frame = Hello | Envs | Done | Have


# -- encoding ----------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def encode(frame: Frame) -> bytes:
    if isinstance(frame, Hello):
        doc: dict[str, Any] = {"t": "hello", "ranges": _ranges_out(frame.ranges),
                               "addrs": frame.addrs}
        if frame.conversation is not None:
            doc["conv"] = frame.conversation
            doc["proof"] = _b64(frame.proof or b"")
    elif isinstance(frame, Envs):
        doc = {"t": "envs", "envs": [_b64(e) for e in frame.envelopes]}
    elif isinstance(frame, Done):
        doc = {"t": "done"}
    else:
        doc = {"t": "have", "ranges": _ranges_out(frame.ranges)}
    return orjson.dumps(doc)


def _ranges_out(ranges: Ranges) -> dict[str, list[list[int]]]:
    return {a: [[lo, hi] for lo, hi in spans[:MAX_RANGES]]
            for a, spans in list(ranges.items())[:MAX_AUTHORS]}


def decode(data: bytes) -> Frame:
    """One frame from the peer; SyncError says what is wrong with it."""
    if len(data) > MAX_FRAME:
        raise SyncError("frame too large")
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise SyncError("frame is not JSON") from None
    if not isinstance(doc, dict):
        raise SyncError("frame must be an object")
    kind = doc.get("t")
    if kind == "hello":
        conv, proof = doc.get("conv"), doc.get("proof")
        if conv is not None and (not isinstance(conv, str) or not 0 < len(conv) <= 128):
            raise SyncError("conv must be a conversation id")
        return Hello(check_ranges(doc.get("ranges")), _check_addrs(doc.get("addrs", {})),
                     conv, None if conv is None else _unb64(proof, "proof"))
    if kind == "envs":
        envs = doc.get("envs")
        if not isinstance(envs, list) or len(envs) > ENVS_PER_FRAME:
            raise SyncError(f"envs must be a list of at most {ENVS_PER_FRAME}")
        return Envs(tuple(_unb64(e, "envelope") for e in envs))
    if kind == "done":
        return Done()
    if kind == "have":
        return Have(check_ranges(doc.get("ranges")))
    raise SyncError(f"unknown frame type {str(kind)[:32]!r}")


def _unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise SyncError(f"{what} must be base64")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SyncError(f"{what} is not valid base64") from None


def check_ranges(raw: Any) -> Ranges:
    """Validate {author: [[lo, hi], ...]}: ascending, disjoint, 1 <= lo <= hi."""
    if not isinstance(raw, dict) or len(raw) > MAX_AUTHORS:
        raise SyncError(f"ranges must be an object of at most {MAX_AUTHORS} authors")
    out: Ranges = {}
    for author, spans in raw.items():
        if not isinstance(author, str) or not 0 < len(author) <= 128:
            raise SyncError("an author must be a peer id")
        if not isinstance(spans, list) or len(spans) > MAX_RANGES:
            raise SyncError(f"at most {MAX_RANGES} ranges per author")
        last = 0
        checked = []
        for span in spans:
            if (not isinstance(span, list) or len(span) != 2
                    or not all(isinstance(v, int) and not isinstance(v, bool) for v in span)):
                raise SyncError("a range is [lo, hi]")
            lo, hi = span
            if not last < lo <= hi <= MAX_SEQ:
                raise SyncError("ranges must be ascending and disjoint, 1 <= lo <= hi")
            checked.append((lo, hi))
            last = hi
        out[author] = checked
    return out


def _check_addrs(raw: Any) -> dict[str, list[str]]:
    if not isinstance(raw, dict) or len(raw) > MAX_PEERS_ADDRS:
        raise SyncError(f"addrs must be an object of at most {MAX_PEERS_ADDRS} peers")
    out: dict[str, list[str]] = {}
    for peer, addrs in raw.items():
        if not isinstance(peer, str) or not 0 < len(peer) <= 128 or not isinstance(
                addrs, list) or len(addrs) > MAX_ADDRS or not all(
                isinstance(a, str) and 0 < len(a) <= 512 for a in addrs):
            raise SyncError("addrs must map peer ids to lists of multiaddrs")
        out[peer] = list(addrs)
    return out


# -- range arithmetic --------------------------------------------------------------


def from_storage(authors: dict[str, Any]) -> Ranges:
    """storage.author_ranges' "authors" as Ranges."""
    return {a: [(int(lo), int(hi)) for lo, hi in info.get("ranges", [])]
            for a, info in authors.items()}


def subtract(spans: Iterable[tuple[int, int]],
             minus: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """The parts of `spans` not covered by `minus` (both ascending and disjoint)."""
    out: list[tuple[int, int]] = []
    cuts = list(minus)
    for lo, hi in spans:
        cur = lo
        for clo, chi in cuts:
            if chi < cur or clo > hi:
                continue
            if clo > cur:
                out.append((cur, clo - 1))
            cur = max(cur, chi + 1)
            if cur > hi:
                break
        if cur <= hi:
            out.append((cur, hi))
    return out


def missing(mine: Ranges, theirs: Ranges) -> Ranges:
    """What I hold and they do not, per author."""
    out: Ranges = {}
    for author, spans in mine.items():
        left = subtract(spans, theirs.get(author, []))
        if left:
            out[author] = left
    return out


def holds(ranges: Ranges, author: str, seq: int) -> bool:
    return any(lo <= seq <= hi for lo, hi in ranges.get(author, ()))


def contiguous(spans: list[tuple[int, int]]) -> int:
    """The highest seq such that every seq from 1 to it is held (0: seq 1 missing)."""
    return spans[0][1] if spans and spans[0][0] == 1 else 0
