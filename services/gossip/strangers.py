"""The gossip actor's dealings with peers who are not (yet) in a conversation with us:
message requests (sent and received), blocked peers, and the signed profiles that give
room members who are not contacts a name.

`Strangers` is a part like the others (context.py): the rules and their bounds live in
the sans-IO requests.py; this is the I/O around them (the request protocol's streams,
storage, events). The shell hands it inbound `/p2pm/request/1.0.0` streams and runs
`ask_round` every second; `StrangerRpcs` is the RPC surface the shell inherits (it only
forwards to the part). Hooks elsewhere: reach.py never dials a blocked peer
(`Reach.blocked` is this part's set), `Conversations.open_direct` calls `absorb` so a
pending request is settled when its chat opens, and history and message_state show
our messages' request answers through `Asking.shown`. State in storage, as kv values:
  gossip.request.<peer>      one pending request (requests.Pending.doc)
  gossip.requests            the peers with a pending request
  gossip.blocked             the blocked peers
  gossip.requested.<conv>    our messages the peer answered for: id -> requested|refused
  gossip.profiles            peer -> name, from verified signed profiles

RPCs: request_list, request_accept, peer_block, peer_unblock, blocked_list, profiles.
Events: gossip.request.received {"peer_id", "name", "conversation", "messages"},
        gossip.request.accepted {"peer_id", "conversation"}.
"""

from __future__ import annotations

import hmac
import time
from typing import Any

import orjson
import trio

from p2pm.common import errors, wire
from p2pm.common import invite as invites
from p2pm.common.actor import every, rpc
from p2pm.common.streams import StreamError

from . import conversations as cv
from . import requests as rq
from .context import Context, peer_bytes
from .delivery import Delivery
from .links import Links
from .reach import Reach
from .receive import Receive
from .state import Conversation, Conversations, Registry

NAME_KEY = "gateway.name"  # the name the user gave `p2pm invite --name`
PROFILE_CACHE_S = 600.0
ASK_TIMEOUT_S = 30.0
STREAM_ERRORS = (StreamError, rq.RequestError, trio.TooSlowError, trio.EndOfChannel,
                 trio.ClosedResourceError)


def _json(raw: bytes | None, default: Any) -> Any:
    if raw is None:
        return default
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return default


