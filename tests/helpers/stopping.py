"""A task's nursery as its actor stops, for the tests of the guards that must tell a
task's failure from the stop (common/groups.py)."""

from __future__ import annotations

import trio


async def nursery_cut_by_the_stop(error: Exception, in_flight: trio.Event | None = None) -> None:
    """Two children until cancelled: one simply ends, the other fails with `error` as
    it is cancelled (a sync whose stream the closing stream client resets, a dial
    whose socket is closed under it), so the nursery ends in a group of `error` and
    Cancelled. `in_flight` is set once both are waiting."""
    async def cancelled_cleanly() -> None:
        await trio.sleep_forever()

    async def fails_as_it_is_cancelled() -> None:
        try:
            if in_flight is not None:
                in_flight.set()
            await trio.sleep_forever()
        except trio.Cancelled:
            raise error from None

    async with trio.open_nursery() as inner:
        inner.start_soon(cancelled_cleanly)
        inner.start_soon(fails_as_it_is_cancelled)
