"""The layout rules of `p2pm attach`'s panes, with no terminal code: how text wraps
into rows of a given width, and which rows a scrollable pane shows.

Widths are display columns (a CJK character or an emoji takes two, a combining mark
none), counted per code point as prompt_toolkit's renderer counts them (so a ZWJ
emoji sequence counts as the sum of its parts: rows stay within the width).
Wrapping breaks at spaces; a word is broken only when it is wider than a whole row,
and never inside a character with its combining marks or a ZWJ sequence. Tabs become spaces up to the next multiple of TAB_WIDTH.

A pane (`Scroll`) either follows the newest row (the bottom stays in view as rows
arrive) or stays where the user scrolled to, anchored to a row key (a message id and
the row within it), so new rows below it, or old ones dropping off the top, do not
move what the user is reading. Scrolling down to the bottom follows again.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from wcwidth import wcwidth

TAB_WIDTH = 4
ZWJ = "\u200d"

_TOKENS = re.compile(r"[ \t]+|[^ \t]+")


def char_width(ch: str) -> int:
    """Columns the terminal gives `ch`; a control (never passed here after `inert`)
    counts as one so nothing can make a row longer than measured."""
    w = wcwidth(ch)
    return 1 if w < 0 else w


def text_width(text: str) -> int:
    return sum(char_width(ch) for ch in text)


def expand_tabs(text: str, start: int = 0) -> str:
    """Tabs as spaces to the next tab stop, counting columns from `start`."""
    if "\t" not in text:
        return text
    out, col = [], start
    for ch in text:
        if ch == "\t":
            n = TAB_WIDTH - (col - start) % TAB_WIDTH
            out.append(" " * n)
            col += n
        else:
            out.append(ch)
            col += char_width(ch)
    return "".join(out)


def _clusters(word: str) -> list[str]:
    """`word` cut where it may be broken: not before a zero-width character (a
    combining mark, a variation selector, ZWJ) nor right after a ZWJ."""
    out: list[str] = []
    for ch in word:
        if out and (char_width(ch) == 0 or out[-1].endswith(ZWJ)):
            out[-1] += ch
        else:
            out.append(ch)
    return out


def wrap(text: str, width: int, indent: int = 0) -> list[str]:
    """One paragraph (no newline) as rows at most `width` columns wide; rows after
    the first start with `indent` spaces (a hanging indent, capped so that at least
    a quarter of the row is left for text). Spaces at a break are dropped."""
    width = max(1, width)
    indent = min(indent, width * 3 // 4)
    text = expand_tabs(text)
    rows: list[str] = []
    row, used = "", 0

    def new_row() -> None:
        nonlocal row, used
        rows.append(row.rstrip(" "))
        row, used = " " * indent, indent

    for token in _TOKENS.findall(text):
        w = text_width(token)
        if token[0] == " ":
            if used + w <= width:
                row, used = row + token, used + w
            elif used > (indent if rows else 0):
                new_row()  # the break replaces the spaces
            continue
        if used + w <= width:
            row, used = row + token, used + w
            continue
        if w <= width - indent and used > (indent if rows else 0):
            new_row()
            row, used = row + token, used + w
            continue
        for piece in _clusters(token):  # wider than a row: break it where it must
            pw = text_width(piece)
            if used + pw > width and used > (indent if rows else 0):
                new_row()
                if used + pw > width:  # too wide for an indented row: use it all
                    row, used = "", 0
            row, used = row + piece, used + pw
    rows.append(row.rstrip(" "))
    return rows


def cut(text: str, width: int) -> str:
    """`text` shortened to `width` columns, ending in an ellipsis when shortened."""
    if text_width(text) <= width:
        return text
    out, used = "", 0
    for piece in _clusters(text):
        pw = text_width(piece)
        if used + pw > width - 1:
            break
        out, used = out + piece, used + pw
    return out + "…"


@dataclass
class Scroll:
    """Which rows of a pane are in view. Keys name rows stably across re-wrapping
    and reloads: (message id, row within the message)."""

    follow: bool = True
    anchor: Hashable | None = None  # the key of the top row, when not following
    height: int = 1  # the rows the pane had when last drawn (for page steps)

    def window(self, keys: Sequence[Hashable], height: int) -> tuple[int, int]:
        """The (first, end) indexes of the rows to show, `height` of them at most."""
        self.height = max(1, height)
        bottom = max(0, len(keys) - self.height)
        if self.follow:
            top = bottom
        elif self.anchor is None:
            top = 0  # opened at its start (a help view)
        else:
            try:
                top = min(list(keys).index(self.anchor), bottom)
            except ValueError:
                top = 0  # the anchored row is gone (reloaded): the oldest shown
        return top, min(len(keys), top + self.height)

    def scroll(self, keys: Sequence[Hashable], rows: int) -> None:
        """Move by `rows` (negative: up, to older rows). Reaching the bottom follows."""
        if not keys:
            return
        top, _ = self.window(keys, self.height)
        bottom = max(0, len(keys) - self.height)
        top = max(0, min(bottom, top + rows))
        self.follow = top >= bottom
        self.anchor = None if self.follow else keys[top]

    def page(self, keys: Sequence[Hashable], pages: int) -> None:
        self.scroll(keys, pages * max(1, self.height - 1))

    def home(self, keys: Sequence[Hashable]) -> None:
        self.scroll(keys, -len(keys))

    def end(self) -> None:
        self.follow, self.anchor = True, None
