"""Local access: another user on the same machine cannot reach a node's sockets.

The bus has no passwords: the file system is the door. `run/` is 0700, so a process of
another uid cannot even reach the ipc socket paths, nor supervisord's socket, nor read
the database or the identity. The test forks a child that drops to an unprivileged
uid (os.setuid, so it needs root) and tries; the same child without dropping
privileges gets in, which shows the probe can tell the difference.
"""

from __future__ import annotations

import os
import pwd
import socket
import stat
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq

from p2pm.common.home import ACTORS
from tests.helpers import Node

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0,
    reason="needs root to switch to a second uid (os.setuid); run as root to test access")


def _other_uid() -> tuple[int, int]:
    try:
        pw = pwd.getpwnam("nobody")
        return pw.pw_uid, pw.pw_gid
    except KeyError:
        return 65534, 65534


def _probe(paths: list[Path], files: list[Path], zmq_endpoint: str) -> dict[str, Any]:
    """What this process can reach: per socket path, per file, and one bus call."""
    out: dict[str, Any] = {"uid": os.getuid(), "sockets": {}, "files": {}}
    for path in paths:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(2)
        try:
            s.connect(str(path))
            out["sockets"][path.name] = "connected"
        except OSError as exc:
            out["sockets"][path.name] = type(exc).__name__
        finally:
            s.close()
    for path in files:
        try:
            path.read_bytes()
            out["files"][path.name] = "read"
        except OSError as exc:
            out["files"][path.name] = type(exc).__name__
    ctx = zmq.Context()  # a fresh context: the parent's must not be used after fork
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(zmq_endpoint)
    sock.send_multipart([b"", orjson.dumps({"id": "probe", "method": "sys.ping"})])
    out["ping"] = orjson.loads(sock.recv_multipart()[-1]) if sock.poll(2000) else None
    sock.close()
    ctx.term()
    return out


def _in_child(as_uid: tuple[int, int] | None, *args: Any) -> dict[str, Any]:
    """Run `_probe` in a forked child, optionally as another uid; its answer as JSON."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(read_fd)
            if as_uid is not None:
                os.setgroups([])
                os.setgid(as_uid[1])
                os.setuid(as_uid[0])
            os.write(write_fd, orjson.dumps(_probe(*args)))
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            os.write(write_fd, orjson.dumps({"crash": repr(exc)}))
            code = 1
        finally:
            os._exit(code)
    os.close(write_fd)
    chunks = []
    with os.fdopen(read_fd, "rb") as f:
        while chunk := f.read(65536):
            chunks.append(chunk)
    os.waitpid(pid, 0)
    return orjson.loads(b"".join(chunks))


def test_another_user_cannot_reach_the_node(node: Node) -> None:
    run = node.home.run
    # As a home under /home usually is: others may enter it; only run/ keeps them out.
    os.chmod(node.root, 0o755)
    assert stat.S_IMODE(run.stat().st_mode) == 0o700
    sockets = sorted(p for p in run.iterdir() if stat.S_ISSOCK(p.stat().st_mode))
    names = {p.name for p in sockets}
    assert {f"{a}.rpc" for a in ACTORS} <= names and "supervisor.sock" in names
    files = [node.home.identity_file, node.home.data / "node.db"]
    endpoint = node.home.endpoints().rpc("gateway")

    owner = _in_child(None, sockets, files, endpoint)
    assert "crash" not in owner, owner
    assert set(owner["sockets"].values()) == {"connected"}, owner
    assert owner["ping"] and owner["ping"]["ok"], owner

    uid = _other_uid()
    other = _in_child(uid, sockets, files, endpoint)
    assert "crash" not in other, other
    assert other["uid"] == uid[0]
    assert set(other["sockets"]) == names
    for name, outcome in other["sockets"].items():
        assert outcome == "PermissionError", f"uid {uid[0]} reached {name}: {outcome}"
    for name, outcome in other["files"].items():
        assert outcome == "PermissionError", f"uid {uid[0]} could read {name}"
    assert other["ping"] is None, f"uid {uid[0]} got a bus reply: {other['ping']}"
    # The node did not notice anything: still healthy.
    assert node.healthy()
