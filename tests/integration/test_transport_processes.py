"""Transport processes as supervisord runs them (each node: keystore + transport over
ipc in its own home): dial, identify and ping both ways; kill -9 of the transport
(peers redialled, owners re-registered by themselves); kill -9 of an owner actor (its
streams reset, the connection stays)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq

from p2pm.common import errors
from p2pm.common.client import open_client
from p2pm.common.home import Home
from p2pm.common.identity import create_identity
from p2pm.common.streams import ProtocolSpec, StreamReset, open_streams
from tests.helpers import await_for

pytestmark = pytest.mark.slow

ECHO = "/p2pm-test/echo/1.0.0"
DEADLINE = 20.0


class ProcNode:
    """One node's keystore and transport processes, in their own process groups."""

    def __init__(self, transport_config: str = "") -> None:
        self.home = Home(Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))).ensure()
        create_identity(self.home.identity_file, None)
        self.home.config_file.write_text(
            '[transport]\nlisten = ["/ip4/127.0.0.1/tcp/0"]\n' + transport_config)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.endpoints = self.home.endpoints()

    def start(self, actor: str) -> None:
        env = {k: v for k, v in os.environ.items()
               if k not in ("P2PM_HOME", "P2PM_KEYSTORE_KEY", "P2PM_PASSPHRASE")}
        with open(self.home.logs / f"{actor}.log", "ab") as log:
            self.procs[actor] = subprocess.Popen(
                [sys.executable, "-m", "p2pm.common.service", actor,
                 "--home", str(self.home.root)],
                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self, actor: str) -> None:
        proc = self.procs.pop(actor)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def destroy(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.wait(10)
        shutil.rmtree(self.home.root, ignore_errors=True)

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   **kw: Any) -> Any:
        # The error leaves the client's nursery unwrapped only if raised outside it.
        async with open_client(zmq.Context.instance(), self.endpoints.rpc("transport"),
                               "transport") as client:
            try:
                return await client.call(method, params, **kw)
            except errors.BusError as exc:
                failure = exc
        raise failure

    async def wait_up(self) -> dict[str, Any]:
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    return await self.call("addrs", timeout=1.0, retries=0)
                except errors.BusError:
                    await trio.sleep(0.1)


@pytest.fixture
def nodes() -> Iterator[Callable[..., ProcNode]]:
    made: list[ProcNode] = []

    def make(transport_config: str = "") -> ProcNode:
        node = ProcNode(transport_config)
        made.append(node)
        node.start("keystore")
        node.start("transport")
        return node

    try:
        yield make
    finally:
        for node in made:
            node.destroy()


async def connected(node: ProcNode, peer_id: str) -> bool:
    try:
        return any(p["peer_id"] == peer_id for p in await node.call("peers", timeout=1.0))
    except errors.BusError:
        return False


async def test_two_transport_processes_dial_identify_and_ping_both_ways(nodes) -> None:  # type: ignore[no-untyped-def]
    a, b = nodes(), nodes()
    ida, idb = await a.wait_up(), await b.wait_up()
    assert all(x.endswith("/p2p/" + ida["peer_id"]) for x in ida["addrs"])
    await a.call("dial", {"addr": idb["addrs"][0]})
    for me, other in ((a, idb["peer_id"]), (b, ida["peer_id"])):
        async def knows_protocols() -> bool:
            info = await me.call("peer_info", {"peer_id": other})
            return {"/ipfs/id/1.0.0", "/ipfs/ping/1.0.0"} <= set(info["protocols"])

        await await_for(knows_protocols, "identify", DEADLINE)
        pong = await me.call("ping", {"peer_id": other})
        assert pong["peer_id"] == other and pong["rtt_ms"] > 0