class Strangers:
    def __init__(self, ctx: Context, registry: Registry, conversations: Conversations,
                 receive: Receive, delivery: Delivery, links: Links, reach: Reach) -> None:
        self.ctx = ctx
        self.registry = registry
        self.conversations = conversations
        self.receive = receive
        self.delivery = delivery
        self.links = links
        self.reach = reach
        self.box = rq.RequestBox()
        self.asking = rq.Asking()
        self.profile_names: dict[str, str] = {}  # bounded: rq.MAX_PROFILES, oldest out
        self._profile_asked: dict[str, float] = {}  # bounded: rq.MAX_TRACKED, oldest out
        self._my_profile: tuple[float, str] = (-1e9, "")
        # The hooks in the other parts read this part's state (one set, never copied).
        reach.blocked = self.box.blocked
        conversations.absorb = self.absorb
        conversations.shown = delivery.shown = self.asking.shown

    def statistics(self) -> dict[str, Any]:
        return {"requests_pending": len(self.box.pending), "blocked": len(self.box.blocked),
                "profiles": len(self.profile_names), **self.box.counters}

    # -- state in storage --------------------------------------------------------------
    async def load(self) -> None:
        """Before gossip answers anyone: the blocked peers and pending requests (a
        request must not slip past a block, nor a new one overwrite the index). The
        rest only changes what is shown, and loads meanwhile."""
        storage = self.ctx.storage
        self.box.blocked.update(_json(await storage.kv_get("gossip.blocked"), []))
        for peer in _json(await storage.kv_get("gossip.requests"), []):
            doc = _json(await storage.kv_get(f"gossip.request.{peer}"), None)
            if not isinstance(doc, dict):
                continue
            try:
                _secret, keys = await self.conversations.direct_keys(peer)
                self.box.pending[peer] = rq.Pending.from_doc(
                    doc, lambda env, keys=keys: cv.open_envelope(keys, env).text)
            except (KeyError, TypeError, ValueError, cv.EnvelopeError, errors.BusError):
                self.ctx.log.warning("gossip.request_unreadable", peer=peer)
        self.ctx.spawn(self._load_shown)

    async def _load_shown(self) -> None:
        """Profile names and the answers our messages got; what was learnt since the
        start wins over what was stored."""
        stored = _json(await self.ctx.storage.kv_get("gossip.profiles"), {})
        self.profile_names = {**stored, **self.profile_names}
        for conv in list(self.registry):
            marks = _json(await self.ctx.storage.kv_get(f"gossip.requested.{conv.id}"), {})
            now = self.asking.marked.get(conv.id, {})
            for status in ("requested", "refused"):
                self.asking.mark(conv.id, [i for i, s in marks.items()
                                           if s == status and i not in now], status)

    async def _put_json(self, key: str, value: Any) -> None:
        await self.ctx.storage.kv_put(key, orjson.dumps(value))

    async def _save_request(self, peer: str) -> None:
        entry = self.box.pending.get(peer)
        if entry is None:
            await self.ctx.storage.kv_delete(f"gossip.request.{peer}")
        else:
            await self._put_json(f"gossip.request.{peer}", entry.doc())
        await self._put_json("gossip.requests", sorted(self.box.pending))

    # -- profiles ----------------------------------------------------------------------
    async def _profile(self) -> str:
        """Our signed profile (a node invite: name and addresses), remade every
        PROFILE_CACHE_S; "" while the user has given no name."""
        made, text = self._my_profile
        if self.ctx.now() - made < PROFILE_CACHE_S:
            return text
        raw = await self.ctx.storage.kv_get(NAME_KEY)
        name = raw.decode("utf-8", "replace") if raw else ""
        try:
            invites.check_name(name)
        except invites.InviteError:
            self._my_profile = (self.ctx.now(), "")
            return ""
        addrs = tuple((await self.reach.my_addrs())[:invites.MAX_ADDRS])
        inv = invites.NodeInvite.issue(self.ctx.me, name, addrs, time.time())
        text = invites.encode(inv, await self.ctx.keystore.sign(invites.DOMAIN,
                                                                 inv.payload()))
        self._my_profile = (self.ctx.now(), text)
        return text

    def _verified_profile(self, peer: str, text: str) -> invites.NodeInvite | None:
        if not text:
            return None
        try:
            inv = invites.decode(text)
        except invites.InviteError:
            self.ctx.counters["profiles_invalid"] += 1
            return None
        if inv.peer_id != peer:
            self.ctx.counters["profiles_invalid"] += 1
            return None
        return inv

    async def _learn_profile(self, peer: str, name: str) -> None:
        if self.profile_names.get(peer) == name:
            return
        self.profile_names.pop(peer, None)
        self.profile_names[peer] = name
        while len(self.profile_names) > rq.MAX_PROFILES:
            del self.profile_names[next(iter(self.profile_names))]
        try:
            await self._put_json("gossip.profiles", self.profile_names)
        except errors.BusError as exc:
            self.ctx.log.warning("gossip.profiles_not_saved", error=exc.message)

    def _shares_conversation(self, peer: str) -> bool:
        return any(peer in c.members for c in self.registry)

    # -- serving the request protocol --------------------------------------------------
    async def serve(self, stream: Any) -> None:
        peer = stream.peer
        counters = self.ctx.counters
        try:
            with trio.fail_after(ASK_TIMEOUT_S):
                frame = rq.decode(await stream.receive())
                if isinstance(frame, rq.AskProfile):
                    if not self._shares_conversation(peer) or \
                            self.box.admit(peer, self.ctx.now()) is not None:
                        counters["profiles_refused"] += 1
                        await stream.reset()
                        return
                    await stream.send(rq.encode(rq.Profile(await self._profile())))
                elif isinstance(frame, rq.Ask):
                    answer = await self._answer_request(peer, frame)
                    if answer is None:
                        await stream.reset()
                        return
                    await stream.send(rq.encode(answer))
                else:
                    raise rq.RequestError("expected ASK or PROFILE?")
                await stream.close()
        except (*STREAM_ERRORS, errors.BusError) as exc:
            counters["requests_failed"] += 1
            self.ctx.log.info("gossip.request_failed", peer=peer, error=str(exc))
            await stream.reset()

    async def _answer_request(self, peer: str, ask: rq.Ask) -> rq.Answer | None:
        """The answer to a stranger's request; None (reset) for one that lies."""
        counters = self.ctx.counters
        refused = self.box.admit(peer, self.ctx.now())
        if refused is not None:
            return rq.Answer(refused)
        _secret, keys = await self.conversations.direct_keys(peer)
        if ask.conversation != keys.id or not hmac.compare_digest(
                ask.proof, keys.request_proof(peer, self.ctx.me)):
            counters["requests_bad_proof"] += 1
            return None
        held: list[rq.Held] = []
        for env in ask.envelopes:
            try:
                opened = cv.open_envelope(keys, env)
            except cv.EnvelopeError:
                opened = None
            if opened is None or opened.kind != "m" or opened.author != peer:
                counters["requests_bad_envelope"] += 1
                return None
            held.append(rq.Held(opened.id, opened.seq, opened.ts, opened.text, env))
        profile = self._verified_profile(peer, ask.profile)
        if profile is not None:
            await self._learn_profile(peer, profile.name)
        if keys.id in self.registry:
            return rq.Answer("known")
        contact = await self.ctx.storage.contact_get(peer_id=peer)
        if contact is not None:  # a contact whose chat we never opened: no request
            got = await self.conversations.open_direct(
                peer, list(contact.get("addrs") or []), contact["name"])
            await self._keep_held(self.registry.require(got["id"]), held)
            self.ctx.log.info("gossip.request_from_contact", peer=peer,
                              conversation=got["id"])
            return rq.Answer("known")
        name = profile.name if profile is not None else ""
        addrs = profile.addrs if profile is not None else ()
        status, ids, evicted = self.box.hold(peer, name, addrs, keys.id, held, time.time())
        if status != "requested":
            return rq.Answer(status)
        if evicted is not None:
            await self._save_request(evicted)
        await self._save_request(peer)
        entry = self.box.pending[peer]
        self.ctx.log.info("gossip.request_received", peer=peer,
                          messages=len(entry.messages))
        self.ctx.publish("gossip.request.received", {
            "peer_id": peer, "name": entry.name, "conversation": keys.id,
            "messages": len(entry.messages)})
        return rq.Answer("requested", tuple(ids))

    async def _keep_held(self, conv: Conversation, held: list[rq.Held]) -> None:
        """Store held messages as received, which queues their receipts."""
        for h in sorted(held, key=lambda h: h.seq):
            try:
                await self.receive.accept(conv, cv.open_envelope(conv.keys, h.envelope),
                                          h.envelope, None)
            except cv.EnvelopeError:
                self.ctx.counters["requests_bad_envelope"] += 1

    async def absorb(self, peer: str, conv: Conversation) -> None:
        """Our direct chat with `peer` is open (we accepted, or added them and wrote
        while their request was on its way): its request is settled."""
        entry = self.box.pending.pop(peer, None)
        if entry is None:
            return
        await self._keep_held(conv, list(entry.messages.values()))
        await self._save_request(peer)
        self.ctx.publish("gossip.request.accepted", {"peer_id": peer,
                                                     "conversation": conv.id})

    # -- asking (the sender's side) ----------------------------------------------------
    def ask_round(self) -> None:
        """Ask each connected direct-chat peer that owes us receipts but has not
        subscribed to the chat; fetch the profiles of room members we have no name
        for."""
        now = self.ctx.now()
        connected = self.links.connected
        for conv in list(self.registry):
            others = conv.members - {self.ctx.me}
            if conv.kind == "room":
                for peer in others & connected:
                    if peer not in self.profile_names and \
                            now - self._profile_asked.get(peer, -1e9) > rq.PROFILE_RETRY_S:
                        self._profile_asked[peer] = now
                        while len(self._profile_asked) > rq.MAX_TRACKED:
                            del self._profile_asked[next(iter(self._profile_asked))]
                        self.ctx.spawn(self._ask_profile, peer)
                continue
            if len(others) != 1:
                continue
            (peer,) = others
            link = self.links.links.get(peer)
            if peer in self.box.blocked or link is None or not link.outbound:
                continue
            if peer_bytes(peer) in self.ctx.router.topic_peers(conv.keys.topic):
                self.asking.forget(peer)
                continue
            owed = self.delivery.outbox.owed_to(conv.id, peer)
            refused = self.asking.still_refused(peer, conv.id, [mid for mid, _ in owed])
            if refused:
                self.ctx.spawn(self._show_marks, conv, refused, "refused")
            if owed and self.asking.due(peer, conv.id, [mid for mid, _ in owed], now):
                self.asking.asked(peer, now)
                self.ctx.spawn(self._ask, peer, conv, owed)

    async def _exchange(self, peer: str, frame: rq.Frame) -> Any:
        with trio.fail_after(ASK_TIMEOUT_S):
            stream = await self.links.streams.open_stream(rq.PROTOCOL, peer=peer,
                                                          timeout=10)
            async with stream:
                await stream.send(rq.encode(frame))
                return rq.decode(await stream.receive())

    async def _ask(self, peer: str, conv: Conversation,
                   owed: list[tuple[str, int]]) -> None:
        mids = [mid for mid, _seq in sorted(owed, key=lambda o: o[1])][:rq.MAX_HELD_PER_SENDER]
        envelopes = []
        for mid in mids:
            m = await self.ctx.storage.message_get(mid)
            if m is not None:
                envelopes.append(wire.b64d(m["body"], "body"))
        ask = rq.Ask(conv.id, conv.keys.request_proof(self.ctx.me, peer),
                     await self._profile(), tuple(envelopes))
        try:
            answer = await self._exchange(peer, ask)
        except STREAM_ERRORS as exc:
            self.ctx.counters["requests_unanswered"] += 1
            self.ctx.log.info("gossip.request_unanswered", peer=peer, error=str(exc))
            return
        if not isinstance(answer, rq.Answer):
            return
        self.asking.answered(peer, answer.status, self.ctx.now())
        self.ctx.counters[f"requests_answered_{answer.status}"] += 1
        self.ctx.log.info("gossip.request_answered", peer=peer, status=answer.status)
        ids = [i for i in answer.held if i in mids] if answer.status == "requested" \
            else mids if answer.status == "refused" else []
        changed = self.asking.mark(conv.id, ids, answer.status)
        if changed:
            await self._show_marks(conv, changed, answer.status)

    async def _show_marks(self, conv: Conversation, changed: list[str], status: str) -> None:
        """Keep the marks (they outlive a restart) and tell the user's screens."""
        await self._put_json(f"gossip.requested.{conv.id}",
                             self.asking.marked.get(conv.id, {}))
        for mid in changed:
            self.ctx.publish("gossip.message.state", {
                "id": mid, "conversation": conv.id, "state": status})

    async def _ask_profile(self, peer: str) -> None:
        try:
            got = await self._exchange(peer, rq.AskProfile())
        except STREAM_ERRORS as exc:
            self.ctx.log.debug("gossip.profile_unanswered", peer=peer, error=str(exc))
            self._profile_asked[peer] = self.ctx.now() - rq.PROFILE_RETRY_S \
                + rq.PROFILE_SOON_S
            return
        profile = self._verified_profile(peer, got.profile) \
            if isinstance(got, rq.Profile) else None
        if profile is not None:
            await self._learn_profile(peer, profile.name)
        else:
            # Refused (it does not know us as a member yet: a room's members learn
            # each other one proof or authored message at a time) or unreadable: ask
            # again soon rather than at the next full retry.
            self._profile_asked[peer] = self.ctx.now() - rq.PROFILE_RETRY_S \
                + rq.PROFILE_SOON_S

    # -- what the RPCs do --------------------------------------------------------------
    def listing(self) -> list[dict[str, Any]]:
        return [{"peer_id": p.peer, "name": p.name, "conversation": p.conversation,
                 "first_ts": p.first_ts, "last_ts": p.last_ts,
                 "messages": [{"id": h.id, "body": h.text, "ts": h.ts, "seq": h.seq}
                              for h in sorted(p.messages.values(), key=lambda h: h.seq)]}
                for p in sorted(self.box.pending.values(), key=lambda p: p.first_ts)]

    async def accept(self, peer_id: str, name: str) -> dict[str, Any]:
        entry = self.box.pending.get(peer_id)
        if entry is None:
            raise errors.not_found(f"no message request from {peer_id}")
        got = await self.conversations.open_direct(peer_id, list(entry.addrs), name)
        return {"id": got["id"], "name": name, "kind": "direct",
                "messages": len(entry.messages)}  # open_direct absorbed the request

    async def block(self, peer_id: str) -> dict[str, Any]:
        _secret, keys = await self.conversations.direct_keys(peer_id)
        try:
            new = self.box.block(peer_id)
        except ValueError as exc:
            raise errors.BusError(errors.LIMIT, str(exc)) from None
        await self._put_json("gossip.blocked", sorted(self.box.blocked))
        await self._save_request(peer_id)
        conv = self.registry.get(keys.id)
        if conv is not None:
            await self.conversations.leave(conv)
        self.ctx.log.info("gossip.peer_blocked", peer=peer_id)
        return {"blocked": True, "new": new}

    async def unblock(self, peer_id: str) -> dict[str, Any]:
        was = peer_id in self.box.blocked
        self.box.blocked.discard(peer_id)
        await self._put_json("gossip.blocked", sorted(self.box.blocked))
        return {"blocked": False, "was": was}


