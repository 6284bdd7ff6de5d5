"""pyzmq sockets driven by trio.

trio has no pyzmq integration, so we poll `zmq.FD` with `trio.lowlevel.wait_readable`.
That FD is edge-triggered and signals *any* change of `zmq.EVENTS`: it says "look
again", not "readable". Three rules keep it from stalling:

1. Always try the non-blocking operation first and only wait when it says `Again`.
2. Only one task waits on the FD at a time (trio forbids two, and one is enough);
   everybody else parks on a ParkingLot and is woken when the FD task returns.
3. Our own send/recv can consume the edge that a waiter needed (ZMQ processes its
   command queue inside send/recv and may clear the FD), so after every operation we
   read `zmq.EVENTS` once and, if it now satisfies what somebody waits for, wake the
   parked tasks and cancel the FD wait. If it does not, the waiter can keep waiting:
   any later change arrives as a new ZMQ command, which signals the FD again. (Waking
   everybody after every operation is also correct but costs a task switch a message.)

With that, throughput matches zmq.asyncio; without rule 3 a reader stalls after a few
thousand messages when another task sends on the same socket.
"""

from __future__ import annotations

from typing import Any

import trio
import zmq

# Plain ints: the IntFlag versions build enum objects on every `&` in the hot path.
POLLIN, POLLOUT, EVENTS = int(zmq.POLLIN), int(zmq.POLLOUT), int(zmq.EVENTS)
NOBLOCK = int(zmq.NOBLOCK)


class AsyncSocket:
    """A zmq socket with async multipart send/recv for trio. Not thread-safe."""

    def __init__(self, sock: zmq.Socket) -> None:
        self.sock = sock
        self._fd = sock.getsockopt(zmq.FD)
        self._lot = trio.lowlevel.ParkingLot()
        self._fd_scope: trio.CancelScope | None = None
        self._waiting = {POLLIN: 0, POLLOUT: 0}
        self.closed = False

    # -- waiting ---------------------------------------------------------------------
    def _wanted(self) -> int:
        return (POLLIN if self._waiting[POLLIN] else 0) | (
            POLLOUT if self._waiting[POLLOUT] else 0)

    def _wake(self) -> None:
        if self._fd_scope is not None:
            self._fd_scope.cancel()
        if self._lot:
            self._lot.unpark_all()

    def _poke(self) -> None:
        """Our operation may have consumed the edge: wake waiters that can now go."""
        wanted = self._wanted()
        if wanted and (self.closed or self.sock.get(EVENTS) & wanted):
            self._wake()

    def _check_open(self) -> None:
        if self.closed:
            raise trio.ClosedResourceError("socket closed")

    async def _wait(self, flag: int) -> None:
        self._waiting[flag] += 1
        try:
            await self._wait_for(flag)
        finally:
            self._waiting[flag] -= 1

    async def _wait_for(self, flag: int) -> None:
        while True:
            self._check_open()
            events = self.sock.get(EVENTS)
            if events & flag:
                return
            if events & self._wanted():
                # Reading EVENTS consumed the edge, and what it found is what another
                # task waits for (a sender that just got connected while the reader
                # looked): rule 3 applies to this read too.
                self._wake()
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
                self.sock.send_multipart(frames, NOBLOCK, copy=copy)
            except zmq.Again:
                await self._wait(POLLOUT)
                continue
            self._poke()
            return

    def send_multipart_nowait(self, frames: list[bytes]) -> bool:
        """Send if it can go without blocking; False if it would block (HWM)."""
        self._check_open()
        try:
            self.sock.send_multipart(frames, NOBLOCK, copy=False)
        except zmq.Again:
            self._poke()  # the failed attempt may still have consumed the edge
            return False
        self._poke()
        return True

    async def recv_multipart(self, *, copy: bool = True) -> list[Any]:
        """The next message; with copy=False as zmq.Frames (which carry message
        properties such as "Peer-Address")."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            self._check_open()
            try:
                frames = self.sock.recv_multipart(NOBLOCK, copy=copy)
            except zmq.Again:
                await self._wait(POLLIN)
                continue
            self._poke()
            return frames

    def close(self, linger_ms: int = 200) -> None:
        if self.closed:
            return
        self.closed = True
        if self._fd_scope is not None:
            self._fd_scope.cancel()
        self._lot.unpark_all()
        # trio must be told before an FD it may be waiting on goes away.
        trio.lowlevel.notify_closing(self._fd)
        self.sock.close(linger=linger_ms)
