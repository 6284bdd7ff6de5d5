"""Length-prefixed protobuf messages on a libp2p stream, shared by the NAT protocols
(relay, AutoNAT, DCUtR all frame their messages with a uvarint length, 4 KiB at most),
and quiet stream endings for their error paths."""

from __future__ import annotations

from typing import Any, TypeVar

import trio
from libp2p.abc import INetStream
from libp2p.utils.varint import encode_varint_prefixed, read_varint_prefixed_bytes_limited

MAX_MESSAGE = 4096
M = TypeVar("M")


async def read_message(stream: INetStream, cls: type[M]) -> M:
    data = await read_varint_prefixed_bytes_limited(stream, MAX_MESSAGE)
    msg = cls()
    msg.ParseFromString(data)  # type: ignore[attr-defined]
    return msg


async def write_message(stream: INetStream, msg: Any) -> None:
    await stream.write(encode_varint_prefixed(msg.SerializeToString()))


async def close_quietly(stream: INetStream | None) -> None:
    """Close after the last message (a reset could discard it at the receiver)."""
    if stream is None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.close()
        except* Exception:  # the swarm's notifee nursery: see common/groups.py
            pass


async def reset_quietly(stream: INetStream | None) -> None:
    if stream is None:
        return
    with trio.CancelScope(shield=True), trio.move_on_after(2):
        try:
            await stream.reset()
        except* Exception:  # as in close_quietly
            pass
