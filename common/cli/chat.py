"""The commands people chat with: invites, contacts, direct messages, rooms, history
and the inbox. Each is one call to the node's gateway.

Wherever a conversation is named, its id, its name (a room's, or a direct chat's) or a
contact's name works. Exit codes: 0 done, 1 refused (unknown contact, bad invite...,
one line on stderr), 2 bad input, 3 the node did not answer (down, or still restarting
after the retries).
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import errors
from .. import invite as invites
from .. import supervisor as supmod
from ..home import Home
from . import bus
from .base import EXIT_ERROR, EXIT_TIMEOUT, EXIT_USAGE, Ctx, fail, main
from .safe import inert

# An actor that supervisord restarts is back within about a second; a command keeps
# trying for several before it gives up. Attempts carry the same request id, so a
# slow operation (a first message may dial the peer) is answered, not repeated.
ATTEMPT_TIMEOUT = 2.0
RETRIES = 5
SLOW_RETRIES = 9
STATE_MARKS = {"pending": "(pending)", "sent": "(sent)", "delivered": "(delivered)",
               "requested": "(waiting for them to accept your message request)",
               "refused": "(refused: they blocked you)", "received": ""}


def node_may_run(home: Home) -> bool:
    """False only when nothing of the node runs: then waiting is pointless."""
    return (supmod.supervisord_pid(home) is not None or bool(supmod.actor_pids(home))
            or _listening(home.run / "gateway.rpc"))


def _listening(path: Path) -> bool:
    """Whether a process is bound to this ipc socket (a stale file refuses)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(0.5)
    try:
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def gateway(home: Home, method: str, params: dict[str, Any] | None = None, *,
            retries: int = RETRIES) -> Any:
    """Call the gateway; raises BusError (TIMEOUT when the node is down)."""
    if not node_may_run(home):
        raise errors.BusError(errors.TIMEOUT,
                              f"the node in {home.root} is not running (p2pm up starts it)")
    return bus.call(home, "gateway", method, params, timeout=ATTEMPT_TIMEOUT,
                    retries=retries)


def _call(obj: Ctx, method: str, params: dict[str, Any] | None = None,
          retries: int = RETRIES) -> Any:
    try:
        return gateway(obj.home, method, params, retries=retries)
    except errors.BusError as exc:
        code = {errors.TIMEOUT: EXIT_TIMEOUT, errors.BAD_PARAMS: EXIT_USAGE}.get(
            exc.code, EXIT_ERROR)
        if exc.code == errors.TIMEOUT and "not running" not in exc.message:
            fail(f"the node in {obj.home.root} did not answer; is it running? "
                 "(p2pm status)", code)
        fail(exc.message, code)
    except ValueError as exc:  # a home path too long for a unix socket
        fail(str(exc), EXIT_USAGE)


def message_head(m: dict[str, Any]) -> str:
    """`[hh:mm:ss] author: ` with the author's name made inert."""
    when = time.strftime("%H:%M:%S", time.localtime(float(m.get("ts") or 0)))
    who = m.get("author_name") or str(m.get("author", "?"))[-8:]
    return f"[{when}] {inert(who)}: "


def format_message(m: dict[str, Any], prefix: str = "") -> str:
    """One message for the terminal, after `prefix`; a body's own lines continue
    indented under its first, so none can pass for another message."""
    mark = STATE_MARKS.get(str(m.get("state")), f"({inert(m.get('state'))})")
    body = inert(m.get("body", ""), indent=prefix + " " * len("[hh:mm:ss] "))
    return prefix + message_head(m) + body + (f"  {mark}" if mark else "")


# -- invites and contacts ------------------------------------------------------------


def _duration(ctx: click.Context, param: click.Parameter,
              value: str | None) -> float | None:
    """--expires as seconds; a bad one is a usage error naming the option (exit 2)."""
    if value is None:
        return None
    try:
        return invites.parse_duration(value)
    except invites.InviteError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def expires_option(default_key: str) -> Any:
    return click.option(
        "--expires", "ttl_s", default=None, metavar="DURATION", callback=_duration,
        help=f"How long the invite is good for: 1h to 365d, e.g. 12h, 2d, 1w "
             f"(default: the setting {default_key}, 7 days unless changed).")


