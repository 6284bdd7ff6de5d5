"""The gateway actor: the local user API, and the only door for local clients.

Every command a person gives (the `p2pm` chat commands, `p2pm attach`, a script) is a
gateway RPC, and every live change they see is a gateway event. The gateway holds no
protocol logic and no state of its own: it validates what the user typed, resolves the
names people use (a contact, a room name) to what the other actors need (peer IDs,
conversation ids), calls them, and shapes the answer. Invites are the one thing it
builds itself, from the keystore's signature and the transport's addresses.

Who may call: anyone who can reach the `run/` folder (mode 0700, checked and tightened
at start), which is the node's owner; for the optional TCP endpoint (`gateway.tcp`)
every request also carries the token in `<home>/gateway.token` (0600, generated on
first use) as `"token"` next to `"method"`. That door listens on loopback only unless
`gateway.tcp_allow_remote = true`, and rate-limits wrong tokens (door.py).

Events (re-published from the actors behind it, for attached clients):
  gateway.message.received {"id", "conversation", "author", "body", "ts"}
  gateway.message.state    {"id", "conversation", "state"}
  gateway.peer.connected / gateway.peer.disconnected {"peer_id"}
  gateway.request.received {"peer_id", "name", "conversation", "messages"}: a message
      request from someone who is not a contact (see people.py)
  gateway.request.accepted {"peer_id", "conversation"}
  gateway.resync {"source", "reason"}: an actor restarted or events were lost; clients
      re-read what they show.
"""

from __future__ import annotations

import hmac
import os
import secrets
import stat
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import trio
import zmq

from p2pm.common import errors, identity, validate, wire
from p2pm.common import invite as invites
from p2pm.common.actor import Actor, on_event, rpc
from p2pm.common.clients import DhtClient, KeystoreClient, StorageClient, TransportClient
from p2pm.common.config import settings_of
from p2pm.common.zmqtrio import AsyncSocket

from .people import People
from . import door
from .door import DoorGuard, check_bind

# Bodies are text typed by a person; a bus frame could carry far more, a chat should not.
MAX_TEXT_BYTES = validate.MAX_TEXT_BYTES
MAX_INBOX_MESSAGES = 20  # per conversation
# inbox reads a conversation's history backwards in pages this much longer than what
# it shows (our own replies come in between), for at most INBOX_PAGES pages: reading
# up to 1,000 messages of every unread conversation took 19 s with 200,000 stored.
INBOX_SLACK = 10
INBOX_PAGES = 20
INBOX_CONCURRENCY = 4  # conversations read at once
MAX_ROOM_INVITE_CHARS = 16 * 1024
TOKEN_FILE = "gateway.token"
TCP_MAX_CONCURRENT = 64
NAME_KEY = "gateway.name"
# Calls to the actors behind the gateway: one that is restarting (about a second under
# supervisord) is retried; one that stays silent is reported, not waited for forever.
DOWNSTREAM_TIMEOUT = 2.0
DOWNSTREAM_RETRIES = 3
# The transport gives a dial 10 s; a first direct message may need one.
DIAL_TIMEOUT = 12.0
STARTING_WAIT_S = 5.0  # how long a command waits for gossip to finish loading


@dataclass(frozen=True, slots=True)
class Invite:
    invite: str
    peer_id: str
    name: str
    addrs: list[str]
    expires: float


@dataclass(frozen=True, slots=True)
class Contact:
    name: str
    peer_id: str
    addrs: list[str]
    verified: bool
    created: bool


@dataclass(frozen=True, slots=True)
class SafetyNumber:
    name: str
    peer_id: str
    safety_number: str
    verified: bool


@dataclass(frozen=True, slots=True)
class Posted:
    id: str
    state: str
    conversation: str


def check_text(text: str) -> str:
    """A message body as typed, line ends normalised (the rule of common/validate)."""
    try:
        return validate.message_text(text)
    except validate.Invalid as exc:
        raise errors.bad_params(str(exc)) from None


def _check_ttl(ttl_s: float) -> float:
    try:
        return invites.check_ttl(ttl_s)
    except invites.InviteError as exc:
        raise errors.bad_params(f"ttl_s: {exc}") from None


