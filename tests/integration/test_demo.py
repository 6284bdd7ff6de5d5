"""`p2pm demo` on real processes: four nodes under their own supervisords play the
whole scripted conversation and every step passes; Ctrl-C in the middle stops every
node and removes the folder."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import orjson

from p2pm.common.home import Home
from tests.helpers import clean_env, destroy_home, kill_group, p2pm_argv, wait_for

DEMO_TIMEOUT = 240


def _processes_under(root: Path) -> list[int]:
    """Processes whose command line names a path under `root` (nodes of the demo)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline or f"P2PM_HOME={root}".encode() in environ:
            found.append(int(entry.name))
    return found


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
        assert _processes_under(root) == []
    finally:
        _clean(short_tmp)


def test_ctrl_c_stops_every_node_and_removes_the_folder(short_tmp: Path) -> None:
    proc = subprocess.Popen(p2pm_argv("demo", "--dir", str(short_tmp)), env=clean_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("p2pm demo in "), first
        root = Path(first.split(" in ", 1)[1].strip())
        # Interrupt once the first node runs under its supervisord.
        wait_for(lambda: (root / "boot" / "run" / "supervisord.pid").exists(), 60,
                 "the bootstrap node to start")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
        assert proc.returncode == 130, err
        assert "interrupted" in err
        assert not root.exists()
        wait_for(lambda: _processes_under(root) == [], 10, "every demo process to exit")
    finally:
        kill_group(proc)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
        _clean(short_tmp)
