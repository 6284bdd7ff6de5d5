"""A room's content under conversation keys v2, without I/O: the envelope that travels,
sealed with our Megolm sender key (sessions.SenderKey) and opened with the senders'
keys we hold (sessions.RoomKeys), within the room's roster (roster.py).

Envelope (version 2):

    envelope = MAGIC(5) || len(author)(1) || author (peer id bytes)
               || len(session id)(1) || session id (ASCII) || Megolm message
    inner    = signature(64) || plaintext        (what the Megolm message decrypts to)

`plaintext` and its signature are what conversations.py defines (the author signs the
plaintext in MESSAGE_DOMAIN or RECEIPT_DOMAIN), so a message keeps one id and one
author proof whatever carries it. The author and session id are in the clear: the
GossipSub `from` names the author to the topic's peers anyway, and without them a
receiver could not pick the session. An envelope without MAGIC comes from an older
p2pm (version 1 sealed everything with the room secret) and is refused saying so.

Theory of operation. `RoomCrypto` is one room's state:
- `seal(inner, now)` encrypts with our sender key, first making a new one when the old
  must go (sessions.SenderKey.needs_rotation: after ROTATE_AFTER_MESSAGES messages,
  ROTATE_AFTER_S seconds, or a member leaving). A new key comes back in `Sealed.share`
  with the members it must go to: the caller sends it to each over the pairwise
  channel (pairing.py) before or with the message; a member reads the message once the
  key arrived (see holding below).
- `share_for(peer)` is our current key for a member just added: it reads from its
  join on, nothing before (history is not shared).
- `take_key(sender, key, members)` installs a sender's key that came over the pairwise
  channel from that sender. `members` is who the sender shared it with (its view of
  the room at the time); a key whose members include someone our roster has removed
  is out of date and refused: whoever was removed holds it.
- `open(envelope)` gives the author and inner part of a message, or None when its key
  has not come yet: the envelope is then held (bounded per sender and in all) and
  released by the `take_key` that brings its key, for the caller to open again.
  Everything else is EnvelopeRefused, with `penalise` set when the envelope proves the
  forwarder or author misbehaved (not a member, tampered) and not when it is only late
  or a redelivery.
- `apply(changes)` follows the roster: for a member removed (or who left), every
  session shared while it was a member is closed (a later message on one is refused:
  the removed member could read it), its own sessions are dropped, and our sender key
  is retired, so the next `seal` starts a new one shared only with those who remain.

Bounds: envelopes at most MAX_ENVELOPE bytes; sessions closed by removals remembered
MAX_CLOSED (the oldest forgotten: a late message on one is then held, never opened); held envelopes MAX_HELD_PER_SENDER per
sender and MAX_HELD in all, the oldest dropped first (counted): a held envelope is one
the room's sync brings again, and its author, missing our receipt, keeps it owed.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from p2pm.common import identity

from . import conversations as cv
from . import sessions as ss
from .roster import Changes, Roster

MAGIC = b"p2pm\x02"
VERSION = 2
MAX_SESSION_ID = 64  # vodozemac's are 43 characters
MAX_ENVELOPE = len(MAGIC) + 2 + 64 + MAX_SESSION_ID + ss.MAX_CIPHERTEXT
MAX_HELD_PER_SENDER = 64
MAX_HELD = 1024
MAX_CLOSED = 4096  # sessions closed by removals, remembered to refuse their late messages


class EnvelopeRefused(ValueError):
    """An envelope we will not open; `penalise`: it shows misbehaviour, not lateness."""

    def __init__(self, message: str, penalise: bool = False) -> None:
        super().__init__(message)
        self.penalise = penalise


@dataclass(frozen=True, slots=True)
class Header:
    author: str
    session_id: str
    ciphertext: bytes


@dataclass(frozen=True, slots=True)
class Opened:
    author: str
    inner: bytes  # signature || plaintext, for conversations' checks
    index: int


@dataclass(frozen=True, slots=True)
class Sealed:
    envelope: bytes
    share: bytes | None  # a new sender key: send it to `to` before the message
    to: tuple[str, ...]


def encode(author: str, session_id: str, ciphertext: bytes) -> bytes:
    raw = identity.peer_id_bytes(author)
    sid = session_id.encode("ascii")
    if len(raw) > 255 or not 0 < len(sid) <= MAX_SESSION_ID:
        raise ValueError("author or session id out of bounds")
    return MAGIC + bytes([len(raw)]) + raw + bytes([len(sid)]) + sid + ciphertext


def decode(envelope: bytes) -> Header:
    """The clear header of a v2 envelope; EnvelopeRefused (penalise) if malformed."""
    if not envelope.startswith(MAGIC):
        raise EnvelopeRefused("this message comes from an older p2pm (conversation "
                              "format 1); its author must upgrade", penalise=False)
    if len(envelope) > MAX_ENVELOPE:
        raise EnvelopeRefused(f"an envelope is at most {MAX_ENVELOPE} bytes", True)
    at = len(MAGIC)
    try:
        n = envelope[at]
        raw = envelope[at + 1:at + 1 + n]
        at += 1 + n
        m = envelope[at]
        sid = envelope[at + 1:at + 1 + m]
        at += 1 + m
        if len(raw) != n or len(sid) != m or not 0 < m <= MAX_SESSION_ID:
            raise IndexError
        author = identity.peer_id_text(raw)
        identity.public_key_from_peer_id(author)
        session_id = sid.decode("ascii")
    except (IndexError, UnicodeDecodeError, identity.IdentityError, ValueError):
        raise EnvelopeRefused("a malformed envelope header", True) from None
    if at >= len(envelope):
        raise EnvelopeRefused("an envelope without content", True)
    return Header(author, session_id, envelope[at:])


class RoomCrypto:
    def __init__(self, room: str, me: str, roster: Roster,
                 keys: ss.RoomKeys | None = None,
                 sender: ss.SenderKey | None = None) -> None:
        self.room = room
        self.me = me
        self.roster = roster
        self.keys = keys or ss.RoomKeys()
        self.sender = sender
        # (sender, session id) -> the members it was shared with, by the sender's word
        self.shared_with: dict[tuple[str, str], frozenset[str]] = {}
        self._held: OrderedDict[tuple[str, bytes], Header] = OrderedDict()
        self.dropped_held = 0
        # sessions closed by a removal, so a late message on one is refused, not held
        self._closed: OrderedDict[tuple[str, str], None] = OrderedDict()

    # -- sending -----------------------------------------------------------------------
    def others(self) -> tuple[str, ...]:
        return tuple(sorted(p for p in self.roster.members() if p != self.me))

    def seal(self, inner: bytes, now: float) -> Sealed:
        if not self.roster.is_member(self.me):
            raise EnvelopeRefused("we are not a member of this room")
        share = None
        if self.sender is None or self.sender.needs_rotation(now):
            self.sender = ss.SenderKey.new(now)
            share = self.sender.share()
        encrypted = self.sender.encrypt(inner)
        envelope = encode(self.me, encrypted.session_id, encrypted.ciphertext)
        return Sealed(envelope, share, self.others() if share else ())

    def share_for(self, peer: str) -> bytes | None:
        """Our current key for `peer` (a member just added), or None if we have none
        usable: the next seal makes one and shares it with every member."""
        if self.sender is None or self.sender.retired or not self.roster.is_member(peer):
            return None
        return self.sender.share()

    # -- receiving ---------------------------------------------------------------------
    def take_key(self, sender: str, key: bytes, members: Iterable[str]) -> list[bytes]:
        """Install `sender`'s key (it came over our pairwise channel with `sender`);
        the envelopes held for it, to open again. EnvelopeRefused (penalise) if the
        sender is not a member or shared it with someone removed."""
        if not self.roster.is_member(sender):
            raise EnvelopeRefused(f"{sender} is not a member of this room", True)
        shared = frozenset(members)
        stale = shared & self.roster.removed()
        if stale:
            raise EnvelopeRefused("this key was shared with a member who has been "
                                  "removed; it is out of date", False)
        try:
            session_id = self.keys.add(sender, key)
        except ss.KeyRefused as exc:
            raise EnvelopeRefused(str(exc), False) from None
        self.shared_with[(sender, session_id)] = shared
        released = [k for k, h in self._held.items()
                    if h.author == sender and h.session_id == session_id]
        return [k[1] for k in released if self._held.pop(k, None) is not None]

    def open(self, envelope: bytes) -> Opened | None:
        header = decode(envelope)
        if header.author == self.me:
            raise EnvelopeRefused("our own message", False)
        if not self.roster.is_member(header.author):
            raise EnvelopeRefused(f"{header.author} is not a member of this room", True)
        if (header.author, header.session_id) in self._closed:
            raise EnvelopeRefused(f"session {header.session_id} of {header.author} was "
                                  "closed when a member left (they hold it); its author "
                                  "sends on a new one", False)
        if not self.keys.has(header.author, header.session_id):
            self._hold(header, envelope)
            return None
        try:
            got = self.keys.decrypt(header.author, header.session_id, header.ciphertext)
        except ss.ReplayError as exc:
            raise EnvelopeRefused(str(exc), False) from None
        except ss.SessionError as exc:
            raise EnvelopeRefused(str(exc), True) from None
        if len(got.plaintext) <= cv.SIGNATURE_BYTES:
            raise EnvelopeRefused("an envelope without a signed message", True)
        return Opened(header.author, got.plaintext, got.index)

    def held(self) -> int:
        return len(self._held)

    def _hold(self, header: Header, envelope: bytes) -> None:
        key = (header.author, envelope)
        if key in self._held:
            return
        mine = [k for k in self._held if k[0] == header.author]
        if len(mine) >= MAX_HELD_PER_SENDER:
            del self._held[mine[0]]
            self.dropped_held += 1
        elif len(self._held) >= MAX_HELD:
            self._held.popitem(last=False)
            self.dropped_held += 1
        self._held[key] = header

    # -- the roster moved ---------------------------------------------------------------
    def apply(self, changes: Changes) -> bool:
        """Follow a roster change; True when our sender key was retired (the next
        seal shares a new one with the remaining members)."""
        gone = set(changes.removed)
        if not gone:
            return False
        for peer in gone:
            self.keys.close(peer)
            for k in [k for k in self._held if k[0] == peer]:
                del self._held[k]
        # every session someone removed was given is closed: they could read it
        for (sender, session_id), shared in list(self.shared_with.items()):
            if shared & gone or sender in gone:
                del self.shared_with[(sender, session_id)]
                self.keys.close_session(sender, session_id)
                self._closed[(sender, session_id)] = None
                while len(self._closed) > MAX_CLOSED:
                    self._closed.popitem(last=False)
        if self.sender is not None:
            self.sender.force_rotation()
            return True
        return False
