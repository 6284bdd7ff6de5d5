"""Testing tools for the gateway and its clients: spec'd fakes of the gossip and dht
actors, and whole nodes (real keystore, storage, transport and gateway; fake gossip and
dht) running in one background thread, reachable on their home's ipc sockets exactly
like a node under supervisord, so the CLI and `p2pm attach` can be driven against them.

    with FakeNetwork().run("alice", "bob") as (alice, bob):
        run_cli(alice.home, "send", "bob", "hi")

The fakes implement the gossip RPC contract the gateway builds on (see
`GOSSIP_CONTRACT`) over an in-memory `FakeNetwork`: a message posted on one node is
received by every member whose node is running, and delivery marks (pending, sent,
delivered) come back as events. A member whose node is stopped gets what it missed when
it starts again, as gossip's history sync promises. Unlike real gossip, the fake
delivers a direct message as if the recipient had added the sender, so it never holds
message requests (those are tested against real nodes); blocking refuses a blocked
peer's messages, as real gossip does.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
import zmq

from p2pm.common import config as configmod
from p2pm.common import errors, identity
from p2pm.common.actor import Actor, ActorRuntime, rpc
from p2pm.common.client import open_client
from p2pm.common.home import Home

from p2pm.services.gateway.actor import Gateway

# The gossip RPCs the gateway calls, with their parameter names, as agreed with the
# gossip actor; the fake implements exactly these (a test checks it against the real one).
GOSSIP_CONTRACT = {
    "room_create": ("name",), "room_invite": ("conversation", "ttl_s"), "room_join": ("invite",),
    "direct_open": ("peer_id", "addrs", "name"), "conversation_leave": ("conversation",),
    "conversation_list": ("unread",), "post": ("conversation", "text"),
    "history": ("conversation", "limit", "before"), "message_state": ("id",),
    "mark_read": ("conversation",),
    "request_list": (), "request_accept": ("peer_id", "name"), "peer_block": ("peer_id",),
    "peer_unblock": ("peer_id",), "blocked_list": (), "profiles": (),
}
ROOM_INVITE_PREFIX = "p2pm-fake-room:"


@dataclass
class _Message:
    id: str
    conversation: str
    author: str
    body: str
    ts: float
    seq: int
    members: dict[str, str] = field(default_factory=dict)  # recipient -> state


@dataclass
class _Conversation:
    id: str
    name: str
    kind: str
    members: list[str]
    messages: list[_Message] = field(default_factory=list)
    read: int = 0  # messages read by this node


class FakeNetwork:
    """What the gossip network would carry between fake nodes in this process."""

    def __init__(self) -> None:
        self.online: dict[str, FakeGossip] = {}
        self.rooms: dict[str, tuple[str, list[str]]] = {}  # id -> (name, members)
        self.missed: dict[str, list[_Message]] = {}  # offline peer -> messages
        self.directory: dict[str, list[str]] = {}  # peer id -> addrs, for the fake dht

    def deliver(self, msg: _Message, sender: "FakeGossip") -> None:
        for peer in list(msg.members):
            node = self.online.get(peer)
            if node is None:
                self.missed.setdefault(peer, []).append(msg)
            elif node._receive(msg):
                msg.members[peer] = "delivered"
        sender._update_state(msg)

    def came_online(self, node: "FakeGossip") -> None:
        self.online[node.peer_id] = node
        for msg in self.missed.pop(node.peer_id, []):
            node._receive(msg)
            msg.members[node.peer_id] = "delivered"
            author = self.online.get(msg.author)
            if author is not None:
                author._update_state(msg)

    @contextmanager
    def run(self, *names: str) -> Iterator[list["FakeNode"]]:
        """Start one node per name in a background thread; stop and remove them all
        on exit."""
        nodes = [FakeNode(name, self) for name in names]
        try:
            for node in nodes:
                node.start()
            yield nodes
        finally:
            for node in nodes:
                node.stop()
                shutil.rmtree(node.home.root, ignore_errors=True)


class FakeGossip(Actor):
    """The gossip actor's RPC contract, in memory."""

    name = "gossip"

    def __init__(self, home: Home | None, config: dict[str, Any] | None,
                 network: FakeNetwork, peer_id: str) -> None:
        super().__init__(home, config)
        self.network = network
        self.peer_id = peer_id
        self.conversations: dict[str, _Conversation] = {}
        self.messages: dict[str, _Message] = {}
        self.blocked: set[str] = set()

    async def run(self) -> None:
        self.network.came_online(self)

    async def teardown(self) -> None:
        if self.network.online.get(self.peer_id) is self:
            del self.network.online[self.peer_id]

    def _conv(self, cid: str) -> _Conversation:
        conv = self.conversations.get(cid)
        if conv is None:
            raise errors.not_found(f"no conversation {cid}")
        return conv

    def _receive(self, msg: _Message) -> bool:
        if msg.author in self.blocked:
            return False
        conv = self.conversations.get(msg.conversation)
        if conv is None:
            if msg.conversation in self.network.rooms:
                return False  # not a member (left)
            conv = _Conversation(msg.conversation, msg.author[-8:], "direct",
                                 sorted({msg.author, self.peer_id}))
            self.conversations[conv.id] = conv
        if msg.id in self.messages:
            return True
        self.messages[msg.id] = msg
        conv.messages.append(msg)
        if self.runtime is not None:
            self.publish("gossip.message.received", {
                "id": msg.id, "conversation": msg.conversation, "author": msg.author,
                "body": msg.body, "ts": msg.ts})
        return True

    def _state(self, msg: _Message) -> str:
        if msg.author != self.peer_id:
            return "received"
        states = set(msg.members.values())
        if not states or states == {"delivered"}:
            return "delivered"
        return "sent" if "sent" in states else "pending"

    def _update_state(self, msg: _Message) -> None:
        if self.runtime is not None:
            self.publish("gossip.message.state", {
                "id": msg.id, "conversation": msg.conversation, "state": self._state(msg)})

    async def _send_later(self, msg: _Message) -> None:
        await trio.sleep(0.05)  # leaves the post's reply ("pending") first
        for peer in msg.members:
            msg.members[peer] = "sent"
        self._update_state(msg)
        self.network.deliver(msg, self)

    @rpc
    async def room_create(self, name: str) -> dict[str, Any]:
        cid = uuid.uuid4().hex[:16]
        self.network.rooms[cid] = (name, [self.peer_id])
        self.conversations[cid] = _Conversation(cid, name, "room", [self.peer_id])
        return {"id": cid, "name": name, "kind": "room",
                "invite": ROOM_INVITE_PREFIX + cid}

    @rpc
    async def room_invite(self, conversation: str,
                          ttl_s: float | None = None) -> dict[str, Any]:
        if self._conv(conversation).kind != "room":
            raise errors.bad_params("not a room")
        return {"invite": ROOM_INVITE_PREFIX + conversation}

    @rpc
    async def room_join(self, invite: str) -> dict[str, Any]:
        cid = invite.removeprefix(ROOM_INVITE_PREFIX)
        if not invite.startswith(ROOM_INVITE_PREFIX) or cid not in self.network.rooms:
            raise errors.bad_params("not a valid room invite")
        name, members = self.network.rooms[cid]
        if self.peer_id not in members:
            members.append(self.peer_id)
        for node in self.network.online.values():
            if cid in node.conversations:
                node.conversations[cid].members = list(members)
        self.conversations[cid] = _Conversation(cid, name, "room", members)
        return {"id": cid, "name": name, "kind": "room"}

    @rpc
    async def direct_open(self, peer_id: str, addrs: list[str] | None = None,
                          name: str | None = None) -> dict[str, Any]:
        try:
            identity.public_key_from_peer_id(peer_id)
        except identity.IdentityError as exc:
            raise errors.bad_params(str(exc)) from None
        members = sorted({peer_id, self.peer_id})
        cid = "d" + uuid.uuid5(uuid.NAMESPACE_OID, ":".join(members)).hex[:15]
        conv = self.conversations.setdefault(
            cid, _Conversation(cid, name or peer_id[-8:], "direct", members))
        if name:
            conv.name = name
        return {"id": cid, "name": conv.name, "kind": "direct"}

    @rpc
    async def conversation_leave(self, conversation: str) -> dict[str, Any]:
        conv = self._conv(conversation)
        del self.conversations[conversation]
        if conv.kind == "room" and conversation in self.network.rooms:
            members = self.network.rooms[conversation][1]
            if self.peer_id in members:
                members.remove(self.peer_id)
        return {"left": True}

    @rpc
    async def conversation_list(self, unread: bool = True) -> list[dict[str, Any]]:
        return [{"id": c.id, "name": c.name, "kind": c.kind, "members": list(c.members),
                 "last_ts": c.messages[-1].ts if c.messages else None,
                 **({"unread": sum(1 for m in c.messages[c.read:] if m.author != self.peer_id)}
                    if unread else {})}
                for c in self.conversations.values()]

    @rpc
    async def post(self, conversation: str, text: str) -> dict[str, Any]:
        conv = self._conv(conversation)
        seq = 1 + sum(1 for m in conv.messages if m.author == self.peer_id)
        msg = _Message(uuid.uuid4().hex, conversation, self.peer_id, text, time.time(), seq,
                       {p: "pending" for p in conv.members if p != self.peer_id})
        self.messages[msg.id] = msg
        conv.messages.append(msg)  # posting marks nothing read, as in gossip
        self.spawn(self._send_later, msg)
        return {"id": msg.id, "state": "pending"}

    @rpc
    async def history(self, conversation: str, limit: int = 50,
                      before: str | None = None) -> list[dict[str, Any]]:
        msgs = self._conv(conversation).messages
        if before is not None:
            ids = [m.id for m in msgs]
            msgs = msgs[:ids.index(before)] if before in ids else msgs
        return [{"id": m.id, "author": m.author, "body": m.body, "ts": m.ts,
                 "state": self._state(m), "seq": m.seq} for m in msgs[-limit:]]

    @rpc
    async def message_state(self, id: str) -> dict[str, Any]:
        msg = self.messages.get(id)
        if msg is None:
            raise errors.not_found(f"no message {id}")
        return {"id": id, "state": self._state(msg), "members": dict(msg.members)}

    @rpc
    async def mark_read(self, conversation: str) -> dict[str, Any]:
        conv = self._conv(conversation)
        conv.read = len(conv.messages)
        return {"read_ts": time.time()}

    @rpc
    async def request_list(self) -> list[dict[str, Any]]:
        return []  # see the module docstring: the fake network holds no requests

    @rpc
    async def request_accept(self, peer_id: str, name: str) -> dict[str, Any]:
        raise errors.not_found(f"no message request from {peer_id}")

    @rpc
    async def peer_block(self, peer_id: str) -> dict[str, Any]:
        new = peer_id not in self.blocked
        self.blocked.add(peer_id)
        for conv in list(self.conversations.values()):
            if conv.kind == "direct" and peer_id in conv.members:
                del self.conversations[conv.id]
        return {"blocked": True, "new": new}

    @rpc
    async def peer_unblock(self, peer_id: str) -> dict[str, Any]:
        was = peer_id in self.blocked
        self.blocked.discard(peer_id)
        return {"blocked": False, "was": was}

    @rpc
    async def blocked_list(self) -> list[str]:
        return sorted(self.blocked)

    @rpc
    async def profiles(self) -> dict[str, str]:
        return {}


