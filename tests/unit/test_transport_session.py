"""The transport's Noise session: a write, once begun, is never cut short."""

from __future__ import annotations

import pytest
import trio
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.io.exceptions import IOException
from libp2p.peer.id import ID

from p2pm.services.transport.host import STALLED_WRITE_S, CancelSafeSession


class _StuckWire:
    """A connection whose peer never takes a byte."""

    closed = False

    async def write_msg(self, data: bytes) -> None:
        await trio.sleep_forever()

    async def close(self) -> None:
        self.closed = True


async def test_a_frame_the_peer_never_takes_closes_the_connection(autojump_clock) -> None:  # type: ignore[no-untyped-def]
    """A begun write outlives its caller's timeout (a half-sent Noise frame would break
    the connection anyway), but not STALLED_WRITE_S: then the connection is closed."""
    local, remote = create_new_key_pair(), create_new_key_pair()
    wire = _StuckWire()
    session = CancelSafeSession(
        local_peer=ID.from_pubkey(local.public_key), local_private_key=local.private_key,
        remote_peer=ID.from_pubkey(remote.public_key),
        remote_permanent_pubkey=remote.public_key, is_initiator=True, conn=wire)
    start = trio.current_time()
    with trio.move_on_after(1):  # the caller gives up after a second...
        with pytest.raises(IOException, match="connection closed"):
            await session.write(b"frame")
    # ...the frame kept the connection until STALLED_WRITE_S, then closed it.
    assert wire.closed
    assert trio.current_time() - start == pytest.approx(STALLED_WRITE_S)
