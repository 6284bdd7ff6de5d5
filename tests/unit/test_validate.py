"""The one text, name and id rules of common/validate.py: what people really type
(ZWJ emoji, the spaces of French and CJK typography, soft hyphens, Windows line ends)
is accepted and comes out of a signed, sealed envelope and the storage exactly as it
went in; control characters are refused with their code point named, wherever they
come from."""

from __future__ import annotations

import nacl.signing
import pytest

from p2pm.common import errors, identity, validate
from p2pm.common import invite as invites
from p2pm.services.gateway.actor import check_text
from p2pm.services.gossip import conversations as cv

# The strings of issue 14 item 3, each as a person would type it.
REAL_WORLD = {
    "family ZWJ emoji": "our family: 👨\u200d👩\u200d👧\u200d👦",
    "technologist ZWJ emoji": "on call: 🧑\u200d💻 and 👩🏽\u200d💻",
    "no-break space": "page 12\u00a0km",
    "narrow no-break space": "« bonjour\u202f! »",
    "ideographic space": "東京\u3000大阪",
    "soft hyphen": "super\u00adcali\u00adfragilistic",
    "tab and newline": "col\tcol\nnext line",
    "right-to-left and combining": "שלום — e\u0301te\u0301",
}
# As typed with Windows line ends (or an old Mac's lone CR), and what arrives.
LINE_ENDS = {"line one\r\nline two": "line one\nline two",
             "one\rtwo\r\n\r\nthree": "one\ntwo\n\nthree"}

CONTROLS = [chr(c) for c in [*range(0x00, 0x09), *range(0x0B, 0x20), 0x7F,
                             *range(0x80, 0xA0)]]


@pytest.mark.parametrize("text", list(REAL_WORLD.values()), ids=list(REAL_WORLD))
def test_real_world_text_is_accepted_unchanged(text: str) -> None:
    assert validate.message_text(text) == text
    assert validate.check_message_text(text) == text
    assert check_text(text) == text  # the gateway's door
    assert cv.check_text(text) == text  # what gossip takes from a peer


@pytest.mark.parametrize(("typed", "arrives"), list(LINE_ENDS.items()))
def test_crlf_and_lone_cr_become_lf(typed: str, arrives: str) -> None:
    assert validate.message_text(typed) == arrives
    assert check_text(typed) == arrives
    # A peer's signed body is never rewritten: a CR in it is refused, not "fixed".
    with pytest.raises(ValueError, match="U\\+000D"):
        cv.check_text(typed)


@pytest.mark.parametrize("text", [*REAL_WORLD.values(), *LINE_ENDS.values()])
def test_real_world_text_round_trips_through_a_sealed_envelope(text: str) -> None:
    key = nacl.signing.SigningKey(bytes(range(32)))
    author = identity.peer_id_from_public_key(bytes(key.verify_key))
    keys = cv.Keys.derive("room", cv.new_room_secret())
    plaintext = cv.message_plaintext(keys.id, author, 1, 1_700_000_000.5, text)
    sealed = cv.seal(keys.content_key, identity.sign(key, cv.MESSAGE_DOMAIN, plaintext),
                     plaintext)
    opened = cv.open_envelope(keys, sealed)
    assert opened.text == text and opened.text.encode() == text.encode()


@pytest.mark.parametrize("control", CONTROLS, ids=[f"U+{ord(c):04X}" for c in CONTROLS])
def test_control_characters_are_refused_everywhere(control: str) -> None:
    text = f"before{control}after"
    if control == "\r":  # typed, a CR is a line end; from a peer, a control character
        assert validate.message_text(text) == "before\nafter"
    else:
        with pytest.raises(validate.Invalid, match=f"U\\+{ord(control):04X}\\) at position 6"):
            validate.message_text(text)
        with pytest.raises(errors.BusError) as refused:
            check_text(text)
        assert refused.value.code == errors.BAD_PARAMS
    with pytest.raises(ValueError):
        cv.check_text(text)
    with pytest.raises(validate.Invalid):
        validate.check_name(f"Ann{control}")
    with pytest.raises(validate.Invalid):
        validate.check_ref(f"Ann{control}")


def test_tab_and_newline_are_text_but_not_names() -> None:
    for ws in "\t\n":
        assert validate.message_text(f"a{ws}b") == f"a{ws}b"
        with pytest.raises(validate.Invalid):
            validate.check_name(f"a{ws}b")


def test_empty_oversized_and_non_text_messages_are_refused() -> None:
    for bad in ("", "   ", "\n\t\n", "\u3000", None, b"bytes", 42):
        with pytest.raises(validate.Invalid):
            validate.message_text(bad)
    limit = validate.MAX_TEXT_BYTES
    assert validate.message_text("é" * (limit // 2))  # 2 bytes each: exactly the limit
    with pytest.raises(validate.Invalid, match=f"at most {limit} bytes"):
        validate.message_text("é" * (limit // 2) + "x")
    with pytest.raises(validate.Invalid, match="lone surrogate"):
        validate.message_text("half a pair: \ud83d")


def test_one_name_rule_for_contacts_rooms_and_invites() -> None:
    family = "The 👨\u200d👩\u200d👧\u200d👦\u00a0Smiths"
    assert validate.check_name(family) == family
    assert invites.check_name(family) == family
    longest = "n" * validate.MAX_NAME_CHARS
    assert validate.check_name(longest) == longest
    for bad in ("", "  ", "n" * (validate.MAX_NAME_CHARS + 1)):
        with pytest.raises(validate.Invalid):
            validate.check_name(bad)
        with pytest.raises(invites.InviteError):
            invites.check_name(bad)
    assert validate.check_name("", empty=True) == ""
    # gossip and storage hold names to the same limit
    assert cv.MAX_NAME == invites.MAX_NAME_CHARS == validate.MAX_NAME_CHARS


def test_ids_are_printable_without_spaces() -> None:
    assert validate.check_id("c1f3-ab_CD.9") == "c1f3-ab_CD.9"
    for bad in ("", "a b", "a\u00a0b", "a\tb", "x" * (validate.MAX_ID_CHARS + 1), 7):
        with pytest.raises(validate.Invalid):
            validate.check_id(bad)
    assert validate.check_id("x" * 200, max_chars=256)


def test_is_name_agrees_with_check_name() -> None:
    assert validate.is_name("日本語 room\u00a0🌸") and validate.is_name("", empty=True)
    assert not validate.is_name("") and not validate.is_name("a\x1bb")
