"""`p2pm attach`: the interactive terminal client of a node.

    +- status: peer, peers, reachability, connected / reconnecting ---------------+
    | conversations   | bob (direct)                      scrolled up: End = newest |
    |  > bob (1)      | [12:00:01] me: hi  ✓✓                                      |
    |    friends      | [12:00:03] bob: a longer message wraps at word boundaries, |
    |                 |            under its first line                           |
    +-----------------+-----------------------------------------------------------+
    | what the last action did, or why it was refused                             |
    | > text to send, or /help                                                    |

It talks only to the gateway: calls go through `chat.gateway` in a worker thread (the
same retrying call the commands make), and live events arrive on a SUB socket read by
another thread. The gateway's heartbeat tells whether the node is there: when it stops
the status line says "reconnecting"; when it comes back (a new epoch), or the gateway
reports a resync because an actor behind it restarted, everything shown is re-read.

The model (`AttachModel`) holds no terminal code: it turns the conversation into rows
of a given width (`pane.wrap`, every peer-supplied string through `safe.inert`) and
keeps the scroll state (`pane.Scroll`), so unit tests drive it directly. The screen
(`run_attach`) only asks it for rows of the size prompt_toolkit gives each pane.

Why prompt_toolkit and not Textual: what the old screen lacked was layout (wrapping,
scrolling, following the newest row, a help view), not widgets, and that layout is
now ours, sans-IO and tested without a terminal; prompt_toolkit stays a thin shell
that draws rows, reads keys and the mouse wheel, and already lives with the asyncio
loop, the event thread and the reconnect logic here. Textual would mean rewriting
that shell for a framework (and its rich dependency) whose own wrapping and
scrolling we would then have to trust; its pilot drives a headless driver, while the
tests here drive the real program in a pseudo-terminal read through a terminal
emulator (pyte), which checks what a user's terminal would show.
"""

from __future__ import annotations

import asyncio
import shlex
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import click

from .. import errors
from .. import invite as invites
from ..home import Home
from . import pane
from .base import Ctx, main
from .chat import gateway, message_head
from .safe import inert

HEARTBEAT_GRACE_S = 3.5  # the gateway beats every second
STATUS_EVERY_S = 2.0
CALL_RETRIES = 5  # the same request id each time: a slow answer is waited for, not redone
HISTORY_LIMIT = 200
MARKS = {"pending": "…", "sent": "✓", "delivered": "✓✓", "received": ""}
# Our messages' states only move forward.
RANK = {"pending": 0, "sent": 1, "delivered": 2}
KEEP_STATES = 1000  # state events remembered for messages not on the screen yet
# Wrapped rows kept per (message, width, text); beyond it the cache is cleared (a
# re-wrap of 200 messages costs a few milliseconds).
KEEP_WRAPPED = 2000
HANGING = 11  # continuation rows start under the text after "[hh:mm:ss] "
WHEEL_ROWS = 3
CONVERSATIONS_WIDTH = 26
QUIT, DONE, REFUSED = "quit", "done", "refused"


def _moves_forward(old: Any, new: str) -> bool:
    return old not in RANK or new not in RANK or RANK[new] >= RANK[old]


# Every command on a line of its own, none wider than 78 columns: the help view takes
# the whole width of the screen, so at 80 columns nothing wraps.
HELP = """text                  post it in the open conversation
/open NAME            open a conversation (an id, a room or a contact name)
/send CONTACT TEXT    send a direct message to CONTACT and open that chat
/post ROOM TEXT       post TEXT in ROOM and open it
/invite               show your invite, to give to someone who adds you
/add NAME INVITE      add a contact from their invite
/contacts             list your contacts
/verify NAME          the safety number to compare with NAME
/create ROOM          create a room and show its invite
/join INVITE          join a room from its invite
/roominvite ROOM      show a room's invite again
/inbox                unread messages across your conversations
/help                 this view
/quit                 leave (also Ctrl-D or Ctrl-C)

keys
Ctrl-N / Ctrl-P       next / previous conversation
PageUp / PageDown     scroll the messages (or this view) a page
Up / Down, wheel      scroll by rows
End                   back to the newest message (and the end of the input)
Ctrl-Home             the oldest message shown
Esc                   close this view
A refused message stays in the input line; fix it and press Enter again."""
COMMANDS = [line.split()[0] for line in HELP.splitlines() if line.startswith("/")]


Row = tuple[Hashable, str, str]  # (key, style, text)


