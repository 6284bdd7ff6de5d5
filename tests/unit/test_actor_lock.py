"""An actor's one-per-home lock: a second instance is refused, but `p2pm status`
probing the lock at the instant an actor starts is not taken for one."""

from __future__ import annotations

import fcntl
import threading
from pathlib import Path

from p2pm.common.actor import process
from p2pm.common.home import Endpoints


def test_an_actor_starting_while_status_probes_its_lock_still_starts(tmp_path: Path) -> None:
    probing = threading.Event()

    def status_probe() -> None:  # what supervisor.actor_pids does, held a little long
        with open(tmp_path / "dht.lock", "a+") as f:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            probing.set()
            threading.Event().wait(0.2)
            fcntl.flock(f, fcntl.LOCK_UN)

    probe = threading.Thread(target=status_probe)
    probe.start()
    probing.wait(5)
    lock = process._lock_actor("dht", Endpoints(f"ipc://{tmp_path}"))
    probe.join()
    assert lock is not None
    lock.close()


def test_a_second_instance_in_the_same_home_is_refused(tmp_path: Path) -> None:
    first = process._lock_actor("dht", Endpoints(f"ipc://{tmp_path}"))
    assert first is not None
    try:
        assert process._lock_actor("dht", Endpoints(f"ipc://{tmp_path}")) is None
    finally:
        first.close()
    again = process._lock_actor("dht", Endpoints(f"ipc://{tmp_path}"))
    assert again is not None
    again.close()
