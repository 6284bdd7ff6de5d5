"""The attach screen's model against a scripted gateway: delivery marks never go
stale or backwards, whatever order the history and the state events arrive in; rows
wrap at words within the pane's width; a scrolled pane stays put while a followed
one shows the newest; peer text is drawn inert."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from p2pm.common.cli.attach import COMMANDS, HANGING, HELP, AttachModel
from p2pm.common.cli.pane import Scroll, text_width, wrap
from p2pm.common.cli.safe import inert, inert_json
from p2pm.common.home import Home


class Scripted(AttachModel):
    """The gateway answers from `history`; `during_history` runs while a history
    request is on its way (as events are handled meanwhile in the real screen)."""

    history: list[dict[str, Any]]
    during_history: list[tuple[str, dict[str, Any]]]

    async def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if method == "history":
            snapshot = [dict(m) for m in self.history]
            for topic, data in self.during_history:
                await self.on_event(topic, data)
            return snapshot
        assert method == "mark_read"
        return {}


def model(tmp_path: Path, history: list[dict[str, Any]],
          during: list[tuple[str, dict[str, Any]]] = []) -> Scripted:  # noqa: B006
    m = Scripted(Home(tmp_path), current="conv")
    m.history, m.during_history = history, during
    return m


def mine(state: str) -> dict[str, Any]:
    return {"id": "m1", "author": "me", "body": "hello", "ts": 0, "state": state}


def state(value: str) -> tuple[str, dict[str, Any]]:
    return ("gateway.message.state", {"id": "m1", "conversation": "conv", "state": value})


async def test_a_receipt_handled_while_the_history_loads_is_not_lost(tmp_path: Path) -> None:
    # Right after posting: the history read says "sent", and the receipt's event came
    # while it was on its way (so there was no message on screen to mark).
    m = model(tmp_path, [mine("sent")], during=[state("delivered")])
    await m.load_current()
    assert m.message_lines()[0].endswith("✓✓")


async def test_marks_only_move_forward(tmp_path: Path) -> None:
    m = model(tmp_path, [mine("sent")])
    await m.load_current()
    assert m.message_lines()[0].endswith("  ✓")
    await m.on_event(*state("delivered"))
    assert m.message_lines()[0].endswith("✓✓")
    await m.on_event(*state("sent"))  # a late event about an earlier step
    assert m.message_lines()[0].endswith("✓✓")
    # A history older than what the events told changes nothing either.
    m.history = [mine("pending")]
    await m.load_current()
    assert m.message_lines()[0].endswith("✓✓")


async def test_bad_state_events_change_nothing(tmp_path: Path) -> None:
    m = model(tmp_path, [mine("sent")])
    await m.load_current()
    for data in ({"id": "m1"}, {"id": 5, "state": "delivered"}, {"state": "delivered"},
                 {"id": "m1", "state": None}):
        await m.on_event("gateway.message.state", data)
    assert m.message_lines()[0].endswith("  ✓")
    assert not m.states


# -- what the screen draws: wrapping, scrolling, inert text ---------------------------

def rows_of(m: AttachModel, width: int) -> list[str]:
    return [text for _, _, text in m.message_rows(width)]


@given(st.text(st.characters(blacklist_categories=("Cs",)), max_size=300),
       st.integers(1, 100), st.integers(0, 20))
def test_no_row_is_wider_than_the_pane(text: str, width: int, indent: int) -> None:
    for para in inert(text, indent="").split("\n"):
        for row in wrap(para, width, indent):
            assert text_width(row) <= max(width, 2)  # a 2-column character in 1 column


@given(st.lists(st.text("abcdefghij", min_size=1, max_size=12), min_size=1, max_size=60),
       st.integers(16, 80))  # every word fits in a row less its 4-column indent
def test_words_are_broken_only_when_wider_than_a_row(words: list[str], width: int) -> None:
    rows = wrap(" ".join(words), width, 4)
    assert [w for row in rows for w in row.split()] == words


def test_a_word_wider_than_the_row_is_broken_and_its_clusters_kept() -> None:
    assert wrap("ab " + "x" * 25, 10) == ["ab xxxxxxx", "xxxxxxxxxx", "xxxxxxxx"]
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"  # one ZWJ sequence
    accented = "e\u0301"
    for row in wrap((family + accented) * 10, 9):
        assert not row.startswith(("\u200d", "\u0301"))
        assert row.count("\u200d") % 2 == 0


def test_tabs_become_spaces_to_the_next_stop() -> None:
    assert wrap("a\tbb\tccc\td", 40) == ["a   bb  ccc d"]
    assert "\t" not in "".join(wrap("\t" * 30, 20))


async def test_a_body_line_cannot_pass_for_another_message(tmp_path: Path) -> None:
    body = "hi\n[12:00:00] alice: send the money\x1b]0;x\x07\rmallory: \u202e"
    m = model(tmp_path, [{"id": "m1", "author": "b", "author_name": "bob", "body": body,
                          "ts": 0, "state": "received"}])
    await m.load_current()
    rows = rows_of(m, 60)
    assert rows[0].endswith("bob: hi")
    assert all(row.startswith(" " * HANGING) for row in rows[1:])
    shown = " ".join(row.strip() for row in rows)  # joined where it wrapped
    assert "\x1b" not in shown and "\r" not in shown and "\u202e" not in shown
    assert "␛]0;x␇␍mallory: \\u202e" in shown


def test_inert_shows_controls_and_keeps_what_people_type() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x202A, 0x202E, 0x2066, 0x2069,
                 0x200E, 0x200F, 0x061C, 0x2028, 0x2029]:
        ch = chr(code)
        if ch in "\t\n":
            continue
        out = inert(f"a{ch}b")
        assert ch not in out and out.startswith("a") and out.endswith("b") and len(out) > 2
    assert inert("one\ntwo") == "one␤two"
    assert inert("one\ntwo", indent="    ") == "one\n    two"
    assert inert("tab\there") == "tab\there"
    typed = ("\U0001F468\u200d\U0001F469\u200d\U0001F467 \U0001F9D1\u200d\U0001F4BB "
             "no\u00a0break narrow\u202fnbsp 中文\u3000文字 soft\u00adhyphen "
             "عربي עברית e\u0301 \ufe0f")
    assert inert(typed) == typed
    # JSON output: the same characters as \\u escapes, which JSON reads back the same.
    doc = orjson.dumps({"t": "x\u202ey\x9bz\u2066"}).decode()
    assert orjson.loads(inert_json(doc)) == {"t": "x\u202ey\x9bz\u2066"}
    assert "\u202e" not in inert_json(doc) and "\x9b" not in inert_json(doc)


def keys(n: int) -> list[tuple[str, int]]:
    return [("m", i) for i in range(n)]


def test_a_pane_follows_the_newest_until_scrolled_up() -> None:
    s = Scroll()
    assert s.window(keys(50), 10) == (40, 50)
    assert s.window(keys(60), 10) == (50, 60)  # new rows: still at the bottom
    s.page(keys(60), -1)  # a page is the height less one row, for context
    assert s.window(keys(60), 10) == (41, 51) and not s.follow
    # New rows below, or old ones dropping off the top, do not move what is read.
    assert s.window(keys(80), 10) == (41, 51)
    assert s.window(keys(80)[5:], 10) == (36, 46)
    s.home(keys(80))
    assert s.window(keys(80), 10) == (0, 10)
    s.scroll(keys(80), 69)
    assert not s.follow
    s.scroll(keys(80), 1)  # the bottom reached: following again
    assert s.follow and s.window(keys(90), 10) == (80, 90)
    s.scroll(keys(90), -3)
    s.end()
    assert s.window(keys(90), 10) == (80, 90)


def test_help_fits_80_columns_and_names_every_command() -> None:
    assert all(text_width(line) <= 78 for line in HELP.splitlines())
    assert {"/open", "/send", "/post", "/invite", "/add", "/contacts", "/verify",
            "/create", "/join", "/roominvite", "/inbox", "/help", "/quit"} <= set(COMMANDS)


async def test_scrolled_up_the_title_counts_the_messages_below(tmp_path: Path) -> None:
    m = model(tmp_path, [{"id": f"m{i}", "author": "b", "author_name": "bob",
                          "body": f"message {i}", "ts": 0, "state": "received"}
                         for i in range(30)])
    await m.load_current()
    shown = m.rows(60)[1]
    m.chat.window([k for k, _, _ in shown], 10)  # drawn 10 rows high: 20 to 29 in view
    assert m.scroll_hint() == ""
    m.scroll(-5)
    assert m.scroll_hint() == "[5 newer below: End]"
    m.to_newest()
    assert m.scroll_hint() == ""


async def test_a_message_request_is_told_at_once_with_how_to_answer(tmp_path: Path) -> None:
    m = model(tmp_path, [])
    peer = "12D3KooWLjsRyMwmfsbnjBpX1nsw9Tcjb9rHsJQrrUTWGcbVdfc4"
    await m.on_event("gateway.request.received", {
        "peer_id": peer, "name": "Mallory\u202e\x1b[2J", "conversation": "c2",
        "messages": 2})
    assert m.notice.startswith("message request from ~Mallory")
    assert f"p2pm requests accept|block {peer}" in m.notice
    assert "\x1b" not in m.notice and "\u202e" not in m.notice  # shown, not obeyed
    before = m.notice
    await m.on_event("gateway.request.received", {"name": "no peer id"})
    assert m.notice == before  # a malformed event changes nothing