class StrangerRpcs:
    """The RPC surface of `Strangers`, inherited by the shell (actor.py), which sets
    `strangers` and `_ready`; each method only forwards to the part."""

    strangers: Strangers

    async def _ready(self) -> None:
        raise NotImplementedError

    @every(1.0)
    async def _ask_strangers(self) -> None:
        try:
            await self._ready()
        except errors.BusError:
            return  # not loaded yet: nothing is owed that we know of
        self.strangers.ask_round()

    @rpc
    async def request_list(self) -> list[dict[str, Any]]:
        """{} -> [{"peer_id", "name", "conversation", "first_ts", "last_ts",
        "messages": [{"id", "body", "ts", "seq"}, ...]}, ...] oldest request first;
        "name" is from the sender's signed profile ("" without one)."""
        await self._ready()
        return self.strangers.listing()

    @rpc
    async def request_accept(self, peer_id: str, name: str) -> dict[str, Any]:
        """{"peer_id", "name"} -> {"id", "name", "kind": "direct", "messages": n}: the
        direct chat is opened (named `name`) and the held messages kept as received;
        the sender is told by their receipts. NOT_FOUND without a request."""
        await self._ready()
        return await self.strangers.accept(peer_id, name)

    @rpc
    async def peer_block(self, peer_id: str) -> dict[str, Any]:
        """{"peer_id"} -> {"blocked": true, "new": bool}: their requests are refused
        (and counted), a pending one is dropped, our direct chat with them is left
        (its history stays) and they are not dialled."""
        await self._ready()
        return await self.strangers.block(peer_id)

    @rpc
    async def peer_unblock(self, peer_id: str) -> dict[str, Any]:
        """{"peer_id"} -> {"blocked": false, "was": bool}"""
        await self._ready()
        return await self.strangers.unblock(peer_id)

    @rpc
    async def blocked_list(self) -> list[str]:
        """{} -> [peer_id, ...]"""
        await self._ready()
        return sorted(self.strangers.box.blocked)

    @rpc
    async def profiles(self) -> dict[str, str]:
        """{} -> {peer_id: name}: names from the verified signed profiles of room
        members and message requests (at most requests.MAX_PROFILES)."""
        await self._ready()
        return dict(self.strangers.profile_names)
