"""`p2pm attach`: the interactive terminal client of a node (prompt_toolkit).

    +- status: peer, peers, reachability, connected / reconnecting ---------------+
    | conversations   | messages of the open conversation, with delivery marks    |
    |  > bob (1)      | [12:00:01] me: hi  (delivered)                            |
    |    friends      | [12:00:03] bob: hello                                     |
    +-----------------+-----------------------------------------------------------+
    | > text to send, or /help                                                    |

It talks only to the gateway: calls go through `chat.gateway` in a worker thread (the
same retrying call the commands make), and live events arrive on a SUB socket read by
another thread. The gateway's heartbeat tells whether the node is there: when it stops
the status line says "reconnecting"; when it comes back (a new epoch), or the gateway
reports a resync because an actor behind it restarted, everything shown is re-read.
The model (`AttachModel`) holds no terminal code, so it is what tests drive.
"""

from __future__ import annotations

import asyncio
import shlex
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click
import zmq

from .. import errors, wire
from ..home import Home
from .base import Ctx, main
from .chat import format_message, gateway

HEARTBEAT_GRACE_S = 3.5  # the gateway beats every second
STATUS_EVERY_S = 2.0
CALL_RETRIES = 5  # the same request id each time: a slow answer is waited for, not redone
HISTORY_LIMIT = 200
MARKS = {"pending": "…", "sent": "✓", "delivered": "✓✓", "received": ""}
# Our messages' states only move forward.
RANK = {"pending": 0, "sent": 1, "delivered": 2}
KEEP_STATES = 1000  # state events remembered for messages not on the screen yet


def _moves_forward(old: Any, new: str) -> bool:
    return old not in RANK or new not in RANK or RANK[new] >= RANK[old]


HELP = """commands:
  text                      post to the open conversation
  /open NAME                open a conversation (id, room name or contact name)
  /send CONTACT TEXT        direct message       /post ROOM TEXT   post in a room
  /invite                   show your invite     /add NAME INVITE  add a contact
  /contacts                 list contacts        /verify NAME      safety number
  /create ROOM              create a room        /join INVITE      join a room
  /roominvite ROOM          a room's invite      /inbox            unread messages
  /quit                     leave (also Ctrl-D); Ctrl-N / Ctrl-P: next / previous"""


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
        elif topic == "gateway.resync":
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

    async def submit(self, line: str) -> bool:
        """Handle one input line; False when the user asked to quit."""
        line = line.strip()
        if not line:
            return True
        try:
            if line.startswith("/"):
                return await self._command(line)
            if self.current is None:
                self.notice = "no open conversation: /open NAME, /send CONTACT TEXT or /help"
            else:
                got = await self.call("post", {"conversation": self.current, "text": line})
                self.notice = f"sent ({got['state']})"
                await self.load_current()
        except errors.BusError as exc:
            self.notice = f"error: {exc.message}"
        except ValueError as exc:
            self.notice = f"error: {exc}"
        self.on_change()
        return True

    async def _command(self, line: str) -> bool:
        word, _, rest = line[1:].partition(" ")
        rest = rest.strip()
        if word in ("quit", "q", "exit"):
            return False
        if word == "help":
            self.notice = HELP
        elif word == "open":
            conv = await self.call("open", {"conversation": rest})
            self.current = conv["id"]
            await self.refresh()
            self.notice = f"opened {conv.get('name') or conv['id']}"
        elif word in ("send", "post"):
            target, _, text = rest.partition(" ")
            method, key = ("send", "contact") if word == "send" else ("post", "conversation")
            got = await self.call(method, {key: target, "text": text})
            self.notice = f"sent to {target} ({got['state']})"
            self.current = got["conversation"]
            await self.refresh()
        elif word == "invite":
            self.notice = (await self.call("invite"))["invite"]
        elif word == "add":
            name, invite_text = _two(rest, "/add NAME INVITE")
            got = await self.call("contact_add", {"name": name, "invite": invite_text})
            self.notice = f"added {got['name']} ({got['peer_id']})"
        elif word == "contacts":
            found = await self.call("contact_list")
            self.notice = "\n".join(f"{c['name']}  {c['peer_id']}" for c in found) \
                or "no contacts yet"
        elif word == "verify":
            got = await self.call("contact_verify", {"name": rest})
            self.notice = f"safety number with {got['name']}: {got['safety_number']}"
        elif word == "create":
            got = await self.call("room_create", {"name": rest})
            self.current = got["id"]
            await self.refresh()
            self.notice = f"room {got['name']} created; invite:\n{got['invite']}"
        elif word == "join":
            got = await self.call("room_join", {"invite": rest})
            self.current = got["id"]
            await self.refresh()
            self.notice = f"joined {got['name']}"
        elif word == "roominvite":
            self.notice = (await self.call("room_invite", {"conversation": rest}))["invite"]
        elif word == "inbox":
            found = await self.call("inbox")
            self.notice = "\n".join(f"{c['name'] or c['id']}: {c['unread']} unread"
                                    for c in found) or "no unread messages"
        else:
            self.notice = f"unknown command /{word}; /help lists them"
        return True

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

    def conversation_lines(self) -> list[tuple[bool, str]]:
        out = []
        for c in self.conversations:
            unread = int(c.get("unread") or 0)
            label = (c.get("name") or c["id"])[:20] + (f" ({unread})" if unread else "")
            out.append((c["id"] == self.current, label))
        return out

    def message_lines(self) -> list[str]:
        out = []
        for m in self.messages:
            mark = MARKS.get(str(m.get("state")), str(m.get("state")))
            out.append(format_message({**m, "state": "received"}) +
                       (f"  {mark}" if mark else ""))
        return out or ["(no messages)"]


