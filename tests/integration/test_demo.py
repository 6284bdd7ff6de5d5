"""`p2pm demo` on real processes: four nodes under their own supervisords play the
whole scripted conversation and every step passes; Ctrl-C in the middle stops every
node and removes the folder."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from p2pm.common.home import Home
from tests.helpers import (clean_env, destroy_home, kill_group, p2pm_argv, processes_under,
                           wait_for)

DEMO_TIMEOUT = 240


def _clean(parent: Path) -> None:
    """Whatever a failed demo left: every node home under `parent`."""
    for demo_root in parent.glob("p2pm-demo-*"):
        for home in demo_root.iterdir():
            if home.is_dir():
                destroy_home(Home(home))


def test_demo_plays_every_step_and_leaves_nothing(short_tmp: Path) -> None:
    try:
        proc = subprocess.run(p2pm_argv("--json", "demo", "--dir", str(short_tmp)),
                              env=clean_env(), capture_output=True, text=True,
                              timeout=DEMO_TIMEOUT, stdin=subprocess.DEVNULL)
        assert proc.returncode == 0, f"demo failed:\n{proc.stdout}\n{proc.stderr[-3000:]}"
        report = orjson.loads(proc.stdout)
        print(f"demo took {report['seconds']:.1f}s")
        assert report["ok"] and report["steps"]
        assert all(s["ok"] for s in report["steps"]), report["steps"]
        names = [s["name"] for s in report["steps"]]
        assert any("DHT" in n for n in names) and any("catches up" in n for n in names)
        assert any("Bob is offline" in line for line in report["transcript"])
        root = Path(report["root"])
        assert not root.exists()
        assert processes_under(root) == []
    finally:
        _clean(short_tmp)


def _sigint(default: bool) -> None:
    """In the child, before exec: SIGINT as the test needs it, whatever this process
    inherited (a background job of a non-interactive shell starts with it ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL if default else signal.SIG_IGN)


@pytest.mark.parametrize("signum, sigint_default", [
    (signal.SIGINT, True),  # Ctrl-C in a terminal
    (signal.SIGTERM, False),  # a background job, which cannot get Ctrl-C: kill stops it
], ids=["ctrl-c", "sigterm-with-sigint-ignored"])
def test_ctrl_c_stops_every_node_and_removes_the_folder(
        short_tmp: Path, signum: int, sigint_default: bool) -> None:
    proc = subprocess.Popen(p2pm_argv("demo", "--dir", str(short_tmp)), env=clean_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: _sigint(sigint_default))
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("p2pm demo in "), first
        root = Path(first.split(" in ", 1)[1].strip())
        # Interrupt once the first node runs under its supervisord.
        wait_for(lambda: (root / "boot" / "run" / "supervisord.pid").exists(), 60,
                 "the bootstrap node to start")
        proc.send_signal(signum)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        assert not root.exists()
        wait_for(lambda: processes_under(root) == [], 10, "every demo process to exit")
    finally:
        kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        _clean(short_tmp)