@main.command()
@click.option("--name", default=None, help="The name your contacts see (remembered).")
@expires_option("gateway.invite_ttl_s")
@click.option("--qr", is_flag=True, help="Also show the invite as a QR code.")
@click.pass_obj
def invite(obj: Ctx, name: str | None, ttl_s: float | None, qr: bool) -> None:
    """Print a signed invite for this node: give it to someone to add you. It
    expires (7 days unless --expires or gateway.invite_ttl_s say otherwise)."""
    params: dict[str, Any] = {"name": name} if name is not None else {}
    if ttl_s is not None:
        params["ttl_s"] = ttl_s
    got = _call(obj, "invite", params)
    if obj.json:
        obj.out({"invite": got["invite"], "peer_id": got["peer_id"], "name": got["name"],
                 "addrs": got["addrs"], "expires": got["expires"]}, "")
        return
    click.echo(got["invite"])
    click.echo(f"good until {invites.format_time(got['expires'])}", err=True)
    if qr:
        import segno

        segno.make(got["invite"], error="l").terminal(compact=True)


@main.group()
def contacts() -> None:
    """Your contacts: add one from an invite, list them, verify one."""


@contacts.command(name="add")
@click.argument("name")
@click.argument("invite_text", metavar="INVITE")
@click.pass_obj
def contacts_add(obj: Ctx, name: str, invite_text: str) -> None:
    """Add NAME from their INVITE (or from a bare peer ID, looked up in the DHT)."""
    got = _call(obj, "contact_add", {"name": name, "invite": invite_text}, SLOW_RETRIES)
    name = inert(got["name"])
    obj.out(got, f"{'added' if got['created'] else 'updated'} {name} "
                 f"({got['peer_id']}); compare safety numbers with "
                 f"p2pm contacts verify {name}")


@contacts.command(name="list")
@click.pass_obj
def contacts_list(obj: Ctx) -> None:
    """Every contact with its peer ID."""
    found = _call(obj, "contact_list")
    lines = [f"{len(found)} contact{'s' if len(found) != 1 else ''}"]
    lines += [f"  {inert(c['name']):<20} {c['peer_id']}{'  verified' if c['verified'] else ''}"
              f"{'  blocked' if c.get('blocked') else ''}" for c in found]
    obj.out(found, "\n".join(lines))


@contacts.command(name="remove")
@click.argument("name")
@click.pass_obj
def contacts_remove(obj: Ctx, name: str) -> None:
    """Forget NAME and close your chat with them (its history stays); what they
    send next arrives as a message request."""
    got = _call(obj, "contact_remove", {"name": name})
    obj.out(got, f"removed {inert(got['name'])} ({got['peer_id']})")


@contacts.command(name="rename")
@click.argument("name")
@click.argument("new_name")
@click.pass_obj
def contacts_rename(obj: Ctx, name: str, new_name: str) -> None:
    """Call contact NAME by NEW_NAME from now on."""
    got = _call(obj, "contact_rename", {"name": name, "new_name": new_name})
    obj.out(got, f"renamed {inert(got['old_name'])} to {inert(got['name'])}")


@contacts.command(name="block")
@click.argument("name")
@click.pass_obj
def contacts_block(obj: Ctx, name: str) -> None:
    """Refuse NAME's messages and requests, and stop dialling them."""
    got = _call(obj, "contact_block", {"name": name})
    obj.out(got, f"blocked {inert(got['name'])}: their messages are refused "
                 f"(p2pm contacts unblock {inert(got['name'])} undoes it)")


@contacts.command(name="unblock")
@click.argument("name")
@click.pass_obj
def contacts_unblock(obj: Ctx, name: str) -> None:
    """Take NAME off your block list."""
    got = _call(obj, "contact_unblock", {"name": name})
    obj.out(got, f"unblocked {inert(got['name'])}")


@contacts.command(name="verify")
@click.argument("name")
@click.option("--confirmed", is_flag=True,
              help="You compared the numbers and they match: mark NAME verified.")