def _named(messages: list[dict[str, Any]], names: dict[str, str]) -> list[dict[str, Any]]:
    """Each message with its "author_name" from `names` (Gateway._author_names), or ""
    for someone who has shown none."""
    return [{**m, "author_name": names.get(m.get("author"), "")} for m in messages]


def _check_ref(ref: str, what: str) -> str:
    try:
        return validate.check_ref(ref, what)
    except validate.Invalid as exc:
        raise errors.bad_params(str(exc)) from None


class Gateway(People, Actor):
    name = "gateway"
    downstream_timeout = DOWNSTREAM_TIMEOUT
    downstream_retries = DOWNSTREAM_RETRIES
    # Through _call, so an actor that does not answer reads as "unavailable".
    keystore = KeystoreClient.dependency(via="_call")
    storage = StorageClient.dependency(via="_call")
    transport = TransportClient.dependency(via="_call")
    dht = DhtClient.dependency(via="_call")

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        gateway = settings_of(self.config).gateway  # checked in settings.py
        self.tcp = gateway.tcp
        self.tcp_allow_remote = gateway.tcp_allow_remote
        self.invite_ttl_s = gateway.invite_ttl_s
        self.tcp_bound: str | None = None
        self.door = DoorGuard()
        self._token: bytes | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def setup(self) -> None:
        if self.home is not None:
            _guard_run_dir(self.home.run)
            self.log.info("gateway.local_clients", run_dir=str(self.home.run), mode="0700")
        if self.tcp:
            check_bind(self.tcp, self.tcp_allow_remote)
            if self.home is None:
                raise ValueError("gateway.tcp needs a home for its token")
            self._token = load_or_create_token(self.home.root / TOKEN_FILE)

    async def run(self) -> None:
        if self.tcp:
            await self._serve_tcp()

    def status(self) -> dict[str, Any]:
        return {"tcp": self.tcp_bound, **self.door.status()}

    async def resync(self, source: str, reason: str) -> None:
        self.publish("gateway.resync", {"source": source, "reason": reason})

    # -- the TCP door ------------------------------------------------------------------
    async def _serve_tcp(self) -> None:
        assert self.runtime is not None and self._token is not None
        sock = self.runtime.ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        # Anyone on the network may connect before showing a token: ZMQ drops a
        # connection that sends an oversized message instead of buffering it.
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MAX_FRAME)
        sock.bind(self.tcp)
        self.tcp_bound = sock.getsockopt(zmq.LAST_ENDPOINT).decode()
        self.log.info("gateway.tcp", endpoint=self.tcp_bound)
        asock = AsyncSocket(sock)
        # Beyond this many requests in progress we stop reading: ZMQ pushes back.
        limiter = trio.Semaphore(TCP_MAX_CONCURRENT)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._summarise_refusals)
                while True:
                    frames = await asock.recv_multipart(copy=False)
                    await limiter.acquire()
                    nursery.start_soon(self._tcp_request, asock, frames, limiter)
        finally:
            asock.close(linger_ms=0)

    async def _summarise_refusals(self) -> None:
        while True:
            await trio.sleep(1.0)
            line = self.door.summary(trio.current_time())
            if line is not None:
                self.log.warning("gateway.tcp_refused_summary", refused=line.refused,
                                 limited=line.limited, other_sources=line.other_sources,
                                 sources=" ".join(f"{s}={n}" for s, n in line.sources))

    async def _tcp_request(self, sock: AsyncSocket, frames: list[Any],
                           limiter: trio.Semaphore) -> None:
        try:
            await self._tcp_answer(sock, frames)
        finally:
            limiter.release()

    async def _tcp_answer(self, sock: AsyncSocket, zframes: list[Any]) -> None:
        assert self.runtime is not None and self._token is not None
        if len(zframes) < 2:
            return
        source = _peer_address(zframes[-1])
        frames = [f.bytes for f in zframes]
        envelope, body = frames[:-1], frames[-1]
        now = trio.current_time()
        if not self.door.admits(source, now):
            await sock.send_multipart([*envelope, wire.encode_error(None, errors.BusError(
                errors.LIMIT, "too many wrong tokens from this address; try again in "
                              "a few seconds"))])
            return
        try:
            req = wire.decode_request(body)
            token = wire.loads(body).get("token")
        except errors.BusError as exc:
            self.door.failed(source, now)  # no token either: a flood of it costs the same
            await sock.send_multipart([*envelope, wire.encode_error(None, exc)])
            return
        if not isinstance(token, str) or not hmac.compare_digest(
                token.encode(), self._token):
            if self.door.failed(source, now):
                self.log.warning("gateway.tcp_refused", reason="bad token", source=source,
                                 note=f"further refusals are summarised every "
                                      f"{door.SUMMARY_S:g}s")
            await sock.send_multipart([*envelope, wire.encode_error(req.id, errors.forbidden(
                f"a valid token is required on the TCP endpoint (see {TOKEN_FILE})"))])
            return
        await sock.send_multipart([*envelope, await self.runtime.dispatch(req)])

    # -- calling the actors behind -----------------------------------------------------
    async def _call(self, actor: str, method: str, params: dict[str, Any] | None = None,
                    timeout: float | None = None) -> Any:
        deadline = trio.current_time() + STARTING_WAIT_S
        while True:
            try:
                return await self.call(actor, method, params,
                                       timeout=timeout or self.downstream_timeout,
                                       retries=self.downstream_retries)
            except errors.BusError as exc:
                # Gossip answers UNAVAILABLE only while it loads its state after a
                # (re)start; a command waits that out, as for an actor restarting.
                if exc.code != errors.UNAVAILABLE or actor != "gossip" or \
                        trio.current_time() > deadline:
                    self._downstream_failed(actor, method, exc)
                await trio.sleep(0.2)

    @staticmethod
    def _downstream_failed(actor: str, method: str, exc: errors.BusError) -> NoReturn:
        if exc.code == errors.TIMEOUT:
            raise errors.unavailable(
                f"the {actor} actor is not answering (down or restarting)") from None
        if exc.code == errors.UNKNOWN_METHOD:
            raise errors.unavailable(
                f"the {actor} actor does not offer {method} (not built yet?)") from None
        raise exc

    async def _peer_id(self) -> str:
        return (await self.keystore.identity()).peer_id

    async def _display_name(self) -> str:
        value = await self.storage.kv_get(NAME_KEY)
        return value.decode("utf-8", "replace") if value else ""

    async def _contact(self, name: str) -> dict[str, Any]:
        _check_ref(name, "a contact name")
        contact = await self.storage.contact_get(name=name)
        if contact is None:
            raise errors.not_found(f"no contact named {name!r} (see p2pm contacts list)")
        return contact

    async def _conversations(self, unread: bool = False) -> list[dict[str, Any]]:
        """Gossip's list; the unread counts only when asked (every command naming a
        conversation lists them, and counting is a storage call)."""
        got = await self._call("gossip", "conversation_list", {"unread": unread})
        return list(got) if isinstance(got, list) else []

    async def resolve(self, ref: str) -> dict[str, Any]:
        """A conversation named by its id, its name (room or direct chat) or a contact's
        name (whose direct chat is opened if needed)."""
        _check_ref(ref, "a conversation")
        convs = await self._conversations()
        for c in convs:
            if c.get("id") == ref:
                return c
        named = [c for c in convs if c.get("name") == ref]
        if len(named) == 1:
            return named[0]
        if len(named) > 1:
            ids = ", ".join(str(c.get("id")) for c in named)
            raise errors.bad_params(f"{ref!r} names several conversations ({ids}); use an id")
        contact = await self.storage.contact_get(name=ref)
        if contact is None:
            raise errors.not_found(f"no conversation, room or contact named {ref!r}")
        return await self._open_direct(contact)

    async def _open_direct(self, contact: dict[str, Any]) -> dict[str, Any]:
        if contact["peer_id"] in await self._blocked():
            raise errors.forbidden(f"{contact['name']} is blocked (p2pm contacts unblock "
                                   f"{contact['name']})")
        return await self._call("gossip", "direct_open", {
            "peer_id": contact["peer_id"], "addrs": list(contact.get("addrs") or []),
            "name": contact["name"]}, timeout=DIAL_TIMEOUT)

    # -- identity and invites ----------------------------------------------------------
    @rpc
    async def node_info(self) -> dict[str, Any]:
        """{} -> {"peer_id", "name", "addrs"}: who this node is, as invites show it."""
        peer_id = await self._peer_id()
        addrs = list((await self.transport.addrs()).addrs)
        return {"peer_id": peer_id, "name": await self._display_name(), "addrs": addrs}

    @rpc
    async def invite(self, name: str | None = None, ttl_s: float | None = None) -> Invite:
        """{"name"?, "ttl_s"?} -> {"invite", "peer_id", "name", "addrs", "expires"}

        A node invite signed by the keystore (`p2pm-invite:`) with the current
        addresses. A given name is remembered for later invites; without one, the
        remembered name, else the short peer ID. It expires `ttl_s` from now
        (`gateway.invite_ttl_s` unless given; 1 hour to 365 days).
        """
        if name is not None:
            try:
                invites.check_name(name)
            except invites.InviteError as exc:
                raise errors.bad_params(str(exc)) from None
        ttl_s = _check_ttl(self.invite_ttl_s if ttl_s is None else ttl_s)
        peer_id = await self._peer_id()
        addrs = list((await self.transport.addrs()).addrs)
        if name is not None:
            await self.storage.kv_put(NAME_KEY, name.encode())
        shown = name or await self._display_name() or peer_id[-8:]
        inv = invites.NodeInvite.issue(peer_id, shown, tuple(addrs[:invites.MAX_ADDRS]),
                                       time.time(), ttl_s)
        signature = await self.keystore.sign(invites.DOMAIN, inv.payload())
        text = invites.encode(inv, signature)
        return Invite(text, peer_id, shown, list(inv.addrs), inv.exp)

    # -- contacts ----------------------------------------------------------------------
    @rpc
    async def contact_add(self, name: str, invite: str) -> Contact:
        """{"name", "invite"} -> {"name", "peer_id", "addrs", "verified", "created"}

        `invite` is a node invite (verified here; a tampered one is refused) or a
        bare peer ID, whose addresses are then looked up in the DHT.
        """
        try:
            invites.check_name(name)
        except invites.InviteError as exc:
            raise errors.bad_params(str(exc)) from None
        text = invite.strip()
        if invites.looks_like_invite(text):
            try:
                inv = invites.decode(text, now=time.time())
            except invites.InviteExpired as exc:
                raise errors.forbidden(str(exc)) from None  # nothing is added
            except invites.InviteError as exc:
                # Refused, not bad input: an invite that does not verify was
                # tampered with, forged or garbled (exit 1 in the CLI).
                raise errors.forbidden(f"invalid invite: {exc}") from None
            peer_id, addrs = inv.peer_id, list(inv.addrs)
        else:
            try:
                identity.public_key_from_peer_id(text)
            except identity.IdentityError:
                raise errors.bad_params(
                    "not an invite (p2pm-node:...) nor a peer ID (12D3KooW...)") from None
            peer_id = text
            found = await self.dht.with_options(timeout=DIAL_TIMEOUT).find_peer(peer_id)
            addrs = list(found.get("addrs") or [])
        if peer_id == await self._peer_id():
            raise errors.bad_params("that invite is this node's own")
        existing = await self.storage.contact_get(name=name)
        if existing is not None and existing["peer_id"] != peer_id:
            raise errors.BusError(errors.CONFLICT,
                                  f"{name!r} is already the contact {existing['peer_id']}")
        if existing is None:
            known = await self.storage.contact_get(peer_id=peer_id)
            if known is not None:
                raise errors.BusError(errors.CONFLICT,
                                      f"that peer is already your contact {known['name']!r}")
        got = await self.storage.contact_add(name, peer_id, addrs)
        self.log.info("gateway.contact_added", name=name, peer_id=peer_id)
        if any(r["peer_id"] == peer_id for r in await self._call("gossip", "request_list")):
            await self._open_direct({"name": name, "peer_id": peer_id, "addrs": addrs})
        return Contact(name, peer_id, addrs, False, bool(got.get("created")))

    @rpc
    async def contact_list(self) -> list[dict[str, Any]]:
        """{} -> [{"name", "peer_id", "addrs", "added_at", "verified", "blocked"}, ...]
        by name."""
        blocked = await self._blocked()
        return [{**c, "blocked": c["peer_id"] in blocked}
                for c in await self.storage.contact_list()]

    @rpc
    async def contact_verify(self, name: str, confirmed: bool = False) -> SafetyNumber:
        """{"name", "confirmed"?} -> {"name", "peer_id", "safety_number", "verified"}:
        60 digits both sides read out to each other; they match only if each has the
        other's real key. `confirmed`: they matched; the contact is marked verified."""
        contact = await self._contact(name)
        number = invites.safety_number(await self._peer_id(), contact["peer_id"])
        verified = bool(contact.get("verified"))
        if confirmed and not verified:
            await self.storage.contact_add(contact["name"], contact["peer_id"],
                                           list(contact.get("addrs") or []), verified=True)
            verified = True
        return SafetyNumber(name, contact["peer_id"], number, verified)

    @rpc
    async def find_peer(self, peer_id: str) -> dict[str, Any]:
        """{"peer_id"} -> {"peer_id", "addrs"} from the DHT."""
        return await self.dht.with_options(timeout=DIAL_TIMEOUT).find_peer(peer_id)

    # -- conversations -----------------------------------------------------------------
    @rpc
    async def send(self, contact: str, text: str) -> Posted:
        """{"contact", "text"} -> {"id", "state", "conversation"}: a direct message."""
        text = check_text(text)
        conv = await self._open_direct(await self._contact(contact))
        return await self._post(conv["id"], text)

    @rpc
    async def post(self, conversation: str, text: str) -> Posted:
        """{"conversation", "text"} -> {"id", "state", "conversation"}; the
        conversation by id, name or contact name."""
        text = check_text(text)
        conv = await self.resolve(conversation)
        return await self._post(conv["id"], text)

    async def _post(self, conversation: str, text: str) -> Posted:
        got = await self._call("gossip", "post", {"conversation": conversation, "text": text},
                               timeout=DIAL_TIMEOUT)
        return Posted(str(got["id"]), str(got["state"]), conversation)

    @rpc
    async def room_create(self, name: str) -> dict[str, Any]:
        """{"name"} -> {"id", "name", "kind": "room", "invite"}"""
        try:
            invites.check_name(name)
        except invites.InviteError as exc:
            raise errors.bad_params(f"room {exc}") from None
        return await self._call("gossip", "room_create", {"name": name})

    @rpc
    async def room_invite(self, conversation: str,
                          ttl_s: float | None = None) -> dict[str, Any]:
        """{"conversation", "ttl_s"?} -> {"invite"} for a room, by id or name; it
        expires `ttl_s` from now (else after gossip.room_invite_ttl_s)."""
        conv = await self.resolve(conversation)
        params: dict[str, Any] = {"conversation": conv["id"]}
        if ttl_s is not None:
            params["ttl_s"] = _check_ttl(ttl_s)
        return await self._call("gossip", "room_invite", params)

    @rpc
    async def room_join(self, invite: str) -> dict[str, Any]:
        """{"invite"} -> {"id", "name", "kind": "room"}"""
        text = invite.strip()
        if not text or len(text) > MAX_ROOM_INVITE_CHARS:
            raise errors.bad_params("the room invite is empty or too long")
        if invites.looks_like_invite(text):
            raise errors.bad_params("that is a node invite: use p2pm contacts add")
        return await self._call("gossip", "room_join", {"invite": text},
                                timeout=DIAL_TIMEOUT)

    @rpc
    async def conversations(self) -> list[dict[str, Any]]:
        """{} -> [{"id", "name", "kind", "members", "unread", "last_ts"}, ...]"""
        return await self._conversations(unread=True)

    @rpc(name="open")
    async def open_conversation(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"id", "name", "kind"}; a contact's name opens (or
        creates) the direct chat with them."""
        conv = await self.resolve(conversation)
        return {"id": conv["id"], "name": conv.get("name", ""), "kind": conv.get("kind")}

    @rpc
    async def leave(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"id", "left": true}"""
        conv = await self.resolve(conversation)
        await self._call("gossip", "conversation_leave", {"conversation": conv["id"]})
        return {"id": conv["id"], "left": True}

    @rpc
    async def room_leave(self, room: str) -> dict[str, Any]:
        """{"room"} -> {"id", "name", "left": true}: we stop receiving and posting in
        it and it leaves every list; its history stays stored, and joining again from
        an invite brings it back. The other members see only GossipSub's unsubscribe
        (the protocol has no leave message yet), so they still count us as members."""
        conv = await self.resolve(room)
        if conv.get("kind") != "room":
            raise errors.bad_params(f"{room!r} is a direct chat, not a room")
        await self._call("gossip", "conversation_leave", {"conversation": conv["id"]})
        return {"id": conv["id"], "name": conv.get("name", ""), "left": True}

    @rpc
    async def history(self, conversation: str, limit: int = 50,
                      before: str | None = None) -> list[dict[str, Any]]:
        """{"conversation", "limit"?, "before"?} -> [{"id", "author", "author_name",
        "body", "ts", "state", "seq"}, ...] oldest first."""
        if not 1 <= limit <= 1000:
            raise errors.bad_params("limit must be between 1 and 1000")
        conv = await self.resolve(conversation)
        params: dict[str, Any] = {"conversation": conv["id"], "limit": limit}
        if before is not None:
            params["before"] = before
        return _named(list(await self._call("gossip", "history", params)),
                      await self._author_names())

    async def _author_names(self) -> dict[str, str]:
        """peer ID -> the "author_name" messages show: "me", a contact's name, "~"
        and the name from their signed profile for someone else."""
        names = await self._named_by()
        names[await self._peer_id()] = "me"
        return names

    @rpc
    async def mark_read(self, conversation: str) -> dict[str, Any]:
        """{"conversation"} -> {"id"}: everything in it so far counts as read, so
        `inbox` no longer lists it. `history` does not mark read (scripts peek with
        it); `p2pm read` and opening the conversation in `p2pm attach` do."""
        conv = await self.resolve(conversation)
        await self._call("gossip", "mark_read", {"conversation": conv["id"]})
        return {"id": conv["id"]}

    @rpc
    async def inbox(self) -> list[dict[str, Any]]:
        """{} -> [{"id", "name", "kind", "unread", "messages": [...]}, ...]: every
        conversation with unread messages, with the latest of them (at most 20), then
        every message request as kind "request" ("id" the one `request_accept` takes,
        "peer_id", "name" from the sender's profile)."""
        unread = [c for c in await self._conversations(unread=True)
                  if int(c.get("unread") or 0) > 0]
        names = await self._author_names() if unread else {}  # once, for all of them
        pages: dict[str, list[dict[str, Any]]] = {}
        failed: list[errors.BusError] = []
        limiter = trio.CapacityLimiter(INBOX_CONCURRENCY)

        async def read(conv: dict[str, Any]) -> None:
            async with limiter:
                try:
                    pages[conv["id"]] = await self._latest_received(
                        conv["id"], min(int(conv["unread"]), MAX_INBOX_MESSAGES))
                except errors.BusError as exc:
                    if exc.code != errors.NOT_FOUND:  # not one left meanwhile
                        failed.append(exc)

        # A few at a time: gossip opens one page while storage reads the next.
        async with trio.open_nursery() as nursery:
            for conv in unread:
                nursery.start_soon(read, conv)
        if failed:
            raise failed[0]
        out = [{"id": c["id"], "name": c.get("name", ""), "kind": c.get("kind"),
                "unread": int(c["unread"]), "messages": _named(pages[c["id"]], names)}
               for c in unread if c["id"] in pages]
        for req in await self.requests():
            out.append({"id": req["id"], "peer_id": req["peer_id"], "name": req["name"],
                        "kind": "request", "unread": len(req["messages"]),
                        "messages": req["messages"][-MAX_INBOX_MESSAGES:]})
        return out

    async def _latest_received(self, conversation: str, want: int) -> list[dict[str, Any]]:
        """The latest `want` messages others wrote (the unread ones are the latest
        received, with our own replies in between), oldest first."""
        received: list[dict[str, Any]] = []
        before: str | None = None
        size = want + INBOX_SLACK
        for _ in range(INBOX_PAGES):
            params: dict[str, Any] = {"conversation": conversation, "limit": size}
            if before is not None:
                params["before"] = before
            page = list(await self._call("gossip", "history", params))
            received = [m for m in page if m.get("state") == "received"] + received
            if len(received) >= want or len(page) < size:
                break
            before = page[0]["id"]
        return received[-want:]

    @rpc
    async def message_state(self, id: str) -> dict[str, Any]:
        """{"id"} -> {"id", "state", "members": {peer_id: state}}"""
        return await self._call("gossip", "message_state", {"id": _check_ref(id, "id")})

    @rpc
    async def node_status(self) -> dict[str, Any]:
        """{} -> {"peer_id", "peers", "reachability", "addrs", "actors": {name: bool}}:
        what a status line shows. Never fails: an actor that does not answer is
        reported as down."""
        from p2pm.common.home import ACTORS

        actors: dict[str, bool] = {}
        statuses: dict[str, Any] = {}

        async def one(name: str) -> None:
            try:
                st = await self.call(name, "sys.status", timeout=0.5, retries=0)
                statuses[name] = st
                actors[name] = bool(st.get("healthy"))
            except errors.BusError:
                actors[name] = False

        async with trio.open_nursery() as nursery:
            for name in ACTORS:
                if name != self.name:
                    nursery.start_soon(one, name)
        actors[self.name] = True
        transport = statuses.get("transport") or {}
        return {"peer_id": (statuses.get("keystore") or {}).get("peer_id"),
                "peers": transport.get("peers", 0),
                "reachability": transport.get("reachability", "unknown"),
                "addrs": transport.get("addrs", []), "actors": actors}

    # -- live events -------------------------------------------------------------------
    @on_event("gossip.message")
    async def _message_event(self, topic: str, data: Any) -> None:
        if not isinstance(data, dict):
            return
        kind = topic.rsplit(".", 1)[-1]
        if kind in ("received", "state"):
            self.publish(f"gateway.message.{kind}", data)

    @on_event("gossip.request")
    async def _request_event(self, topic: str, data: Any) -> None:
        kind = topic.rsplit(".", 1)[-1]
        if kind in ("received", "accepted") and isinstance(data, dict):
            self.publish(f"gateway.request.{kind}", data)

    @on_event("transport.peer")
    async def _peer_event(self, topic: str, data: Any) -> None:
        kind = topic.rsplit(".", 1)[-1]
        if kind in ("connected", "disconnected") and isinstance(data, dict):
            self.publish(f"gateway.peer.{kind}", {"peer_id": data.get("peer_id")})


def _guard_run_dir(run: Any) -> None:
    """Local clients are let in by the file system: only the owner may enter `run/`."""
    run.mkdir(parents=True, exist_ok=True, mode=0o700)
    st = run.stat()
    if st.st_uid != os.getuid():
        raise PermissionError(f"{run} belongs to uid {st.st_uid}, not to this user")
    if stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(run, 0o700)


def _peer_address(frame: Any) -> str:
    """The remote IP of a TCP message (ZeroMQ's "Peer-Address" property)."""
    try:
        return str(frame.get("Peer-Address"))
    except (zmq.ZMQError, AttributeError):
        return "unknown"


def load_or_create_token(path: Any) -> bytes:
    """The TCP token: created 0600 on first use, tightened if someone loosened it."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if stat.S_IMODE(os.stat(path).st_mode) & 0o077:
            os.chmod(path, 0o600)
        token = open(path, "rb").read().strip()
        if len(token) < 32:
            raise ValueError(f"{path} holds no usable token; delete it to make a new one")
        return token
    with os.fdopen(fd, "wb") as f:
        token = secrets.token_urlsafe(32).encode()
        f.write(token + b"\n")
    return token
