"""`p2pm attach` driven through prompt_toolkit's pipe input: typing a line sends it,
an incoming message appears with the sender's name, delivery marks update, and the
screen survives its node going away and coming back. The node's gossip and dht are
the spec'd fakes of tests/helpers/gateway_fakes.py; everything else is real."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prompt_toolkit.application import create_app_session
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from p2pm.common.cli.attach import AttachModel, run_attach
from p2pm.common.cli.chat import gateway
from tests.helpers.gateway_fakes import FakeNetwork, FakeNode


async def until(condition: Callable[[], Any], what: str, timeout: float = 30.0) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.05)


async def call(node: Any, method: str, params: dict[str, Any] | None = None) -> Any:
    return await asyncio.to_thread(gateway, node.home, method, params)


@pytest.fixture
def pair() -> Iterator[tuple[FakeNode, FakeNode]]:
    with FakeNetwork().run("alice", "bob") as (alice, bob):
        for me, other, name in ((alice, bob, "bob"), (bob, alice, "alice")):
            inv = gateway(other.home, "invite", {"name": name})["invite"]
            gateway(me.home, "contact_add", {"name": name, "invite": inv})
        yield alice, bob


@asynccontextmanager
async def attached(node: Any) -> AsyncIterator[tuple[AttachModel, Any]]:
    """`p2pm attach` on `node`, fed by a pipe; the chat with bob open."""
    with create_pipe_input() as keys, create_app_session(input=keys, output=DummyOutput()):
        model = AttachModel(node.home)
        app = asyncio.create_task(run_attach(model))
        try:
            await until(lambda: model.connected, "the gateway's heartbeat")
            keys.send_text("/open bob\r")
            await until(lambda: model.current is not None, "the chat with bob to open")
            yield model, keys
            keys.send_text("/quit\r")
            await asyncio.wait_for(app, 5)
        finally:
            app.cancel()


def lines_with(model: AttachModel, text: str) -> list[str]:
    return [line for line in model.message_lines() if text in line]


def test_typing_sends_and_incoming_messages_appear(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair

    async def drive() -> None:
        async with attached(alice) as (model, keys):
            assert "[connected]" in model.status_line()
            keys.send_text("hello from the terminal\r")

            async def bob_got_it() -> bool:
                history = await call(bob, "history", {"conversation": "alice"})
                return any(m["body"] == "hello from the terminal" for m in history)

            for _ in range(100):
                if await bob_got_it():
                    break
                await asyncio.sleep(0.05)
            assert await bob_got_it()
            # The delivery receipt turns the mark into a double tick.
            await until(lambda: any(line.endswith("✓✓") for line in
                                    lines_with(model, "hello from the terminal")),
                        "the delivered mark")
            await call(bob, "send", {"contact": "alice", "text": "hi from bob"})
            (line,) = await until(lambda: lines_with(model, "hi from bob"),
                                  "bob's message on alice's screen")
            assert "bob: hi from bob" in line
            keys.send_text("/nonsense\r")
            await until(lambda: "unknown command" in model.notice, "the error notice")

    asyncio.run(drive())


def test_screen_survives_its_node_restarting(pair: tuple[FakeNode, FakeNode]) -> None:
    alice, bob = pair

    async def drive() -> None:
        async with attached(alice) as (model, keys):
            await asyncio.to_thread(alice.stop)
            await until(lambda: not model.connected, "the screen to notice", 8)
            assert "reconnecting" in model.status_line()
            await asyncio.to_thread(alice.start)
            await until(lambda: model.connected, "the screen to reconnect", 15)
            keys.send_text("still here\r")
            await until(lambda: lines_with(model, "still here"), "the message after restart")

    asyncio.run(drive())


def test_attach_on_real_nodes(node_factory: Any) -> None:
    """The same through real processes: gossip over libp2p between two nodes."""
    alice, bob = node_factory.many(2, listen=["/ip4/127.0.0.1/tcp/0"])
    for me, other, name in ((alice, bob, "bob"), (bob, alice, "alice")):
        inv = gateway(other.home, "invite", {"name": name})["invite"]
        gateway(me.home, "contact_add", {"name": name, "invite": inv})
    gateway(bob.home, "open", {"conversation": "alice"})

    async def drive() -> None:
        async with attached(alice) as (model, keys):
            keys.send_text("typed on a real node\r")
            await until(lambda: any(line.endswith("✓✓") for line in
                                    lines_with(model, "typed on a real node")),
                        "bob's receipt", 30)
            history = await call(bob, "history", {"conversation": "alice"})
            assert [m["body"] for m in history] == ["typed on a real node"]
            await call(bob, "send", {"contact": "alice", "text": "answer from bob"})
            await until(lambda: lines_with(model, "answer from bob"), "bob's answer", 30)
            # Alice's gossip crashes; supervisord restarts it and the screen carries on.
            os.kill(alice.pids()["gossip"], signal.SIGKILL)
            keys.send_text("after a gossip crash\r")
            await until(lambda: any(line.endswith("✓✓") for line in
                                    lines_with(model, "after a gossip crash")),
                        "the receipt after the restart", 40)

    asyncio.run(drive())
