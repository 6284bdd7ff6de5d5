"""What each actor may ask the keystore for: the allow-list the keystore enforces.

Each entry names, per operation, the domains (signing domains) or purposes (derived
secrets) an actor's job needs, and nothing else:

    transport  signs its noise static key and its libp2p peer record
    dht        signs the DHT records it publishes
    gossip     signs pubsub messages, conversation messages, receipts and invites
               (room invites, and the node invite it answers a stranger with), its
               prekey bundle and rooms' membership events; asks for direct chats'
               secrets and for the subkey its Olm/Megolm state is pickled under
    gateway    signs node invites (`invite create`)
    storage    asks for its at-rest subkey

`identity` (public values only) and `unlock` (which needs the passphrase) are open to
any caller, the CLI included, and are not listed. The keystore itself is not listed:
it asks nothing of itself. The domains are written out here rather than imported, so
the keystore does not import the actors it guards; tests/unit/test_keystore.py holds
them to the constants the actors sign with.
"""

from __future__ import annotations

from collections.abc import Mapping

SIGN = "sign"
DIRECT_SECRET = "direct_secret"
SUBKEY = "subkey"
# direct_secret has a single purpose; it is named like the others so one map says all.
DIRECT_PURPOSE = "p2pm-direct"

ALLOWED: Mapping[str, Mapping[str, frozenset[str]]] = {
    "transport": {SIGN: frozenset({"noise-libp2p-static-key:", "libp2p-peer-record"})},
    "dht": {SIGN: frozenset({"p2pm-record:"})},
    "gossip": {
        SIGN: frozenset({"libp2p-pubsub:", "p2pm-message:", "p2pm-receipt:",
                         "p2pm-room-invite:", "p2pm-invite:", "p2pm-prekeys:",
                         "p2pm-roster:"}),
        DIRECT_SECRET: frozenset({DIRECT_PURPOSE}),
        SUBKEY: frozenset({"gossip-sessions-v1"}),
    },
    "gateway": {SIGN: frozenset({"p2pm-invite:"})},
    "storage": {SUBKEY: frozenset({"storage-at-rest-v1"})},
}


# A domain in a refusal (message and log) is cut to this: it comes from the caller.
SHOWN_CHARS = 80


def shown(domain: str) -> str:
    """`domain` as a refusal shows it: quoted, and cut if a caller sent a long one."""
    return repr(domain) if len(domain) <= SHOWN_CHARS else repr(domain[:SHOWN_CHARS]) + "..."


def refusal(actor: str, operation: str, domain: str) -> str | None:
    """Why `actor` may not `operation` in `domain`; None when it may."""
    rights = ALLOWED.get(actor)
    if rights is None:
        return (f"the keystore serves no actor named {actor!r} (asked for {operation} in "
                f"domain {shown(domain)}); it serves {', '.join(sorted(ALLOWED))}")
    if domain in rights.get(operation, ()):
        return None
    allowed = rights.get(operation)
    said = f"{actor} may not ask the keystore for {operation} in domain {shown(domain)}"
    if not allowed:
        return f"{said}; {actor} may not ask for {operation} at all"
    return f"{said}; {actor} may use {', '.join(sorted(allowed))}"
