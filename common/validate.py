"""One rule each for the strings people type and the ids actors pass around: message
text, names, ids, and the references people use for a conversation or contact. The
gateway (what the user typed), gossip (what a peer sent) and storage (what is written)
all check with these, so a string one of them takes is never refused by another.

The rules
---------
* Message text: any Unicode except control characters other than tab and newline
  (C0 U+0000-U+001F, DEL U+007F, C1 U+0080-U+009F), and no lone surrogates (not
  text). Not blank, at most MAX_TEXT_BYTES of UTF-8. What a person types is first
  normalised (`message_text`): CRLF and a lone CR become LF, so a pasted Windows text
  is not refused; what a peer sends is checked as it is (`check_message_text`): a
  signed body is never rewritten. Everything else is accepted: ZWJ emoji sequences,
  no-break and narrow no-break spaces, the ideographic space, soft hyphens,
  combining marks, right-to-left scripts.
* Names (contacts, rooms, the name in an invite): the same characters without tab and
  newline, not blank, at most MAX_NAME_CHARS (64) characters. 64 is what an invite has
  always carried and what fits a conversation list; one limit everywhere means a name
  accepted in one place (a room invite, a contact) is never refused in another.
* Ids (message, conversation and peer ids, storage keys): printable, no whitespace,
  1 to MAX_ID_CHARS characters (or a caller's own maximum).
* References (what a person types to name a conversation or contact: a name or an
  id): not blank, no control characters, at most MAX_REF_CHARS.

Each check returns the (normalised) value or raises `Invalid`, a ValueError whose
message is meant for the person who gave the value.
"""

from __future__ import annotations

import re

MAX_TEXT_BYTES = 16 * 1024
MAX_NAME_CHARS = 64
MAX_ID_CHARS = 128
MAX_REF_CHARS = max(MAX_NAME_CHARS, MAX_ID_CHARS)

# Control characters (and lone surrogates), in one C-speed search; tab and newline
# are allowed in text and refused in names.
_TEXT_FORBIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")
_NAME_FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SPACE = re.compile(r"\s")
_LINE_ENDS = re.compile("\r\n?")


class Invalid(ValueError):
    """A value that breaks its rule; the message says which rule."""


def _describe(found: re.Match[str]) -> str:
    c = found.group()
    if "\ud800" <= c <= "\udfff":
        return f"a lone surrogate (U+{ord(c):04X}) at position {found.start()}"
    return f"a control character (U+{ord(c):04X}) at position {found.start()}"


def normalise_line_ends(text: str) -> str:
    """CRLF and a lone CR become LF."""
    return _LINE_ENDS.sub("\n", text) if "\r" in text else text


def check_message_text(text: object) -> str:
    """A message body as it is (no normalisation): the rule above, or Invalid."""
    if not isinstance(text, str):
        raise Invalid("the message must be text")
    if not text.strip():
        raise Invalid("the message is empty")
    bad = _TEXT_FORBIDDEN.search(text)
    if bad is not None:
        raise Invalid(f"the message contains {_describe(bad)}; only tab and newline "
                      "are allowed among control characters")
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise Invalid(f"the message is {size} bytes; at most {MAX_TEXT_BYTES} bytes "
                      "are allowed")
    return text


def message_text(text: object) -> str:
    """What a person typed as a message: line ends normalised, then checked."""
    if isinstance(text, str):
        text = normalise_line_ends(text)
    return check_message_text(text)


def check_name(name: object, what: str = "a name", *, empty: bool = False) -> str:
    """A contact's or room's name; `empty`: "" is allowed (no name)."""
    return check_line(name, what, MAX_NAME_CHARS, empty=empty)


def is_name(name: object, *, empty: bool = False) -> bool:
    """Whether `check_name` takes it."""
    try:
        check_name(name, empty=empty)
    except Invalid:
        return False
    return True


def check_line(value: object, what: str, max_chars: int, *, empty: bool = False) -> str:
    """One line of text (a name, an error note): not blank, no control characters."""
    if not isinstance(value, str):
        raise Invalid(f"{what} must be text")
    if empty and value == "":
        return value
    if not value.strip() or len(value) > max_chars:
        raise Invalid(f"{what} must be 1-{max_chars} characters, not blank")
    bad = _NAME_FORBIDDEN.search(value)
    if bad is not None:
        raise Invalid(f"{what} contains {_describe(bad)}")
    return value


def check_id(value: object, what: str = "an id", max_chars: int = MAX_ID_CHARS) -> str:
    """A machine id: 1-max_chars printable characters without whitespace."""
    if not isinstance(value, str) or not value or len(value) > max_chars \
            or not value.isprintable() or _SPACE.search(value):
        raise Invalid(f"{what} must be 1-{max_chars} printable characters without spaces")
    return value


def check_ref(ref: object, what: str = "a reference") -> str:
    """What a person typed to name something: a name or an id."""
    if not isinstance(ref, str) or not ref.strip() or len(ref) > MAX_REF_CHARS \
            or _NAME_FORBIDDEN.search(ref):
        raise Invalid(f"{what} must be 1-{MAX_REF_CHARS} characters without control "
                      "characters")
    return ref
