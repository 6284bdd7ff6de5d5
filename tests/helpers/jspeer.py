"""js-libp2p as a reference peer: `tests/interop/js/peer.mjs` in a Node.js child
process, driven over JSON lines from the test's trio loop.

    async with open_js_peer() as js:
        await js.call("dial", addr=node.addrs[0])
        await js.call("subscribe", topic="t")
        msg = await js.next_message("t")

A second, independent libp2p implementation (TCP, Noise, Yamux, identify, ping,
Kademlia, GossipSub with StrictSign, Circuit Relay v2 client and server), so p2pm's
wire formats are checked against something other than py-libp2p. Needs `node` and
the packages `make setup-js` installs into tests/interop/js/node_modules; without
them `js_peer_missing()` says what is missing and the tests skip.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

JS_DIR = Path(__file__).resolve().parents[1] / "interop" / "js"
SCRIPT = JS_DIR / "peer.mjs"
MIN_NODE = 20
# js-libp2p logs through `debug`: its error-level lines (a connection it dropped and
# why) are kept, and shown with a failed command.
JS_DEBUG = "*:error"
STDERR_SHOWN = 6000


class JsPeerError(Exception):
    """The peer answered a command with an error (its message is the text)."""


@functools.cache
def js_peer_missing() -> str | None:
    """Why the js-libp2p peer cannot run here, or None if it can."""
    node = shutil.which("node")
    if node is None:
        return "Node.js (`node`) is not installed"
    try:
        version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                 timeout=10).stdout.strip()
        major = int(version.lstrip("v").split(".")[0])
    except (OSError, ValueError, subprocess.SubprocessError):
        return "`node --version` did not say its version"
    if major < MIN_NODE:
        return f"js-libp2p needs Node.js {MIN_NODE} or newer; this is {version}"
    if not (JS_DIR / "node_modules" / "libp2p").is_dir():
        return f"js-libp2p is not installed: run `make setup-js` ({JS_DIR.name}/)"
    return None


class JsPeer:
    def __init__(self, proc: trio.Process) -> None:
        self.proc = proc
        self.peer_id = ""
        self.addrs: list[str] = []
        self.messages: list[dict[str, Any]] = []
        self._next_id = 0
        self._waiting: dict[int, trio.MemorySendChannel[dict[str, Any]]] = {}
        self._changed = trio.Event()
        self._ready = trio.Event()
        self.stderr: list[str] = []

    async def call(self, cmd: str, timeout: float = 30.0, **params: Any) -> Any:
        self._next_id += 1
        rid = self._next_id
        send, recv = trio.open_memory_channel[dict[str, Any]](1)
        self._waiting[rid] = send
        assert self.proc.stdin is not None
        await self.proc.stdin.send_all(
            (json.dumps({"id": rid, "cmd": cmd, **params}) + "\n").encode())
        try:
            with trio.fail_after(timeout):
                reply = await recv.receive()
        finally:
            self._waiting.pop(rid, None)
        if "error" in reply:
            log = "".join(self.stderr)[-STDERR_SHOWN:]
            raise JsPeerError(reply["error"] + (f"\n--- js-libp2p's errors, latest last:\n{log}"
                                                if log else ""))
        return reply["ok"]

    async def publish(self, topic: str, data: bytes) -> list[str]:
        got = await self.call("publish", topic=topic,
                              data=base64.b64encode(data).decode())
        return list(got["recipients"])

    async def next_message(self, topic: str, after: int = 0,
                           timeout: float = 20.0) -> dict[str, Any]:
        """The first message on `topic` among those received from index `after` on."""
        with trio.fail_after(timeout):
            while True:
                for m in self.messages[after:]:
                    if m["topic"] == topic:
                        return {**m, "data": base64.b64decode(m["data"])}
                self._changed = trio.Event()
                await self._changed.wait()

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        async for chunk in self.proc.stdout:
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                try:
                    obj = json.loads(line)
                except ValueError:  # a library printing to stdout: kept for errors
                    self.stderr.append(line.decode(errors="replace"))
                    continue
                self._line(obj)

    def _line(self, obj: dict[str, Any]) -> None:
        event = obj.get("event")
        if event == "ready":
            self.peer_id, self.addrs = obj["peer"], obj["addrs"]
            self._ready.set()
        elif event == "message":
            self.messages.append(obj)
            self._changed.set()
        elif obj.get("id") in self._waiting:
            self._waiting[obj["id"]].send_nowait(obj)

    async def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        async for chunk in self.proc.stderr:
            self.stderr.append(chunk.decode(errors="replace"))
            del self.stderr[:-100]


@asynccontextmanager
async def open_js_peer(*, relay_server: bool = False,
                       listen: Sequence[str] = ()) -> AsyncIterator[JsPeer]:
    """Start the peer (a Circuit Relay v2 server if `relay_server`; also listening on
    `listen`, such as "<relay addr>/p2p-circuit" for a reservation) and wait for its
    listen addresses; it is killed on every exit."""
    missing = js_peer_missing()
    if missing:
        raise RuntimeError(missing)
    env = {"DEBUG": JS_DEBUG, **os.environ,
           "P2PM_JS_RELAY_SERVER": "1" if relay_server else "0",
           "P2PM_JS_LISTEN": json.dumps(list(listen))}
    async with trio.open_nursery() as nursery:
        proc = await trio.lowlevel.open_process(
            ["node", str(SCRIPT)], cwd=str(JS_DIR), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        peer = JsPeer(proc)
        try:
            nursery.start_soon(peer._read)
            nursery.start_soon(peer._read_stderr)
            with trio.fail_after(30):
                await peer._ready.wait()
            yield peer
        except trio.TooSlowError:
            raise AssertionError(f"js peer did not start: {''.join(peer.stderr)[-2000:]}")
        finally:
            proc.kill()
            with trio.CancelScope(shield=True):
                await proc.wait()
            nursery.cancel_scope.cancel()
