"""Text from peers is data: how the CLI and `p2pm attach` show it without a terminal
interpreting any of it.

A message body, a contact's or a room's name, an author name: all of it comes from
other people's nodes. Printed raw, an ESC starts a terminal command (an OSC title, a
cursor move, a clear screen), a carriage return overwrites the line with a spoofed
author, and a bidi override turns the rest of the line around. `inert` is the one
function every display path uses:

- C0 controls (U+0000-U+001F, except tab and newline) and DEL become their Unicode
  control pictures (ESC shows as U+241B, CR as U+240D), one column each;
- C1 controls (U+0080-U+009F), the bidi embeddings, overrides, isolates and marks
  (U+202A-U+202E, U+2066-U+2069, U+200E, U+200F, U+061C) and their kin, the line
  and paragraph separators and lone surrogates become a visible escape like `\\u202e`;
- tab stays (a terminal moves to the next tab stop; attach expands it to spaces);
- a newline stays only where the caller says how continuation lines are indented
  (`indent`), so a body cannot start a line that looks like another author's; where
  one line is expected (a name) it shows as U+2424.

Everything else passes unchanged, joiners and variation selectors included: emoji
sequences, CJK, combining marks and right-to-left scripts display as their own
characters; only the invisible reordering controls are shown.

`inert_json` does the same for JSON output: it writes those characters as `\\uXXXX`
escapes (JSON says they mean the same), so `--json` stays exact and still inert.
"""

from __future__ import annotations

import re

NEWLINE_PICTURE = "\u2424"

# What a terminal may interpret, besides C0 and DEL: C1; the bidi marks (U+061C,
# U+200E, U+200F), embeddings and overrides (U+202A-U+202E), isolates (U+2066-U+2069)
# and the deprecated shaping controls next to them (U+206A-U+206F); the line and
# paragraph separators; the interlinear annotation controls.
_OTHER = "\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2028\u2029\u2066-\u206f\ufff9-\ufffb"
# Only these code points need a look per character; the rest is copied as it is.
_SUSPECT = re.compile(f"[\x00-\x1f{_OTHER}\ud800-\udfff]")


def _escape(ch: str) -> str:
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _shown(ch: str, indent: str | None) -> str:
    code = ord(ch)
    if ch == "\t":
        return ch
    if ch == "\n":
        return NEWLINE_PICTURE if indent is None else "\n" + indent
    if code < 0x20:
        return chr(0x2400 + code)  # the control pictures block is in code order
    if code == 0x7F:
        return "\u2421"
    return _escape(ch)  # C1, bidi and the rest of _SUSPECT: no picture exists


def inert(text: object, indent: str | None = None) -> str:
    """`text` as it can be printed to a terminal safely (see the module docstring).

    indent: None for one-line text (a newline is shown as U+2424); else the prefix
    of every continuation line of a multi-line body."""
    s = text if isinstance(text, str) else str(text)
    if not _SUSPECT.search(s):
        return s
    return _SUSPECT.sub(lambda m: _shown(m.group(), indent), s)


_JSON_SUSPECT = re.compile(f"[{_OTHER}]")


def inert_json(text: str) -> str:
    """JSON text (from orjson, which already escapes C0 controls) with the other
    characters a terminal would interpret written as `\\uXXXX`. They can only occur
    inside JSON strings, where the escape means the same character."""
    return _JSON_SUSPECT.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