@click.pass_obj
def contacts_verify(obj: Ctx, name: str, confirmed: bool) -> None:
    """The safety number of NAME: read it to each other; it must match."""
    got = _call(obj, "contact_verify", {"name": name, "confirmed": confirmed})
    name = inert(got["name"])
    tail = f"{name} is marked verified" if got["verified"] else \
        "it must read the same on their side (p2pm contacts verify <you>); if it does, " \
        f"run p2pm contacts verify {name} --confirmed"
    obj.out(got, f"safety number with {name}:\n  {got['safety_number']}\n{tail}")


# -- messages ------------------------------------------------------------------------


def _posted(obj: Ctx, got: dict[str, Any], where: str) -> None:
    obj.out({"id": got["id"], "state": got["state"], "conversation": got["conversation"]},
            f"sent to {where} {STATE_MARKS.get(got['state'], got['state'])}  id {got['id']}")


def _text(text: str) -> str:
    """TEXT as given, or for "-" what stdin holds (UTF-8), without the final line
    end a pipe or a here-document adds."""
    if text != "-":
        return text
    try:
        data = sys.stdin.buffer.read().decode("utf-8")
    except UnicodeDecodeError as exc:
        fail(f"stdin is not UTF-8 text (byte {exc.start})", EXIT_USAGE)
    return data[:-2] if data.endswith("\r\n") else data.removesuffix("\n")


@main.command()
@click.argument("contact")
@click.argument("text")
@click.pass_obj
def send(obj: Ctx, contact: str, text: str) -> None:
    """Send TEXT to CONTACT in your direct chat (TEXT "-": read it from stdin)."""
    _posted(obj, _call(obj, "send", {"contact": contact, "text": _text(text)},
                       SLOW_RETRIES), contact)


@main.command()
@click.argument("room")
@click.argument("text")
@click.pass_obj
def post(obj: Ctx, room: str, text: str) -> None:
    """Post TEXT in ROOM (or any conversation, by id or name; TEXT "-": from
    stdin)."""
    _posted(obj, _call(obj, "post", {"conversation": room, "text": _text(text)},
                       SLOW_RETRIES), room)


@main.group()
def rooms() -> None:
    """Rooms: create one, join one from its invite, list them."""


@rooms.command(name="create")
@click.argument("name")
@click.pass_obj
def rooms_create(obj: Ctx, name: str) -> None:
    """Create room NAME and print its invite."""
    got = _call(obj, "room_create", {"name": name})
    obj.out({"id": got["id"], "name": got["name"], "invite": got["invite"]},
            f"room {inert(got['name'])} created ({got['id']}); its invite:\n{got['invite']}")


@rooms.command(name="join")
@click.argument("invite_text", metavar="INVITE")
@click.pass_obj
def rooms_join(obj: Ctx, invite_text: str) -> None:
    """Join the room of INVITE."""
    got = _call(obj, "room_join", {"invite": invite_text}, SLOW_RETRIES)
    obj.out(got, f"joined room {inert(got['name'])} ({got['id']})")


@rooms.command(name="invite")
@click.argument("room")
@expires_option("gossip.room_invite_ttl_s")
@click.pass_obj
def rooms_invite(obj: Ctx, room: str, ttl_s: float | None) -> None:
    """Print a new invite to ROOM (it expires: 7 days unless --expires or
    gossip.room_invite_ttl_s say otherwise)."""
    params: dict[str, Any] = {"conversation": room}
    if ttl_s is not None:
        params["ttl_s"] = ttl_s
    got = _call(obj, "room_invite", params)
    obj.out(got, got["invite"])


@rooms.command(name="leave")
@click.argument("room")
@click.pass_obj
def rooms_leave(obj: Ctx, room: str) -> None:
    """Leave ROOM: stop receiving and posting there (its history stays; its invite
    lets you join again)."""
    got = _call(obj, "room_leave", {"room": room})
    obj.out(got, f"left room {inert(got['name'])} ({got['id']})")


