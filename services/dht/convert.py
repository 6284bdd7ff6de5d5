"""Between the bus and the wire: peer IDs, multiaddrs, record keys and the routing-table
snapshot in the text forms the bus and the CLI use, and the binary forms of
`/ipfs/kad/1.0.0`.

Everything that comes from outside (a peer's reply, a local caller, a stored snapshot)
is checked here: a malformed address is dropped, a malformed key or peer ID is a
ValueError with a message meant for the caller.
"""

from __future__ import annotations

import base58  # provider keys given in base58 (peer IDs go through common/identity)
import multiaddr
import orjson

from p2pm.common.identity import is_multihash, peer_id_bytes, peer_id_text
from .messages import MAX_ADDRS_PER_PEER, Peer
from .records import PublicKeyValidator, RecordError, SignedRecordValidator

MAX_SNAPSHOT_PEERS = 2000


# -- peer IDs and addresses ----------------------------------------------------------------

# Peer IDs: the one codec of common/identity (peer_id_bytes, peer_id_text; its
# PeerIdError is a ValueError), imported from here by the dht's modules.


def addr_bytes(text: str) -> bytes | None:
    """A multiaddr for the wire, without its /p2p/ part (the peer ID travels beside it);
    None if it does not parse."""
    try:
        addr = multiaddr.Multiaddr(text)
        try:
            addr = addr.decapsulate_code(multiaddr.protocols.P_P2P)
        except Exception:
            pass  # no /p2p/ part
        raw = addr.to_bytes()
    except Exception:
        return None
    return raw or None  # an empty multiaddr is no address


def addr_text(raw: bytes) -> str | None:
    """A wire multiaddr as text; None for bytes that are not one (peer input)."""
    try:
        return str(multiaddr.Multiaddr(raw))
    except Exception:
        return None


def make_peer(peer_id: str, addrs: list[str] | tuple[str, ...]) -> Peer:
    """A wire Peer from the transport's view of a peer; unparsable addresses dropped."""
    wire = []
    for a in addrs:
        raw = addr_bytes(a)
        if raw is not None and raw not in wire:
            wire.append(raw)
    return Peer(peer_id_bytes(peer_id), tuple(wire[:MAX_ADDRS_PER_PEER]))


def peer_json(peer: Peer) -> dict[str, object]:
    """{"peer_id", "addrs"} for the bus, each address a full multiaddr ending in
    /p2p/<peer id> (ready for `p2pm dial`); addresses that do not parse are left out."""
    pid = peer_id_text(peer.id)
    texts: list[str] = []
    for raw in peer.addrs:
        text = addr_text(raw)
        bare = addr_bytes(text) if text else None  # peers may or may not send /p2p/
        text = addr_text(bare) if bare is not None else None
        if text and f"{text}/p2p/{pid}" not in texts:
            texts.append(f"{text}/p2p/{pid}")
    return {"peer_id": pid, "addrs": texts}


# -- record and provider keys ----------------------------------------------------------

def record_key(text: str) -> bytes:
    """The wire key for a key given as text.

    `/p2pm/<label>/<peer id>` and `/pk/<peer id>` (base58) become the binary forms the
    validators expect; `/pk/<hex>` (py-libp2p's form) and anything else are taken as
    UTF-8 and judged by the validators.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("a key is a non-empty string")
    raw = text.encode("utf-8")
    p2pm = SignedRecordValidator.namespace.decode()
    pk = PublicKeyValidator.namespace.decode()
    if text.startswith(p2pm):
        label, slash, owner = text[len(p2pm):].partition("/")
        if not slash:
            raise ValueError("a /p2pm/ key is /p2pm/<label>/<owner peer id>")
        return SignedRecordValidator.namespace + label.encode() + b"/" + peer_id_bytes(owner)
    if text.startswith(pk):
        rest = text[len(pk):]
        if rest and not all(c in "0123456789abcdef" for c in rest):
            return PublicKeyValidator.namespace + peer_id_bytes(rest)
    return raw


def record_key_text(key: bytes) -> str:
    """The inverse of `record_key`, for replies."""
    if key.startswith(SignedRecordValidator.namespace):
        try:
            owner = SignedRecordValidator.owner_of(key)  # binary: it may hold b"/"
        except RecordError:
            pass
        else:
            head = key[:-len(owner)].decode(errors="replace")
            return f"{head}{peer_id_text(owner)}"
    pk = PublicKeyValidator.namespace
    if key.startswith(pk) and is_multihash(key[len(pk):]):
        return f"{pk.decode()}{peer_id_text(key[len(pk):])}"
    return key.decode("utf-8", errors="backslashreplace")


def provider_key(text: str) -> bytes:
    """A provider key (a multihash) given as hex or base58."""
    if not isinstance(text, str) or not text:
        raise ValueError("a provider key is a non-empty string")
    raw: bytes | None = None
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        try:
            raw = base58.b58decode(text)
        except ValueError:
            raw = None
    if raw is None or not is_multihash(raw):
        raise ValueError(f"a provider key is a multihash in hex or base58: {text!r}")
    return raw


# -- the routing-table snapshot --------------------------------------------------------

def encode_snapshot(peers: list[Peer]) -> bytes:
    return orjson.dumps({"version": 1, "peers": [peer_json(p) for p in peers]})


def decode_snapshot(data: bytes) -> list[Peer]:
    """The peers of a stored snapshot; ValueError if it is not one (entries that do not
    parse are skipped: one bad entry should not cost the whole table)."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ValueError("routing-table snapshot is not JSON") from None
    if not isinstance(doc, dict) or doc.get("version") != 1 \
            or not isinstance(doc.get("peers"), list):
        raise ValueError("not a version-1 routing-table snapshot")
    out: list[Peer] = []
    for entry in doc["peers"][:MAX_SNAPSHOT_PEERS]:
        try:
            addrs = entry["addrs"]
            if not isinstance(addrs, list):
                continue
            peer = make_peer(entry["peer_id"], [a for a in addrs if isinstance(a, str)])
        except (KeyError, TypeError, ValueError):
            continue
        if peer.addrs:
            out.append(peer)
    return out
