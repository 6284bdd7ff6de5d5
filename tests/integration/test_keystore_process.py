"""The keystore as its own process, as supervisord runs it: unlocked by the key in its
environment, serving over ipc, back unlocked after a SIGKILL and restart, exit 0 on
SIGTERM."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq

from p2pm.common import actor_tokens, errors, identity
from p2pm.common.client import open_client
from p2pm.common.home import Home
from tests.helpers import ActorProcesses

PASSPHRASE = "process test passphrase"
START_DEADLINE_S = 20.0


@pytest.fixture()
def node() -> Iterator[ActorProcesses]:
    root = Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))
    home = Home(root).ensure()
    identity.create_identity(home.identity_file, PASSPHRASE)
    key = identity.derive_unlock_key(home.identity_file, PASSPHRASE)
    env = {**os.environ, identity.UNLOCK_KEY_ENV: key.hex()}
    procs = ActorProcesses(home, env)
    try:
        yield procs
    finally:
        procs.kill_all()
        shutil.rmtree(root, ignore_errors=True)


async def wait_healthy(home: Home, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    """Poll sys.status until this process answers healthy; fail at the deadline."""
    async with open_client(zmq.Context.instance(), home.endpoints().rpc("keystore"),
                           "keystore") as client:
        with trio.fail_after(START_DEADLINE_S):
            while True:
                assert proc.poll() is None, f"keystore exited with {proc.returncode}"
                try:
                    status = await client.call("sys.status", timeout=0.5, retries=0)
                except errors.BusError as exc:
                    assert exc.code == errors.TIMEOUT, exc
                else:
                    if status["pid"] == proc.pid and status["healthy"]:
                        return status
                await trio.sleep(0.05)


async def identity_and_signature(home: Home) -> tuple[str, bool]:
    async with open_client(zmq.Context.instance(), home.endpoints().rpc("keystore"),
                           "keystore") as client:
        info = await client.call("identity")
        reply = await client.call("sign", {"domain": "p2pm-message:",
                                           "data": base64.b64encode(b"hi").decode()},
                                  auth=actor_tokens.auth_for(home.endpoints(), "gossip"))
    public = base64.b64decode(info["public_key"])
    ok = identity.verify(public, "p2pm-message:", b"hi", base64.b64decode(reply["signature"]))
    return info["peer_id"], ok


async def test_keystore_process_restarts_unlocked(node: ActorProcesses) -> None:
    home = node.home
    expected = identity.read_peer_id(home.identity_file)

    first = node.start("keystore")
    status = await wait_healthy(home, first)
    assert status["unlocked"] and status["peer_id"] == expected
    assert await identity_and_signature(home) == (expected, True)

    os.killpg(first.pid, signal.SIGKILL)
    first.wait()

    second = node.start("keystore")
    status = await wait_healthy(home, second)  # no passphrase given: the env key did it
    assert status["unlocked"]
    assert await identity_and_signature(home) == (expected, True)

    second.send_signal(signal.SIGTERM)
    assert await trio.to_thread.run_sync(lambda: second.wait(timeout=10)) == 0

    log = (home.logs / "keystore.test.log").read_text()
    assert PASSPHRASE not in log and node.env[identity.UNLOCK_KEY_ENV] not in log