async def test_kill9_transport_redials_peers_and_owners_reregister(nodes) -> None:  # type: ignore[no-untyped-def]
    a, b = nodes(), nodes()
    ida, idb = await a.wait_up(), await b.wait_up()
    async with open_streams(a.endpoints, "owner", {ECHO: ProtocolSpec()}) as owner, \
            open_streams(b.endpoints, "remote") as remote:
        await a.call("dial", {"addr": idb["addrs"][0]})
        # b opens by peer ID over a's connection, which b's side may not hold yet when
        # a's dial returns (and it knows no address of a to dial instead).
        await await_for(lambda: connected(b, ida["peer_id"]), "b to see a's connection", DEADLINE)
        s = await remote.open_stream(ECHO, peer=ida["peer_id"])
        await owner.accept()
        epoch = owner.epoch
        # The peer list reaches the disk before we kill.
        peers_file = a.home.data / "transport-peers.json"

        async def persisted() -> bool:
            return peers_file.exists() and idb["peer_id"] in peers_file.read_text()

        await await_for(persisted, "the peers file", DEADLINE)
        a.kill9("transport")
        with trio.fail_after(DEADLINE), pytest.raises(StreamReset):
            await s.receive()  # the remote side sees the stream die with the connection
        a.start("transport")
        await a.wait_up()
        # No manual action: a redials b, and the owner re-registers on the new epoch.
        await await_for(lambda: connected(a, idb["peer_id"]), "redial after restart", DEADLINE)

        async def reregistered() -> bool:
            return owner.epoch not in (None, epoch) and owner.restarts == 1

        await await_for(reregistered, "owner re-registration", DEADLINE)
        with trio.fail_after(DEADLINE):
            while True:
                try:
                    s = await remote.open_stream(ECHO, peer=ida["peer_id"])
                    break
                except Exception:
                    await trio.sleep(0.1)  # until the owner's protocol is back
            inbound = await owner.accept()
            await s.send(b"after kill -9")
            assert await inbound.receive() == b"after kill -9"


OWNER_SCRIPT = textwrap.dedent("""
    import sys, trio
    from p2pm.common.home import Home
    from p2pm.common.streams import ProtocolSpec, open_streams

    async def main():
        endpoints = Home(__import__("pathlib").Path(sys.argv[1])).endpoints()
        async with open_streams(endpoints, "dht", {sys.argv[2]: ProtocolSpec()}) as c:
            print("ready", flush=True)
            async for s in c.inbound():
                print("stream", flush=True)
    trio.run(main)
""")


async def test_kill9_of_an_owner_resets_its_streams_not_the_connection(nodes) -> None:  # type: ignore[no-untyped-def]
    a, b = nodes(), nodes()
    ida, idb = await a.wait_up(), await b.wait_up()
    owner = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, str(a.home.root), ECHO],
                             stdout=subprocess.PIPE, start_new_session=True)
    try:
        assert owner.stdout is not None
        with trio.fail_after(DEADLINE):
            line = await trio.to_thread.run_sync(owner.stdout.readline)
        assert line.strip() == b"ready"
        async with open_streams(b.endpoints, "remote") as remote:
            s = await remote.open_stream(ECHO, addrs=[ida["addrs"][0]])
            line = await trio.to_thread.run_sync(owner.stdout.readline)
            assert line.strip() == b"stream"
            os.killpg(owner.pid, signal.SIGKILL)
            # The transport notices the silent owner and resets its stream...
            with trio.fail_after(DEADLINE), pytest.raises(StreamReset):
                await s.receive()
            # ...while the connection between the nodes stays up.
            assert await connected(b, ida["peer_id"])
            assert await connected(a, idb["peer_id"])
    finally:
        if owner.poll() is None:
            os.killpg(owner.pid, signal.SIGKILL)
        owner.wait(10)
        if owner.stdout is not None:
            owner.stdout.close()


def p2pm(node: ProcNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "p2pm.common.cli", "--home",
                           str(node.home.root), *args], capture_output=True, text=True,
                          timeout=60, stdin=subprocess.DEVNULL)


def mangled(peer_id: str) -> str:
    """The peer ID with its last character changed (never to itself: an ID already
    ending in the replacement would name the very peer, who is connected)."""
    return peer_id[:-1] + ("y" if peer_id.endswith("x") else "x")


