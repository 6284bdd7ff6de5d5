"""When a command gives up on an actor as down rather than waiting for its answer.

A command sent while supervisord restarts its actor must reach the new process: for a
moment after a kill -9 the lock is free and supervisord shows the program EXITED, and
only on its next tick STARTING (test_each_killed_actor_is_restarted... was told
"gateway is not running" so). A program that stays EXITED, or is STOPPED or FATAL, is
down. Virtual time: the clock jumps while the watcher sleeps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio
from trio.testing import MockClock

from p2pm.common import supervisor as supmod
from p2pm.common.cli import bus
from p2pm.common.home import Home


def watch(tmp_path: Path, monkeypatch: Any, states: list[str | None],
          lock: list[bool] | None = None, limit: float = 30.0) -> float | None:
    """Run wait_down against supervisord answering `states` one poll after another
    (the last one for ever); the virtual seconds it took, or None if it never said down."""
    home = Home(tmp_path / "n").ensure()
    polls = {"n": 0}

    def held(h: Home, actor: str) -> bool:
        i = polls["n"]
        polls["n"] += 1
        return (lock or [False])[min(i, len(lock or [False]) - 1)]

    answers = iter(states)
    last: list[str | None] = [None]

    def state(h: Home, actor: str, timeout: float = 1.0) -> str | None:
        last[0] = next(answers, last[0])
        return last[0]

    monkeypatch.setattr(supmod, "actor_lock_held", held)
    monkeypatch.setattr(supmod, "program_state", state)

    async def inline(fn: Any, *args: Any, **kw: Any) -> Any:
        # no worker thread: the virtual clock would jump past the deadline under it
        return fn(*args)

    monkeypatch.setattr(trio.to_thread, "run_sync", inline)
    took: list[float | None] = [None]

    async def main() -> None:
        start = trio.current_time()
        with trio.move_on_after(limit):
            await bus.wait_down(home, "gateway")
            took[0] = trio.current_time() - start

    trio.run(main, clock=MockClock(autojump_threshold=0))
    return took[0]


def test_a_killed_actor_supervisord_is_restarting_is_not_called_down(
        tmp_path: Path, monkeypatch: Any) -> None:
    # RUNNING (not yet reaped), EXITED for up to a tick, then STARTING and RUNNING,
    # and the new process takes its lock.
    ticks = int(1.0 / bus.DOWN_POLL)
    states = ["RUNNING"] + ["EXITED"] * ticks + ["STARTING", "RUNNING"]
    lock = [False] * (len(states) + 2) + [True]
    assert watch(tmp_path, monkeypatch, states, lock) is None


@pytest.mark.parametrize("state", ["STOPPED", "FATAL", "STOPPING"])
def test_an_actor_supervisord_will_not_start_again_is_down_at_once(
        tmp_path: Path, monkeypatch: Any, state: str) -> None:
    took = watch(tmp_path, monkeypatch, [state])
    assert took is not None and took < bus.DOWN_POLL * 2


def test_an_actor_that_stays_exited_is_down_after_the_grace(
        tmp_path: Path, monkeypatch: Any) -> None:
    # An expected exit (code 0) is not restarted: it stays EXITED.
    took = watch(tmp_path, monkeypatch, ["RUNNING", "EXITED"])
    assert took is not None and bus.DOWN_GRACE <= took < bus.DOWN_GRACE + 1


def test_without_supervisord_a_free_lock_is_down_after_the_grace(
        tmp_path: Path, monkeypatch: Any) -> None:
    took = watch(tmp_path, monkeypatch, [None])
    assert took is not None and bus.DOWN_GRACE <= took < bus.DOWN_GRACE + 1


def test_a_held_lock_is_never_down(tmp_path: Path, monkeypatch: Any) -> None:
    assert watch(tmp_path, monkeypatch, ["STOPPED"], lock=[True]) is None
