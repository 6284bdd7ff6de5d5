"""The request/reply client every actor and the CLI use to call an actor.

A DEALER socket with request ids, a per-attempt timeout, capped exponential backoff and
retry: the Lazy Pirate pattern, adapted to DEALER. Lazy Pirate closes a REQ socket to
drop a stale reply; with DEALER we match replies by id instead and drop the ones nobody
waits for, so one socket serves many concurrent calls. `IMMEDIATE` keeps requests out
of the queue of a peer that is not connected (a stopped actor): the send waits, the
attempt times out, and the retry goes to the replacement once it binds.

A retried request can reach the server twice; servers dedupe by request id. After a
timed-out attempt the socket is replaced (as Lazy Pirate does), which is what lets a
client find a restarted server on inproc endpoints.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import zmq

from . import errors, wire
from .zmqtrio import AsyncSocket

DEFAULT_TIMEOUT = 5.0
DEFAULT_RETRIES = 2
BACKOFF_START = 0.05
BACKOFF_CAP = 1.0


class Client:
    """Calls one actor. Create with `open_client`; safe to share between tasks."""

    def __init__(self, ctx: zmq.Context, endpoint: str, actor: str) -> None:
        self.actor = actor
        self.endpoint = endpoint
        self._ctx = ctx
        self._sock = self._new_socket()
        self._swapped = trio.Event()
        self._pending: dict[str, tuple[trio.Event, list[Any]]] = {}
        self.stats = {"calls": 0, "retries": 0, "timeouts": 0, "stale_replies": 0}

    def _new_socket(self) -> AsyncSocket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.IMMEDIATE, 1)
        sock.setsockopt(zmq.RECONNECT_IVL, 20)
        sock.setsockopt(zmq.RECONNECT_IVL_MAX, 500)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(self.endpoint)
        return AsyncSocket(sock)

    def _reopen(self) -> None:
        """Lazy Pirate's remedy after a timeout: a fresh socket. ipc reconnects by
        itself, but an inproc pipe to a server that went away is dead for good."""
        old, self._sock = self._sock, self._new_socket()
        old.close(linger_ms=0)

    async def _receive_loop(self) -> None:
        while True:
            sock = self._sock
            try:
                frames = await sock.recv_multipart()
            except trio.ClosedResourceError:
                continue  # swapped for a fresh socket by _reopen
            try:
                reply = wire.loads(frames[-1])
                rid = reply["id"]
            except Exception:
                continue
            slot = self._pending.get(rid)
            if slot is None:
                self.stats["stale_replies"] += 1
                continue
            event, box = slot
            if not event.is_set():
                box.append(reply)
                event.set()

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retries: int = DEFAULT_RETRIES,
        auth: wire.Auth | None = None,
    ) -> Any:
        """Call `method`; return its result or raise BusError (TIMEOUT after retries).
        `auth` says which actor asks (only the keystore wants to know)."""
        rid = uuid.uuid4().hex
        frame = wire.encode_request(rid, method, params, auth)
        event, box = trio.Event(), []
        self._pending[rid] = (event, box)
        self.stats["calls"] += 1
        backoff = BACKOFF_START
        try:
            for attempt in range(retries + 1):
                if attempt:
                    self.stats["retries"] += 1
                    self._reopen()
                    await trio.sleep(backoff)
                    backoff = min(backoff * 2, BACKOFF_CAP)
                with trio.move_on_after(timeout):
                    try:
                        await self._sock.send_multipart([b"", frame])
                    except trio.ClosedResourceError:
                        continue  # another call reopened the socket; retry on it
                    await event.wait()
                if box:
                    return _unwrap(box[0], self.actor, method)
            self.stats["timeouts"] += 1
            raise errors.BusError(
                errors.TIMEOUT,
                f"{self.actor} did not answer {method} ({retries + 1} attempts, "
                f"{timeout:g}s each); is it running?",
            )
        finally:
            del self._pending[rid]

    def close(self) -> None:
        self._sock.close(linger_ms=0)


def _unwrap(reply: Any, actor: str, method: str) -> Any:
    if not isinstance(reply, dict):
        raise errors.BusError(errors.INTERNAL, f"{actor} sent a malformed reply to {method}")
    if reply.get("ok"):
        return reply.get("result")
    err = reply.get("error") or {}
    raise errors.BusError(str(err.get("code", errors.INTERNAL)), str(err.get("message", "")))


@asynccontextmanager
async def open_client(ctx: zmq.Context, endpoint: str, actor: str) -> AsyncIterator[Client]:
    client = Client(ctx, endpoint, actor)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._receive_loop)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The receive loop only ends by cancellation, so a group holds the caller's
        # own exception: give it back unwrapped, as if there were no nursery.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    finally:
        client.close()
