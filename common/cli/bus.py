"""Blocking calls onto a node's bus, for the command line and test helpers.

Each helper runs its own short trio loop around `open_client`, so a command stays a
plain function. Calls go out concurrently where there are several (status, health).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import trio
import zmq

from .. import errors
from .. import supervisor as supmod
from ..client import open_client
from ..home import ACTORS, Home

# A command whose actor is restarting keeps trying for about this long: a restart by
# supervisord takes around a second.
CALL_TIMEOUT = 2.0
CALL_RETRIES = 2
# `status` asks once: an actor that cannot answer within this is reported, not waited for.
STATUS_TIMEOUT = 1.5
# A call gives up early when its actor is down, rather than waiting out its timeout
# (a DHT lookup's is 35 s): down is no process holding the actor's lock while
# supervisord says it will not start it again, or, without a supervisord (or with
# supervisord showing it EXITED, as it does for a moment before restarting it), for
# this long (a restart by hand takes about a second).
DOWN_GRACE = 3.0
DOWN_POLL = 0.25


def call(home: Home, actor: str, method: str, params: dict[str, Any] | None = None,
         *, timeout: float = CALL_TIMEOUT, retries: int = CALL_RETRIES) -> Any:
    """Call one method; return its result or raise BusError (TIMEOUT: no answer)."""
    (result,) = call_many(home, [(actor, method, params)], timeout=timeout, retries=retries)
    if isinstance(result, errors.BusError):
        raise result
    return result


def call_or_exit(home: Home, actor: str, method: str, params: dict[str, Any] | None = None,
                 *, timeout: float = CALL_TIMEOUT, retries: int = CALL_RETRIES) -> Any:
    """`call` for a command: an error reply or no answer ends the command with one
    line on stderr and its exit code (3 no answer, 2 bad input, 1 refused)."""
    from .base import EXIT_ERROR, EXIT_TIMEOUT, EXIT_USAGE, fail

    try:
        return call(home, actor, method, params, timeout=timeout, retries=retries)
    except errors.BusError as exc:
        code = {errors.TIMEOUT: EXIT_TIMEOUT, errors.BAD_PARAMS: EXIT_USAGE}.get(
            exc.code, EXIT_ERROR)
        fail(f"{exc.message} ({exc.code})", code)
    except ValueError as exc:  # a home path too long for a unix socket
        fail(str(exc), EXIT_USAGE)


def call_many(home: Home, calls: Iterable[tuple[str, str, dict[str, Any] | None]], *,
              timeout: float = CALL_TIMEOUT,
              retries: int = CALL_RETRIES) -> list[Any]:
    """Make the calls concurrently; each slot holds a result or the BusError raised."""
    todo = list(calls)
    results: list[Any] = [None] * len(todo)
    endpoints = home.endpoints()

    async def one(i: int, actor: str, method: str, params: dict[str, Any] | None) -> None:
        async with open_client(zmq.Context.instance(), endpoints.rpc(actor), actor) as c, \
                trio.open_nursery() as nursery:
            async def ask() -> None:
                try:
                    results[i] = await c.call(method, params, timeout=timeout,
                                              retries=retries)
                except errors.BusError as exc:
                    results[i] = exc
                nursery.cancel_scope.cancel()

            async def watch() -> None:
                await wait_down(home, actor)
                results[i] = errors.BusError(
                    errors.TIMEOUT, f"{actor} is not running in {home.root} "
                    "(p2pm status shows the node's actors)")
                nursery.cancel_scope.cancel()

            nursery.start_soon(ask)
            nursery.start_soon(watch)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for i, (actor, method, params) in enumerate(todo):
                nursery.start_soon(one, i, actor, method, params)

    trio.run(main)
    return results


async def wait_down(home: Home, actor: str) -> None:
    """Return once `actor` is known to be down in `home` (see DOWN_GRACE); never for
    an actor that never ran there as its own process (no lock file to tell)."""
    unsure_since: float | None = None  # lock free, no verdict from supervisord yet
    while True:
        held = supmod.actor_lock_held(home, actor)
        if held is False:
            state = await trio.to_thread.run_sync(supmod.program_state, home, actor)
            now = trio.current_time()
            if state is not None and state not in supmod.COMING_BACK | supmod.SETTLING:
                return
            if state in supmod.COMING_BACK:
                unsure_since = None
            else:
                unsure_since = now if unsure_since is None else unsure_since
                if now - unsure_since >= DOWN_GRACE:
                    return
        else:
            unsure_since = None
        await trio.sleep(DOWN_POLL)


def statuses(home: Home, actors: Iterable[str] = ACTORS,
             timeout: float = STATUS_TIMEOUT) -> dict[str, dict[str, Any] | errors.BusError]:
    """sys.status of each actor, one short attempt each (for status and health)."""
    names = list(actors)
    replies = call_many(home, [(a, "sys.status", None) for a in names],
                        timeout=timeout, retries=0)
    return dict(zip(names, replies))


def wait_healthy(home: Home, timeout: float,
                 actors: Iterable[str] = ACTORS) -> tuple[bool, dict[str, Any]]:
    """Poll until every actor answers sys.status with healthy=true or the deadline
    passes; returns (all healthy, the last status of each actor)."""
    names = list(actors)
    deadline = time.monotonic() + timeout
    while True:
        last = statuses(home, names, timeout=min(0.5, max(0.05, deadline - time.monotonic())))
        if all(isinstance(s, dict) and s.get("healthy") for s in last.values()):
            return True, last
        if time.monotonic() >= deadline:
            return False, last
        time.sleep(0.05)