class FakeDht(Actor):
    """The dht's find_peer over the network's directory of running fake nodes."""

    name = "dht"

    def __init__(self, home: Home | None, config: dict[str, Any] | None,
                 network: FakeNetwork) -> None:
        super().__init__(home, config)
        self.network = network

    @rpc
    async def find_peer(self, peer_id: str) -> dict[str, Any]:
        addrs = self.network.directory.get(peer_id)
        if not addrs:
            raise errors.not_found(f"{peer_id} was not found in the DHT")
        return {"peer_id": peer_id, "addrs": addrs}


class FakeNode:
    """One node's actors in a background thread, on ipc sockets in a fresh home."""

    def __init__(self, name: str, network: FakeNetwork) -> None:
        self.name = name
        self.network = network
        self.home = Home(Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))).ensure()
        self.peer_id = identity.create_identity(self.home.identity_file, None)
        self.config = configmod.defaults()
        self.config["transport"]["listen"] = ["/ip4/127.0.0.1/tcp/0"]
        self.gossip: FakeGossip | None = None
        self.gateway: Gateway | None = None
        self._thread: threading.Thread | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def start(self, timeout: float = 90.0) -> None:
        # Three real actors (keystore, storage, transport) start in this thread: on a
        # machine running other suites too that took over 30 s, so the budget is wide:
        # it only bounds a node that never starts.
        self._ready.clear()
        self._thread = threading.Thread(target=self._main, name=f"node-{self.name}",
                                        daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout) or self._error is not None:
            self.stop()
            raise RuntimeError(f"fake node {self.name} did not start: {self._error}")

    def stop(self) -> None:
        if self._thread is None:
            return
        if self._token is not None and self._stop is not None:
            try:
                trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
            except trio.RunFinishedError:
                pass
        self._thread.join(15)
        self._thread = None

    def _main(self) -> None:
        try:
            trio.run(self._serve)
        except BaseException as exc:  # reported to start(); the thread just ends
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        from p2pm.services.keystore.actor import Keystore
        from p2pm.services.storage.actor import Storage
        from p2pm.services.transport.actor import Transport

        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        ctx = zmq.Context.instance()
        endpoints = self.home.endpoints()
        cfg = self.config
        previous = self.gossip
        self.gossip = FakeGossip(self.home, cfg, self.network, self.peer_id)
        if previous is not None:  # a restarted node keeps what gossip had stored
            self.gossip.conversations = previous.conversations
            self.gossip.messages = previous.messages
        self.gateway = Gateway(self.home, cfg)
        actors = [Keystore(self.home, cfg), Storage(self.home, cfg), Transport(self.home, cfg),
                  FakeDht(self.home, cfg, self.network), self.gossip, self.gateway]
        async with trio.open_nursery() as nursery:
            for actor in actors:
                await nursery.start(ActorRuntime(actor, endpoints, ctx).serve)
            async with open_client(ctx, endpoints.rpc("transport"), "transport") as client:
                with trio.fail_after(60):
                    while True:
                        try:
                            addrs = (await client.call("addrs", timeout=1))["addrs"]
                            break
                        except errors.BusError:
                            await trio.sleep(0.05)
            self.network.directory[self.peer_id] = addrs
            self._ready.set()
            await self._stop.wait()
            self.network.directory.pop(self.peer_id, None)
            nursery.cancel_scope.cancel()
