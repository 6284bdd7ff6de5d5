"""`p2pm status` without supervisord: an actor's state comes from its lock, its health
from its answer. Both are read in one call; an actor that takes its lock and starts
answering in between must not show as STOPPED next to healthy (it did, once, under
load: test_status_of_actors_run_without_supervisord)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import Any

from p2pm.common import errors
from p2pm.common.cli import node
from p2pm.common.home import ACTORS, Home


def test_an_actor_that_comes_up_while_status_asks_is_shown_running(
        tmp_path: Path, monkeypatch: Any) -> None:
    home = Home(tmp_path / "n").ensure()
    held: list[Any] = []

    def statuses(h: Home) -> dict[str, Any]:
        # the transport finishes starting while status asks: lock taken, then it answers
        f = open(home.run / "transport.lock", "a+")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        held.append(f)
        return {a: {"healthy": True, "pid": os.getpid(), "uptime_s": 0.4} if a == "transport"
                else errors.unavailable("not running") for a in ACTORS}

    monkeypatch.setattr(node.bus, "statuses", statuses)
    try:
        rows = node._actor_rows(home, None)
    finally:
        for f in held:
            f.close()
    assert rows["transport"]["state"] == "RUNNING" and rows["transport"]["healthy"] is True
    assert rows["dht"]["state"] == "STOPPED" and rows["dht"]["healthy"] is False