@dataclass
class AttachModel:
    """What the screen shows, and the actions behind it; no terminal code."""

    home: Home
    conversations: list[dict[str, Any]] = field(default_factory=list)
    current: str | None = None  # conversation id
    messages: list[dict[str, Any]] = field(default_factory=list)
    notice: str = "connecting..."
    connected: bool = False
    status: dict[str, Any] = field(default_factory=dict)
    on_change: Callable[[], None] = lambda: None
    # The furthest state the events told, per message id. A receipt can arrive while
    # the history holding its message is still being read (right after posting, say):
    # the event finds no message to update and the history may predate it, so the
    # mark is applied when the history arrives.
    states: OrderedDict[str, str] = field(default_factory=OrderedDict)
    # The chat pane, and the view over it (help, a list, an invite) while one is open.
    chat: pane.Scroll = field(default_factory=pane.Scroll)
    view_title: str | None = None  # None: no view open
    view_text: str = ""
    view: pane.Scroll = field(default_factory=pane.Scroll)
    width: int = 80  # the front pane's width when last drawn
    _wrapped: dict[tuple[Any, ...], list[str]] = field(default_factory=dict)

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(gateway, self.home, method, params,
                                       retries=CALL_RETRIES)

    # -- reading state -----------------------------------------------------------------
    async def refresh(self) -> None:
        """Re-read the conversation list and the open conversation."""
        try:
            self.conversations = await self.call("conversations")
        except errors.BusError as exc:
            self.notice = f"cannot list conversations: {exc.message}"
            self.on_change()
            return
        ids = [c["id"] for c in self.conversations]
        if self.current not in ids:
            self.current = ids[0] if ids else None
        await self.load_current()

    async def load_current(self) -> None:
        if self.current is None:
            self.messages = []
        else:
            try:
                messages = await self.call("history", {
                    "conversation": self.current, "limit": HISTORY_LIMIT})
                for m in messages:
                    seen = self.states.get(m.get("id"))
                    if seen is not None and _moves_forward(m.get("state"), seen):
                        m["state"] = seen
                self.messages = messages
                await self.call("mark_read", {"conversation": self.current})
                for c in self.conversations:
                    if c["id"] == self.current:
                        c["unread"] = 0
            except errors.BusError as exc:
                self.notice = f"cannot read the conversation: {exc.message}"
        self.on_change()

    async def refresh_status(self) -> None:
        try:
            self.status = await asyncio.to_thread(
                gateway, self.home, "node_status", None, retries=0)
        except errors.BusError:
            self.status = {}
        self.on_change()

    # -- events ------------------------------------------------------------------------
    async def on_event(self, topic: str, data: Any) -> None:
        if topic == "gateway.message.received" and isinstance(data, dict):
            if data.get("conversation") == self.current:
                await self.load_current()
            elif any(c["id"] == data.get("conversation") for c in self.conversations):
                for c in self.conversations:
                    if c["id"] == data.get("conversation"):
                        c["unread"] = int(c.get("unread") or 0) + 1
                self.on_change()
            else:
                await self.refresh()  # a conversation we did not list yet
        elif topic == "gateway.message.state" and isinstance(data, dict):
            mid, state = data.get("id"), data.get("state")
            if not isinstance(mid, str) or not isinstance(state, str):
                return
            if _moves_forward(self.states.get(mid), state):
                self.states[mid] = state
            self.states.move_to_end(mid)
            while len(self.states) > KEEP_STATES:
                self.states.popitem(last=False)
            for m in self.messages:
                if m.get("id") == mid and _moves_forward(m.get("state"), state):
                    m["state"] = state
                    self.on_change()
        elif topic == "gateway.request.received" and isinstance(data, dict):
            # Someone who is not a contact wrote: said at once, wherever the user is,
            # with how to answer (the messages wait on our node until then).
            peer, name = data.get("peer_id"), data.get("name")
            if isinstance(peer, str):
                who = f"~{inert(name)} " if isinstance(name, str) and name \
                    else ""
                count = data.get("messages")
                many = f"{count} message(s)" if isinstance(count, int) else "messages"
                self.notice = (f"message request from {who}{inert(peer)}: "
                               f"{many}; p2pm requests accept|block {peer}")
                self.on_change()
        elif topic in ("gateway.resync", "gateway.request.accepted"):
            await self.refresh()

    async def set_connected(self, connected: bool, restarted: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            self.notice = "connected" if connected else "reconnecting..."
        if connected and restarted:
            await self.refresh()
        self.on_change()

    # -- actions -----------------------------------------------------------------------
    def switch(self, step: int) -> None:
        ids = [c["id"] for c in self.conversations]
        if not ids:
            return
        i = ids.index(self.current) if self.current in ids else 0
        self.current = ids[(i + step) % len(ids)]
        self.chat.end()  # another conversation opens at its newest message

    def show(self, title: str, text: str) -> None:
        """Open the view (over the chat pane) on `text`, from its first row."""
        self.view_title, self.view_text = title, text
        self.view = pane.Scroll(follow=False)

    def close_view(self) -> None:
        self.view_title, self.view_text = None, ""

    async def submit(self, line: str) -> str:
        """Handle one input line: QUIT when the user asked to leave, REFUSED when it
        was not done (the notice says why; the screen keeps the line), else DONE."""
        line = line.strip()
        if not line:
            return DONE
        try:
            if line.startswith("/"):
                return await self._command(line)
            if self.current is None:
                self.notice = "no open conversation: /open NAME, /send CONTACT TEXT or /help"
                return REFUSED
            got = await self.call("post", {"conversation": self.current, "text": line})
            self.notice = f"sent ({got['state']})"
            self.close_view()
            self.chat.end()  # what you just wrote is what you want to see
            await self.load_current()
            return DONE
        except errors.BusError as exc:
            self.notice = f"not done: {exc.message}"
        except ValueError as exc:
            self.notice = f"not done: {exc}"
        finally:
            self.on_change()
        return REFUSED

    async def _command(self, line: str) -> str:
        word, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if word in ("quit", "q", "exit"):
            return QUIT
        if word == "help":
            self.show("help", HELP)
        elif word == "open":
            conv = await self.call("open", {"conversation": rest})
            self.current = conv["id"]
            self.chat.end()
            await self.refresh()
            self.notice = f"opened {inert(conv.get('name') or conv['id'])}"
        elif word in ("send", "post"):
            target, _, text = rest.partition(" ")
            method, key = ("send", "contact") if word == "send" else ("post", "conversation")
            got = await self.call(method, {key: target, "text": text})
            self.notice = f"sent to {target} ({got['state']})"
            self.current = got["conversation"]
            self.chat.end()
            await self.refresh()
        elif word == "invite":
            got = await self.call("invite")
            self.show(f"your invite (good until {invites.format_time(got['expires'])})",
                      got["invite"])
        elif word == "add":
            name, invite_text = _two(rest, "/add NAME INVITE")
            got = await self.call("contact_add", {"name": name, "invite": invite_text})
            self.notice = f"added {inert(got['name'])} ({got['peer_id']})"
        elif word == "contacts":
            found = await self.call("contact_list")
            self.show("contacts", "\n".join(f"{inert(c['name'])}  {c['peer_id']}"
                                            for c in found) or "no contacts yet")
        elif word == "verify":
            got = await self.call("contact_verify", {"name": rest})
            self.notice = f"safety number with {inert(got['name'])}: {got['safety_number']}"
        elif word == "create":
            got = await self.call("room_create", {"name": rest})
            self.current = got["id"]
            await self.refresh()
            self.show(f"room {inert(got['name'])} created; its invite", got["invite"])
        elif word == "join":
            got = await self.call("room_join", {"invite": rest})
            self.current = got["id"]
            await self.refresh()
            self.notice = f"joined {inert(got['name'])}"
        elif word == "roominvite":
            got = await self.call("room_invite", {"conversation": rest})
            self.show(f"invite of {inert(rest)}", got["invite"])
        elif word == "inbox":
            found = await self.call("inbox")
            self.show("inbox", "\n".join(f"{inert(c['name'] or c['id'])}: {c['unread']} unread"
                                         for c in found) or "no unread messages")
        else:
            self.notice = f"unknown command /{inert(word)}; /help lists them"
            return REFUSED
        return DONE

    # -- rendering (plain text; the app adds no logic) ---------------------------------
    def status_line(self) -> str:
        st = self.status
        peer = str(st.get("peer_id") or "?")
        down = [a for a, ok in (st.get("actors") or {}).items() if not ok]
        state = "connected" if self.connected else "reconnecting..."
        if self.connected and down:
            state = f"reconnecting ({', '.join(down)})"
        return (f" p2pm  {peer[-10:]}  peers: {st.get('peers', '?')}  "
                f"reachability: {st.get('reachability', '?')}  [{state}]")

    def conversation_lines(self, width: int = 24) -> list[tuple[bool, str]]:
        out = []
        for c in self.conversations:
            unread = int(c.get("unread") or 0)
            tail = f" ({unread})" if unread else ""
            label = pane.cut(inert(c.get("name") or c["id"]), width - len(tail)) + tail
            out.append((c["id"] == self.current, label))
        return out

    def title(self) -> str:
        """The open conversation's name and kind, for the line above its messages."""
        if self.view_title is not None:
            return f"{self.view_title}  (Esc closes; PageUp/PageDown scroll)"
        conv = next((c for c in self.conversations if c["id"] == self.current), None)
        if conv is None:
            return "no conversation open: /open NAME, /send CONTACT TEXT or /help"
        members = len(conv.get("members") or [])
        kind = "room" if conv.get("kind") == "room" else "direct chat"
        extra = f", {members} members" if conv.get("kind") == "room" and members else ""
        return f"{inert(conv.get('name') or conv['id'])}  ({kind}{extra})"

    def scroll_hint(self) -> str:
        """Said while the chat does not follow the newest message: how many messages
        are below the pane (as last drawn), all of them out of view."""
        if self.view_title is not None or self.chat.follow:
            return ""
        rows = self.message_rows(self.width)
        _, end = self.chat.window([k for k, _, _ in rows], self.chat.height)
        in_view = {k[0] for k, _, _ in rows[:end]}
        below = len({k[0] for k, _, _ in rows[end:]} - in_view)
        return f"[{below} newer below: End]" if below else "[scrolled up: End = newest]"

    def message_lines(self) -> list[str]:
        """One string per message: time, author and body, all made inert."""
        out = []
        for m in self.messages:
            mark = MARKS.get(str(m.get("state")), inert(m.get("state")))
            out.append(message_head(m) + inert(m.get("body", ""), indent="") +
                       (f"  {mark}" if mark else ""))
        return out

    def _rows_of(self, key: Any, text: str, width: int, indent: int,
                 hang_paragraphs: bool) -> list[str]:
        """`text` (paragraphs split at newlines) wrapped to `width`; cached."""
        ck = (key, width, indent, hang_paragraphs, text)
        rows = self._wrapped.get(ck)
        if rows is None:
            if len(self._wrapped) >= KEEP_WRAPPED:
                self._wrapped.clear()
            first, *more = text.split("\n")
            rows = pane.wrap(first, width, indent)
            # later paragraphs hang as well: no row of a body starts where an author
            # name would, so a newline cannot fake a message from someone else
            hang = " " * min(indent, width * 3 // 4) if hang_paragraphs else ""
            for para in more:
                rows += pane.wrap(hang + para, width, indent)
            self._wrapped[ck] = rows
        return rows

    def message_rows(self, width: int) -> list[Row]:
        if not self.messages:
            return [("empty", "class:faint", "(no messages yet)")]
        rows: list[Row] = []
        for n, (m, text) in enumerate(zip(self.messages, self.message_lines(), strict=True)):
            mid = m.get("id") or ("#", n)
            for i, row in enumerate(self._rows_of(mid, text, width, HANGING, True)):
                rows.append(((mid, i), "", row))
        return rows

    def view_rows(self, width: int) -> list[Row]:
        return [((0, i), "", row)
                for i, row in enumerate(self._rows_of("view", self.view_text, width, 4, False))]

    def rows(self, width: int) -> tuple[pane.Scroll, list[Row]]:
        """The pane in front (the view, else the chat) and its rows at `width`."""
        self.width = width
        if self.view_title is not None:
            return self.view, self.view_rows(width)
        return self.chat, self.message_rows(width)

    def scroll(self, rows: int = 0, pages: int = 0) -> None:
        """Scroll the pane in front, as last drawn, by rows or pages (negative: up)."""
        scroll, shown = self.rows(self.width)
        keys = [k for k, _, _ in shown]
        if pages:
            scroll.page(keys, pages)
        else:
            scroll.scroll(keys, rows)
        self.on_change()

    def to_newest(self) -> None:
        self.rows(self.width)[0].end()
        self.on_change()

    def to_oldest(self) -> None:
        scroll, shown = self.rows(self.width)
        scroll.home([k for k, _, _ in shown])
        self.on_change()


def _two(text: str, usage: str) -> tuple[str, str]:
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"usage: {usage}")
    return parts[0], parts[1]


@main.command()
@click.pass_obj
def attach(obj: Ctx) -> None:
    """An interactive chat screen on this node (live messages, delivery marks)."""
    from .chat import node_may_run
    from .base import EXIT_TIMEOUT, fail

    if not node_may_run(obj.home):
        fail(f"the node in {obj.home.root} is not running (p2pm up starts it)", EXIT_TIMEOUT)
    from .screen import run_attach

    asyncio.run(run_attach(AttachModel(obj.home)))
