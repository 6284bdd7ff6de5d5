"""The gateway's commands about people: removing, renaming and blocking contacts, and
message requests (a direct message from someone who is not a contact waits as a
request until it is accepted or its sender blocked). A mixin of `Gateway` (actor.py);
like the rest of the gateway it holds no state: contacts live in storage, requests and
blocks in gossip (services/gossip/strangers.py), which enforces them.

A request is named by its sender's peer ID or by a unique tail of it of at least
MIN_REF_TAIL characters (the lists show the last 8).
"""

from __future__ import annotations

from typing import Any

from p2pm.common import errors, identity
from p2pm.common import invite as invites
from p2pm.common.actor import rpc
from p2pm.common.clients import StorageClient

MIN_REF_TAIL = 6
SHOWN_TAIL = 8
PROFILE_MARK = "~"  # a name a peer gave itself, not one the user chose


class People:
    """Mixed into Gateway; `_call`, `storage`, `_contact`, `_conversations` are the
    actor's."""

    storage: StorageClient

    async def _direct_with(self, peer_id: str) -> dict[str, Any] | None:
        """Our open direct chat with `peer_id`, if any."""
        for c in await self._conversations():
            if c.get("kind") == "direct" and peer_id in (c.get("members") or []):
                return c
        return None

    async def _blocked(self) -> set[str]:
        return set(await self._call("gossip", "blocked_list"))

    async def _named_by(self) -> dict[str, str]:
        """peer ID -> the name to show: a contact's, else "~" + their profile's."""
        names = {p: PROFILE_MARK + n for p, n in (await self._call("gossip", "profiles")).items()}
        names.update({c["peer_id"]: c["name"] for c in await self.storage.contact_list()})
        return names

    # -- contacts ----------------------------------------------------------------------
    @rpc
    async def contact_remove(self, name: str) -> dict[str, Any]:
        """{"name"} -> {"name", "peer_id", "removed": true}: the contact is forgotten
        and their direct chat closed (its history stays stored); what they send next
        arrives as a message request."""
        contact = await self._contact(name)
        chat = await self._direct_with(contact["peer_id"])
        if chat is not None:
            await self._call("gossip", "conversation_leave", {"conversation": chat["id"]})
        await self.storage.contact_remove(peer_id=contact["peer_id"])
        self.log.info("gateway.contact_removed", name=name, peer_id=contact["peer_id"])
        return {"name": contact["name"], "peer_id": contact["peer_id"], "removed": True}

    @rpc
    async def contact_rename(self, name: str, new_name: str) -> dict[str, Any]:
        """{"name", "new_name"} -> {"name", "peer_id", "old_name"}; CONFLICT if another
        contact has the new name. Their direct chat takes the new name too."""
        try:
            invites.check_name(new_name)
        except invites.InviteError as exc:
            raise errors.bad_params(str(exc)) from None
        contact = await self._contact(name)
        await self.storage.contact_add(new_name, contact["peer_id"],
                                       list(contact.get("addrs") or []),
                                       bool(contact["verified"]))
        chat = await self._direct_with(contact["peer_id"])
        if chat is not None:
            await self._call("gossip", "direct_open", {
                "peer_id": contact["peer_id"], "addrs": list(contact.get("addrs") or []),
                "name": new_name})
        return {"name": new_name, "peer_id": contact["peer_id"], "old_name": contact["name"]}

    @rpc
    async def contact_block(self, name: str) -> dict[str, Any]:
        """{"name"} -> {"name", "peer_id", "blocked": true}: their messages and
        requests are refused (and counted) and they are not dialled; the contact
        stays, shown blocked, until `contact_unblock`."""
        contact = await self._contact(name)
        await self._call("gossip", "peer_block", {"peer_id": contact["peer_id"]})
        return {"name": contact["name"], "peer_id": contact["peer_id"], "blocked": True}

    @rpc
    async def contact_unblock(self, name: str) -> dict[str, Any]:
        """{"name"} -> {"name", "peer_id", "blocked": false}"""
        contact = await self._contact(name)
        await self._call("gossip", "peer_unblock", {"peer_id": contact["peer_id"]})
        return {"name": contact["name"], "peer_id": contact["peer_id"], "blocked": False}

    # -- message requests --------------------------------------------------------------
    @rpc
    async def requests(self) -> list[dict[str, Any]]:
        """{} -> [{"id", "peer_id", "name", "conversation", "first_ts", "last_ts",
        "messages": [{"id", "author", "author_name", "body", "ts", "state"}, ...]}]:
        pending message requests, oldest first. "id" is the short form of the peer ID
        that `request_accept` takes; "name" the sender's own (from their signed
        profile, "" without one)."""
        out = []
        for r in await self._call("gossip", "request_list"):
            shown = PROFILE_MARK + r["name"] if r["name"] else ""
            out.append({**r, "id": r["peer_id"][-SHOWN_TAIL:], "messages": [
                {**m, "author": r["peer_id"], "author_name": shown, "state": "received"}
                for m in r["messages"]]})
        return out

    async def _request(self, ref: str) -> dict[str, Any]:
        if not isinstance(ref, str) or not MIN_REF_TAIL <= len(ref.strip()) <= 128:
            raise errors.bad_params(
                f"name a request by its sender's peer ID or its last {MIN_REF_TAIL}+ "
                "characters (see p2pm requests)")
        ref = ref.strip()
        found = [r for r in await self.requests() if r["peer_id"].endswith(ref)]
        if not found:
            raise errors.not_found(f"no message request matching {ref!r} (see p2pm requests)")
        if len(found) > 1:
            raise errors.bad_params(f"{ref!r} matches several requests; give more of the "
                                    "peer ID")
        return found[0]

    @rpc
    async def request_accept(self, request: str, name: str | None = None) -> dict[str, Any]:
        """{"request", "name"?} -> {"conversation", "peer_id", "name", "messages"}:
        the sender becomes a contact (named `name`, else the name from their profile,
        made unique, else the peer ID's tail), their held messages appear in the direct
        chat, and they learn of the delivery from our receipts."""
        req = await self._request(request)
        if name is not None:
            try:
                invites.check_name(name)
            except invites.InviteError as exc:
                raise errors.bad_params(str(exc)) from None
        taken = {c["name"] for c in await self.storage.contact_list()}
        if name is not None and name in taken:
            raise errors.BusError(errors.CONFLICT, f"you already have a contact named {name!r}")
        chosen = name or _free_name(req["name"] or req["id"], req["peer_id"], taken)
        await self.storage.contact_add(chosen, req["peer_id"], [])
        got = await self._call("gossip", "request_accept",
                               {"peer_id": req["peer_id"], "name": chosen})
        self.log.info("gateway.request_accepted", peer_id=req["peer_id"], name=chosen)
        return {"conversation": got["id"], "peer_id": req["peer_id"], "name": chosen,
                "messages": got["messages"]}

    @rpc
    async def request_block(self, request: str) -> dict[str, Any]:
        """{"request"} -> {"peer_id", "blocked": true}: the request is dropped and the
        sender's later requests refused (they see their messages "refused")."""
        ref = request.strip() if isinstance(request, str) else ""
        try:
            identity.public_key_from_peer_id(ref)
            peer_id = ref  # a full peer ID may be blocked with no request pending
        except identity.IdentityError:
            peer_id = (await self._request(request))["peer_id"]
        await self._call("gossip", "peer_block", {"peer_id": peer_id})
        return {"peer_id": peer_id, "blocked": True}


def _free_name(wanted: str, peer_id: str, taken: set[str]) -> str:
    """`wanted`, or with the peer ID's tail when a contact already has that name (a
    stranger may call itself anything, including the name of a friend)."""
    if wanted not in taken:
        return wanted
    return f"{wanted[:invites.MAX_NAME_CHARS - SHOWN_TAIL - 1]}-{peer_id[-SHOWN_TAIL:]}"