@rooms.command(name="list")
@click.pass_obj
def rooms_list(obj: Ctx) -> None:
    """Your rooms, with their members and unread messages."""
    found = [c for c in _call(obj, "conversations") if c.get("kind") == "room"]
    lines = [f"{len(found)} room{'s' if len(found) != 1 else ''}"]
    for c in found:
        members = len(c.get("members") or [])
        lines.append(f"  {inert(c['name']):<20} {c['id']}  {members} member"
                     f"{'s' if members != 1 else ''}, {c.get('unread', 0)} unread")
    obj.out(found, "\n".join(lines))


@main.command()
@click.argument("conversation")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True,
              help="How many of the latest messages.")
@click.pass_obj
def history(obj: Ctx, conversation: str, limit: int) -> None:
    """The latest messages of CONVERSATION (id, room name or contact name), oldest
    first."""
    found = _call(obj, "history", {"conversation": conversation, "limit": limit})
    obj.out(found, "\n".join(format_message(m) for m in found) or "no messages yet")


@main.command()
@click.argument("conversation")
@click.pass_obj
def read(obj: Ctx, conversation: str) -> None:
    """Mark CONVERSATION read: inbox no longer lists it (history does not mark
    read)."""
    got = _call(obj, "mark_read", {"conversation": conversation})
    obj.out(got, f"marked {conversation} read")


@main.group(invoke_without_command=True)
@click.pass_context
def requests(ctx: click.Context) -> None:
    """Message requests: direct messages from people who are not your contacts.
    Without a subcommand, list them."""
    if ctx.invoked_subcommand is not None:
        return
    obj: Ctx = ctx.obj
    found = _call(obj, "requests")
    lines = [f"{len(found)} message request{'s' if len(found) != 1 else ''}"]
    for r in found:
        lines.append(f"  {r['id']}  {_who(r)}  {len(r['messages'])} message"
                     f"{'s' if len(r['messages']) != 1 else ''}")
        lines += [format_message(m, "    ") for m in r["messages"]]
    if found:
        lines.append("accept with p2pm requests accept ID, or p2pm requests block ID")
    obj.out(found, "\n".join(lines))


def _who(r: dict[str, Any]) -> str:
    name = f"~{inert(r['name'])} " if r.get("name") else ""
    return f"{name}({r['peer_id']})"


@requests.command(name="accept")
@click.argument("request")
@click.option("--name", default=None, help="The contact name to give them (default: "
              "the name they gave themselves).")
@click.pass_obj
def requests_accept(obj: Ctx, request: str, name: str | None) -> None:
    """Accept REQUEST (its ID or the sender's peer ID): they become a contact and
    their messages appear in your chat with them."""
    params = {"request": request, **({"name": name} if name is not None else {})}
    got = _call(obj, "request_accept", params, SLOW_RETRIES)
    name = inert(got["name"])
    obj.out(got, f"accepted: {name} ({got['peer_id']}) is now a contact; "
                 f"{got['messages']} message{'s' if got['messages'] != 1 else ''} "
                 f"in p2pm history {name}")


@requests.command(name="block")
@click.argument("request")
@click.pass_obj
def requests_block(obj: Ctx, request: str) -> None:
    """Block the sender of REQUEST (its ID or a peer ID): the request is dropped and
    their later messages refused."""
    got = _call(obj, "request_block", {"request": request})
    obj.out(got, f"blocked {got['peer_id']}")


@main.command()
@click.pass_obj
def inbox(obj: Ctx) -> None:
    """Unread messages across your conversations."""
    found = _call(obj, "inbox")
    if not found:
        obj.out(found, "no unread messages")
        return
    lines = []
    for conv in found:
        if conv["kind"] == "request":
            lines.append(f"message request {conv['id']} from {_who(conv)}: "
                         f"{conv['unread']} unread (p2pm requests accept {conv['id']})")
        else:
            lines.append(f"{inert(conv['name'] or conv['id'])} ({conv['kind']}): "
                         f"{conv['unread']} unread")
        lines += [format_message(m, "  ") for m in conv["messages"]]
    obj.out(found, "\n".join(lines))
