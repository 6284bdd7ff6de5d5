"""Resource faults under a real node: a database that cannot be written (disk full,
read-only file system) makes `p2pm post` fail with a clear error, publishes nothing,
loses nothing acknowledged, and the node carries on once the fault is gone.

The faults are real: the writer's data/ folder is a small tmpfs of its own, filled up
or remounted read-only. That needs root (mount); the tests skip without it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.helpers import Node, destroy_home, make_home, start_node, wait_for

from .chatnet import LOOPBACK, bodies, history, integrity, open_room, wait_connected

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="mounting a small file system for the fault needs root")


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def small_disk_node() -> Iterator[tuple[Node, Path]]:
    """A node whose data/ is a 24 MiB tmpfs; unmounted and removed on every exit."""
    home = make_home()
    home.ensure()
    mounted = False
    node = None
    try:
        _mount("-t", "tmpfs", "-o", "size=24m,mode=0700", "tmpfs", str(home.data))
        mounted = True
        node = start_node(home, listen=LOOPBACK)
        yield node, home.data
    finally:
        if node is not None:
            node.destroy()
        else:
            destroy_home(home)
        if mounted:
            subprocess.run(["umount", "-l", str(home.data)], capture_output=True, timeout=30)
        shutil.rmtree(home.root, ignore_errors=True)


# Opens the database in WAL mode and dies without closing it, as a crashed writer would.
_LEAVE_WAL = ("import os, sqlite3, sys; c = sqlite3.connect(sys.argv[1]); "
              "c.execute('PRAGMA journal_mode=WAL'); c.execute('SELECT 1 FROM sqlite_master')"
              ".fetchall(); os._exit(0)")


def _post(node: Node, room: str, text: str) -> subprocess.CompletedProcess[str]:
    return node.p2pm("--json", "post", room, text, timeout=60)


def _fill(folder: Path) -> Path:
    """Take every free byte of the file system under `folder`."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):  # big pieces, then the last partial blocks
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def _fault_case(writer: Node, reader: Node, room: str, text: str) -> dict[str, Any]:
    """`p2pm post` under the fault: must fail, say why, and leave no trace."""
    before = history(writer, room)
    proc = _post(writer, room, text)
    assert proc.returncode != 0, f"a post that cannot be stored succeeded: {proc.stdout}"
    said = (proc.stderr + proc.stdout).lower()
    assert "storage" in said or "database" in said, said
    assert "traceback" not in said
    assert history(writer, room) == before
    print(f"p2pm post under the fault: exit {proc.returncode}: {proc.stderr.strip()}")
    return {"stderr": proc.stderr.strip(), "seq": max(
        [m["seq"] for m in before if m["author"] == writer.peer_id], default=0)}


def _recovered(writer: Node, reader: Node, room: str, fault: dict[str, Any],
               lost: str) -> None:
    """After the fault: a new post works, reaches the reader, takes the very next seq
    (the failed one used none), and the failed text is nowhere."""
    proc = _post(writer, room, "after the fault")
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: "after the fault" in bodies(reader, room), 30, "the post after the fault")
    mine = [m for m in history(writer, room) if m["author"] == writer.peer_id]
    assert mine[-1]["body"] == "after the fault" and mine[-1]["seq"] == fault["seq"] + 1
    for node in (writer, reader):
        assert lost not in bodies(node, room)
    assert integrity(writer) == "ok"


def test_disk_full_fails_the_post_clearly_and_publishes_nothing(
        small_disk_node: tuple[Node, Path], node_factory: Any) -> None:
    writer, data = small_disk_node
    reader = node_factory(listen=LOOPBACK)
    room = open_room([writer, reader], "faults")
    wait_connected([writer, reader], room)

    filler = _fill(data)
    try:
        fault = _fault_case(writer, reader, room, "lost to a full disk")
        assert "full" in fault["stderr"].lower(), fault["stderr"]
        # The node itself stays up through the fault: storage answers, with an error.
        assert writer.healthy()
    finally:
        filler.unlink()
    _recovered(writer, reader, room, fault, "lost to a full disk")


def test_read_only_database_fails_the_post_clearly_and_publishes_nothing(
        small_disk_node: tuple[Node, Path], node_factory: Any) -> None:
    writer, data = small_disk_node
    reader = node_factory(listen=LOOPBACK)
    room = open_room([writer, reader], "faults")
    wait_connected([writer, reader], room)

    sup = writer.supervisor()
    # A file system with a file open for writing cannot go read-only: stop storage
    # first. Its clean stop removes the WAL files, without which SQLite cannot open the
    # database at all on a read-only disk; a crash leaves them, so leave them as one.
    sup.stop_process("storage")
    subprocess.run([sys.executable, "-c", _LEAVE_WAL, str(data / "node.db")], check=True,
                   timeout=30)
    _mount("-o", "remount,ro", str(data))
    try:
        sup.start_process("storage")
        writer.wait_healthy(30, actors=("storage",))
        fault = _fault_case(writer, reader, room, "lost to a read-only disk")
        assert "readonly" in fault["stderr"].lower().replace("read-only", "readonly")
        # Reading still works on a read-only database.
        assert "hello from 0" in " ".join(bodies(writer, room))
    finally:
        with contextlib.suppress(xmlrpc.client.Fault):
            sup.stop_process("storage")
        _mount("-o", "remount,rw", str(data))
        sup.start_process("storage")
    writer.wait_healthy(30)
    _recovered(writer, reader, room, fault, "lost to a read-only disk")
    assert orjson.loads(_post(writer, room, "and again").stdout)["state"] in (
        "sent", "pending", "delivered")
