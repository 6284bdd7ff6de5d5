"""pyzmq sockets driven by trio.

trio has no pyzmq integration, so we poll `zmq.FD` with `trio.lowlevel.wait_readable`.
That FD is edge-triggered and signals *any* change of `zmq.EVENTS`: it says "look
again", not "readable". Three rules keep it from stalling:

1. Always try the non-blocking operation first and only wait when it says `Again`.
2. Only one task waits on the FD at a time (trio forbids two, and one is enough);
   everybody else parks on a ParkingLot and is woken when the FD task returns.
3. Our own send/recv can consume the edge that a waiter needed (ZMQ processes its
   command queue inside send/recv and may clear the FD), so after every operation we
   wake all parked tasks *and* cancel the FD wait, and each re-checks `zmq.EVENTS`.

With that, throughput matches zmq.asyncio; without rule 3 a reader stalls after a few
thousand messages when another task sends on the same socket.
"""

from __future__ import annotations

import trio
import zmq


class AsyncSocket:
    """A zmq socket with async multipart send/recv for trio. Not thread-safe."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._lot = trio.lowlevel.ParkingLot()
        self._fd_scope: trio.CancelScope | None = None
        self.closed = False

    # -- waiting ---------------------------------------------------------------------
    def _poke(self) -> None:
        """Our operation may have consumed the edge: make every waiter look again."""
        if self._fd_scope is not None:
            self._fd_scope.cancel()
        if self._lot:
            self._lot.unpark_all()

    def _check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("socket closed")

    async def _wait(self, flag: int) -> None:
        while True:
            self._check_open()
            if self.sock.getsockopt(zmq.EVENTS) & flag:
                return
            if self._fd_scope is None:
                with trio.CancelScope() as scope:
                    self._fd_scope = scope
                    try:
                        await trio.lowlevel.wait_readable(self._fd)
                    finally:
                        self._fd_scope = None
                        self._lot.unpark_all()
                # A poke cancels only our private scope; a real cancellation still
                # propagates from the checkpoint below.
                await trio.lowlevel.checkpoint_if_cancelled()
            else:
                await self._lot.park()

    # -- operations ------------------------------------------------------------------
    async def send_multipart(self, frames: list[bytes], *, copy: bool = False) -> None:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            try:
                self.sock.send_multipart(frames, zmq.NOBLOCK, copy=copy)
            except zmq.Again:
                await self._wait(zmq.POLLOUT)
                continue
            self._poke()
            return

    def send_multipart_nowait(self, frames: list[bytes]) -> bool:
        """Send if it can go without blocking; False if it would block (HWM)."""
        self._check_open()
        try:
            self.sock.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return False
        self._poke()
        return True

    async def recv_multipart(self) -> list[bytes]:
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            try:
                frames = self.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                await self._wait(zmq.POLLIN)
                continue
            self._poke()
            return frames

    def close(self, linger_ms: int = 200) -> None:
        if self.closed:
            return
        self.closed = True
        self._poke()
        # trio must be told before an FD it may be waiting on goes away.
        trio.lowlevel.notify_closing(self._fd)
        self.sock.close(linger=linger_ms)