async def test_cli_peers_dial_ping_and_their_errors(nodes) -> None:  # type: ignore[no-untyped-def]
    import orjson

    a, b = nodes(), nodes()
    await a.wait_up()
    idb = await b.wait_up()
    run = lambda *args: trio.to_thread.run_sync(lambda: p2pm(a, *args))  # noqa: E731
    assert orjson.loads((await run("peers", "--json")).stdout) == []
    dialled = await run("dial", idb["addrs"][0])
    assert dialled.returncode == 0 and idb["peer_id"] in dialled.stdout
    listed = orjson.loads((await run("peers", "--json")).stdout)
    assert [p["peer_id"] for p in listed] == [idb["peer_id"]]
    assert listed[0]["addrs"] and listed[0]["direction"] == "outbound"
    pong = await run("ping", idb["peer_id"], "--json")
    assert pong.returncode == 0
    assert orjson.loads(pong.stdout)["peer_id"] == idb["peer_id"]
    assert orjson.loads(pong.stdout)["rtt_ms"] > 0
    human = await run("ping", idb["peer_id"], "-c", "2")
    assert human.returncode == 0 and "rtt" in human.stdout
    # Bad input: exit 2 and one clear line. Unreachable: exit 1 and one line.
    for args, code, words in (
            (("dial", "not-a-multiaddr"), 2, "not a multiaddr"),
            (("ping", "nonsense"), 2, "not a peer id"),
            (("dial", "/ip4/127.0.0.1/tcp/1/p2p/" + mangled(idb["peer_id"])), None, ""),
            (("dial", "/ip4/127.0.0.1/tcp/1/p2p/12D3KooWGb2JGNZGzuRLvkLsWRFAGbRXpyyiPz1Hb1d7"
                      "KSMzXzEY"), 1, "cannot reach")):
        proc = await run(*args)
        assert proc.returncode != 0 and len(proc.stderr.strip().splitlines()) == 1, proc
        if code is not None:
            assert proc.returncode == code and words in proc.stderr, proc


@pytest.mark.parametrize("dialler", ["survivor", "killed"])
async def test_kill9_of_a_peer_transport_is_noticed_within_seconds(nodes, dialler) -> None:  # type: ignore[no-untyped-def]
    """The surviving transport announces the peer disconnected and resets the streams
    to it promptly, so an owner's frames do not vanish into a dead connection."""
    import orjson

    a, b = nodes(), nodes()
    ida, idb = await a.wait_up(), await b.wait_up()
    if dialler == "killed":
        await b.call("dial", {"addr": ida["addrs"][0]})
    sub = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"transport.peer.disconnected")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect(a.endpoints.events("transport"))
    try:
        async with open_streams(b.endpoints, "remote", {ECHO: ProtocolSpec()}), \
                open_streams(a.endpoints, "local") as local:
            s = await local.open_stream(ECHO, addrs=[idb["addrs"][0]])
            await s.send(b"hello")
            assert await connected(a, idb["peer_id"])
            b.kill9("transport")
            killed_at = trio.current_time()
            with trio.fail_after(DEADLINE), pytest.raises(StreamReset):
                while True:  # frames sent meanwhile must not vanish silently
                    await s.send(b"more")
                    with trio.move_on_after(0.1):
                        await s.receive()
            reset_after = trio.current_time() - killed_at
            await await_for(lambda: _not(connected(a, idb["peer_id"])), "a to drop b", DEADLINE)
            gone_after = trio.current_time() - killed_at
            topic, payload = await trio.to_thread.run_sync(sub.recv_multipart)
            assert topic == b"transport.peer.disconnected"
            assert orjson.loads(payload)["data"]["peer_id"] == idb["peer_id"]
            assert reset_after < 3.0 and gone_after < 3.0, (reset_after, gone_after)
    finally:
        sub.close(0)


async def _not(value: Any) -> bool:
    return not await value


async def test_a_peer_that_stops_answering_is_dropped_by_keepalive(nodes) -> None:  # type: ignore[no-untyped-def]
    """A peer whose process hangs (SIGSTOP: its kernel still ACKs, like a host whose
    network went silent) is noticed by the keepalive ping: its connection is closed
    and the streams to it are reset."""
    a = nodes("keepalive_interval_s = 0.5\nkeepalive_timeout_s = 1.0\n")
    b = nodes()
    await a.wait_up()
    idb = await b.wait_up()
    async with open_streams(b.endpoints, "remote", {ECHO: ProtocolSpec()}), \
            open_streams(a.endpoints, "local") as local:
        s = await local.open_stream(ECHO, addrs=[idb["addrs"][0]])
        await s.send(b"hello")
        os.killpg(b.procs["transport"].pid, signal.SIGSTOP)
        stopped_at = trio.current_time()
        with trio.fail_after(DEADLINE), pytest.raises(StreamReset):
            await s.receive()
        await await_for(lambda: _not(connected(a, idb["peer_id"])), "a to drop b", DEADLINE)
        # interval + timeout + closing: well under the 15 s of TCP's own retries
        assert trio.current_time() - stopped_at < 5.0