def _two(text: str, usage: str) -> tuple[str, str]:
    try:
        parts = shlex.split(text)
    except ValueError:
        parts = text.split()
    if len(parts) != 2:
        raise ValueError(f"usage: {usage}")
    return parts[0], parts[1]


class EventReader:
    """Reads the gateway's events in a thread and hands them to the asyncio loop;
    watches its heartbeat to tell connected from reconnecting."""

    def __init__(self, home: Home, loop: asyncio.AbstractEventLoop,
                 queue: asyncio.Queue[tuple[str, Any]]) -> None:
        self.endpoint = home.endpoints().events("gateway")
        self.loop = loop
        self.queue = queue
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="attach-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(2)

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:
            self._stop.set()  # the loop is gone: attach is ending

    def _run(self) -> None:
        sub = zmq.Context.instance().socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"gateway.")
        sub.connect(self.endpoint)
        epoch, heard, up = None, 0.0, None
        try:
            while not self._stop.is_set():
                if sub.poll(200):
                    frames = sub.recv_multipart()
                    try:
                        topic, ev = frames[0].decode(), wire.loads(frames[-1])
                        new_epoch = ev["epoch"]
                    except Exception:
                        continue
                    heard = time.monotonic()
                    if new_epoch != epoch or not up:
                        self._put(("attach.connected", {"restarted": new_epoch != epoch}))
                        epoch, up = new_epoch, True
                    if not topic.endswith(".sys.heartbeat"):
                        self._put((topic, ev.get("data")))
                elif up is not False and time.monotonic() - heard > HEARTBEAT_GRACE_S:
                    up = False
                    self._put(("attach.disconnected", {}))
        finally:
            sub.close()


async def run_attach(model: AttachModel) -> None:
    """The full-screen app around `model`; returns when the user quits."""
    from prompt_toolkit.application import Application
    from prompt_toolkit.buffer import Buffer
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.layout import HSplit, Layout, VSplit, Window
    from prompt_toolkit.layout.controls import BufferControl, FormattedTextControl

    def conversations_text() -> list[tuple[str, str]]:
        rows = [("bold", " conversations\n")]
        for selected, label in model.conversation_lines():
            rows.append(("reverse" if selected else "", f" {label}\n"))
        return rows

    def messages_text() -> str:
        return "\n".join(model.message_lines()[-500:])

    app: Application[None]
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def submitted(text: str) -> None:
        if not await model.submit(text):
            app.exit()

    def accept(buf: Buffer) -> bool:
        spawn(submitted(buf.text))
        return False  # clears the line

    keys = KeyBindings()

    @keys.add("c-d")
    @keys.add("c-c")
    def _quit(event: Any) -> None:
        event.app.exit()

    @keys.add("c-n")
    def _next(event: Any) -> None:
        model.switch(1)
        spawn(model.load_current())

    @keys.add("c-p")
    def _prev(event: Any) -> None:
        model.switch(-1)
        spawn(model.load_current())

    entry = Buffer(multiline=False, accept_handler=accept)
    layout = Layout(HSplit([
        Window(FormattedTextControl(lambda: [("reverse", model.status_line())]), height=1),
        VSplit([
            Window(FormattedTextControl(conversations_text), width=26),
            Window(width=1, char="│"),
            Window(FormattedTextControl(messages_text), wrap_lines=True),
        ]),
        Window(FormattedTextControl(lambda: model.notice), height=4, wrap_lines=True,
               style="italic"),
        Window(BufferControl(entry), height=1,
               get_line_prefix=lambda *_: [("bold", "> ")]),
    ]), focused_element=entry)
    app = Application(layout=layout, key_bindings=keys, full_screen=True)
    model.on_change = app.invalidate

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    reader = EventReader(model.home, loop, queue)

    async def pump() -> None:
        while True:
            topic, data = await queue.get()
            if topic == "attach.connected":
                await model.set_connected(True, bool(data.get("restarted")))
            elif topic == "attach.disconnected":
                await model.set_connected(False, False)
            else:
                await model.on_event(topic, data)

    async def status_loop() -> None:
        while True:
            await model.refresh_status()
            await asyncio.sleep(STATUS_EVERY_S)

    reader.start()
    spawn(pump())
    spawn(status_loop())
    spawn(model.refresh())
    try:
        await app.run_async()
    finally:
        for task in list(tasks):
            task.cancel()
        reader.stop()


@main.command()
@click.pass_obj
def attach(obj: Ctx) -> None:
    """An interactive chat screen on this node (live messages, delivery marks)."""
    from .chat import node_may_run
    from .base import EXIT_TIMEOUT, fail

    if not node_may_run(obj.home):
        fail(f"the node in {obj.home.root} is not running (p2pm up starts it)", EXIT_TIMEOUT)
    asyncio.run(run_attach(AttachModel(obj.home)))
