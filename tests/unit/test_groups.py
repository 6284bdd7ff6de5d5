"""common/groups: a guard handles the error that ends a task beside Cancelled, and the
Cancelled still reaches the scope that is stopping the task."""

from __future__ import annotations

import logging

import pytest
import trio

from p2pm.common.groups import first_error, handle_beside_cancel
from p2pm.common.log import get_logger
from p2pm.common.streams import StreamReset
from tests.helpers.stopping import nursery_cut_by_the_stop


async def _exchange_cut_by_the_stop() -> None:
    """A sync as its owner stops: its stream is reset by the closing stream client."""
    await nursery_cut_by_the_stop(StreamReset("unavailable", "the owner closed its stream client"))


def test_first_error_finds_the_error_however_deep() -> None:
    reset = StreamReset("unavailable", "reset")
    group = BaseExceptionGroup("", [KeyboardInterrupt(),
                                    BaseExceptionGroup("", [KeyboardInterrupt(), reset])])
    assert first_error(group) is reset
    with pytest.raises(ValueError):
        first_error(BaseExceptionGroup("", [KeyboardInterrupt()]))


def test_the_error_is_handled_and_the_rest_raised() -> None:
    reset, stop = StreamReset("unavailable", "reset"), KeyboardInterrupt()
    seen: list[Exception] = []
    with pytest.raises(BaseExceptionGroup) as raised:
        try:
            raise BaseExceptionGroup("", [reset, stop])
        except BaseExceptionGroup as group:
            handle_beside_cancel(group, seen.append)
    assert seen == [reset]
    assert raised.value.exceptions == (stop,)


async def test_a_guarded_task_cut_by_the_stop_is_logged_and_the_stop_stays_clean(
        caplog: pytest.LogCaptureFixture) -> None:
    """The shape every converted guard has: the task's error is logged once, with its
    traceback, and the nursery that is being stopped ends without raising it."""
    log = get_logger("groups-test")
    handled: list[str] = []

    def crashed(exc: Exception) -> None:
        handled.append(type(exc).__name__)
        log.error("task.crashed", exc=True)

    async def guarded() -> None:
        try:
            await _exchange_cut_by_the_stop()
        except Exception as exc:
            crashed(exc)
        except BaseExceptionGroup as group:
            handle_beside_cancel(group, crashed)

    caplog.set_level(logging.ERROR, logger="p2pm.groups-test")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(guarded)
            await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert handled == ["StreamReset"]
    [record] = [r for r in caplog.records if r.getMessage() == "task.crashed"]
    # The traceback shows the error, not the Cancelled that went on up.
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ExceptionGroup)
    assert "owner closed its stream client" in caplog.text


async def test_a_task_that_only_was_cancelled_is_not_called_a_failure() -> None:
    handled: list[Exception] = []

    async def guarded() -> None:
        try:
            async with trio.open_nursery() as inner:
                inner.start_soon(trio.sleep_forever)
                inner.start_soon(trio.sleep_forever)
        except Exception as exc:
            handled.append(exc)
        except BaseExceptionGroup as group:
            handle_beside_cancel(group, handled.append)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guarded)
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert handled == []
