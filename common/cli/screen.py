"""The terminal side of `p2pm attach`: prompt_toolkit draws the rows the model
(`attach.AttachModel`) lays out for each pane's size, and hands it keys, the mouse
wheel and the gateway's live events (read by `EventReader` in a thread). No rule of
what is shown lives here; see attach.py for those and for why prompt_toolkit.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import zmq

from .. import wire
from ..home import Home
from . import pane
from .safe import inert
from .attach import (CONVERSATIONS_WIDTH, HEARTBEAT_GRACE_S, QUIT, REFUSED, STATUS_EVERY_S,
                     WHEEL_ROWS, AttachModel)


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
    from prompt_toolkit.document import Document
    from prompt_toolkit.filters import Condition
    from prompt_toolkit.key_binding import KeyBindings
    from prompt_toolkit.layout import ConditionalContainer, HSplit, Layout, VSplit, Window
    from prompt_toolkit.layout.controls import (BufferControl, FormattedTextControl,
                                                UIContent, UIControl)
    from prompt_toolkit.layout.processors import TabsProcessor
    from prompt_toolkit.mouse_events import MouseEvent, MouseEventType
    from prompt_toolkit.styles import Style

    class FrontPane(UIControl):
        """The chat, or the view over it: the rows the model wraps for this width,
        the ones its scroll state puts in view; the wheel scrolls it."""

        def create_content(self, width: int, height: int) -> UIContent:
            scroll, rows = model.rows(width)
            first, end = scroll.window([k for k, _, _ in rows], height)
            shown = [[(style, text)] for _, style, text in rows[first:end]]
            return UIContent(get_line=lambda i: shown[i], line_count=len(shown),
                             show_cursor=False)

        def mouse_handler(self, mouse_event: MouseEvent) -> Any:
            if mouse_event.event_type == MouseEventType.SCROLL_UP:
                model.scroll(-WHEEL_ROWS)
            elif mouse_event.event_type == MouseEventType.SCROLL_DOWN:
                model.scroll(WHEEL_ROWS)
            else:
                return NotImplemented
            return None

    class Notice(UIControl):
        """The last action's outcome, wrapped; two rows at most."""

        def create_content(self, width: int, height: int) -> UIContent:
            notice = inert(model.notice, indent="")  # errors may quote what came back
            rows = [r for para in notice.split("\n") for r in pane.wrap(para, width, 2)]
            if len(rows) > height:
                rows = rows[:height - 1] + [pane.cut(rows[height - 1] + " ...", width)]
            return UIContent(get_line=lambda i: [("class:notice", rows[i])],
                             line_count=len(rows), show_cursor=False)

    def conversations_text() -> list[tuple[str, str]]:
        rows = [("bold", " conversations\n")]
        for selected, label in model.conversation_lines(CONVERSATIONS_WIDTH - 2):
            rows.append(("reverse" if selected else "", f" {label}\n"))
        return rows

    def hint_width() -> int:
        hint = model.scroll_hint()
        return pane.text_width(hint) + 1 if hint else 0

    app: Application[None]
    tasks: set[asyncio.Task[None]] = set()

    def spawn(coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def submitted(buf: Buffer, text: str) -> None:
        outcome = await model.submit(text)
        if outcome == QUIT:
            app.exit()
        elif outcome == REFUSED:
            # The line was cleared on Enter (so typing on while a send is under way
            # starts a new line); a refused one comes back to be fixed, unless the
            # user has typed something new meanwhile.
            if not buf.text:
                buf.set_document(Document(text, len(text)))
            else:
                model.notice += " (not put back in the input line: you typed on)"
                model.on_change()

    def accept(buf: Buffer) -> bool:
        spawn(submitted(buf, buf.text))
        return False  # clears the line

    keys = KeyBindings()
    in_view = Condition(lambda: model.view_title is not None)

    @keys.add("c-d")
    @keys.add("c-c")
    def _quit(event: Any) -> None:
        event.app.exit()

    @keys.add("c-n")
    def _next(event: Any) -> None:
        model.close_view()
        model.switch(1)
        spawn(model.load_current())

    @keys.add("c-p")
    def _prev(event: Any) -> None:
        model.close_view()
        model.switch(-1)
        spawn(model.load_current())

    @keys.add("pageup")
    def _page_up(event: Any) -> None:
        model.scroll(pages=-1)

    @keys.add("pagedown")
    def _page_down(event: Any) -> None:
        model.scroll(pages=1)

    @keys.add("up")
    def _up(event: Any) -> None:
        model.scroll(-1)

    @keys.add("down")
    def _down(event: Any) -> None:
        model.scroll(1)

    @keys.add("end")
    def _end(event: Any) -> None:
        model.to_newest()
        entry.cursor_position = len(entry.text)

    @keys.add("c-home")
    def _oldest(event: Any) -> None:
        model.to_oldest()

    @keys.add("escape", filter=in_view, eager=True)
    def _close(event: Any) -> None:
        model.close_view()
        model.on_change()

    entry = Buffer(multiline=False, accept_handler=accept)
    front = Window(FrontPane())
    layout = Layout(HSplit([
        Window(FormattedTextControl(lambda: [("reverse", model.status_line())]), height=1),
        VSplit([
            ConditionalContainer(VSplit([
                Window(FormattedTextControl(conversations_text),
                       width=CONVERSATIONS_WIDTH),
                Window(width=1, char="│"),
            ]), filter=~in_view),  # the view takes the whole width, so help fits at 80
            HSplit([
                VSplit([
                    Window(FormattedTextControl(lambda: f" {model.title()}"),
                           style="class:titlebar"),
                    Window(FormattedTextControl(lambda: model.scroll_hint()),
                           width=hint_width, style="class:hint"),
                ], height=1),
                front,
            ]),
        ]),
        Window(Notice(), height=2),
        Window(BufferControl(entry, input_processors=[TabsProcessor(char1=" ", char2=" ")]),
               height=1, get_line_prefix=lambda *_: [("bold", "> ")]),
    ]), focused_element=entry)
    style = Style.from_dict({"titlebar": "bold underline", "hint": "reverse",
                             "notice": "italic", "faint": "italic"})
    app = Application(layout=layout, key_bindings=keys, full_screen=True,
                      mouse_support=True, style=style)
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
