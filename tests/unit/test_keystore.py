"""The keystore actor in one process over inproc endpoints: each actor signing within
its own allow-list (and refused outside it, or without its token), direct chats'
secrets (never the raw X25519 output), the locked state and unlocking (by RPC and by
the unlock key in the environment), and a home without an identity."""

from __future__ import annotations

import base64
import hashlib
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nacl.bindings
import nacl.signing
import orjson
import pytest
import trio
import zmq

from p2pm.common import actor_tokens, errors, identity, wire
from p2pm.common.actor import ActorRuntime
from p2pm.common.client import Client, open_client
from p2pm.common.home import Endpoints, Home
from p2pm.services.keystore import policy
from p2pm.services.keystore.actor import LOCKED, Keystore

PASSPHRASE = "tr0ub4dor&3"
SEED = bytes(range(100, 132))
_names = itertools.count()


def _home(root: Path, passphrase: str | None) -> Home:
    home = Home(root)
    home.ensure()
    identity.create_identity(home.identity_file, passphrase, seed=SEED)
    return home


@pytest.fixture(scope="module")
def homes() -> Iterator[dict[str, Home]]:
    """Identities are made once per module: Argon2id is slow on purpose."""
    root = Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))
    try:
        yield {
            "protected": _home(root / "protected", PASSPHRASE),
            "open": _home(root / "open", None),
            "empty": Home(root / "empty").ensure(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def unlock_key(homes: dict[str, Home]) -> bytes:
    return identity.derive_unlock_key(homes["protected"].identity_file, PASSPHRASE)


class Ks:
    """A client of the keystore that speaks as one actor (gossip unless told), with the
    token issued for it, as `Actor.call` does; `actor=None` sends no auth at all."""

    def __init__(self, client: Client, endpoints: Endpoints) -> None:
        self.client, self.endpoints = client, endpoints

    async def call(self, method: str, params: dict | None = None,  # type: ignore[type-arg]
                   *, actor: str | None = "gossip", token: str | None = None,
                   **kw: float) -> dict:  # type: ignore[type-arg]
        auth = None
        if actor is not None:
            auth = (wire.Auth(actor, token) if token is not None
                    else actor_tokens.auth_for(self.endpoints, actor))
        return await self.client.call(method, params, auth=auth, **kw)  # type: ignore[arg-type]


@asynccontextmanager
async def keystore(home: Home) -> AsyncIterator[Ks]:
    endpoints = Endpoints.inproc(f"ks-{next(_names)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Keystore(home, {}), endpoints).serve)
        async with open_client(zmq.Context.instance(), endpoints.rpc("keystore"),
                               "keystore") as client:
            yield Ks(client, endpoints)
        nursery.cancel_scope.cancel()


# Argon2id is slow on purpose: about 1 s on an idle core, several on a busy machine.
KDF_TIMEOUT = 30.0


async def call_error(client: Ks, method: str, params: dict | None = None,  # type: ignore[type-arg]
                     timeout: float = 2.0, **who: str | None) -> errors.BusError:
    with pytest.raises(errors.BusError) as info:
        await client.call(method, params, timeout=timeout, retries=0, **who)  # type: ignore[arg-type]
    return info.value


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


PEER_ID = identity.peer_id_from_public_key(bytes(nacl.signing.SigningKey(SEED).verify_key))


async def test_identity_and_signing(homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        info = await ks.call("identity")
        assert info["peer_id"] == PEER_ID
        public = base64.b64decode(info["public_key"])
        assert identity.public_key_from_peer_id(info["peer_id"]) == public
        assert base64.b64decode(info["public_key_proto"]) == identity.public_key_proto(public)

        reply = await ks.call("sign", {"domain": "p2pm-message:", "data": b64(b"hello")})
        sig = base64.b64decode(reply["signature"])
        assert identity.verify(public, "p2pm-message:", b"hello", sig)
        assert not identity.verify(public, "p2pm-record:", b"hello", sig)

        reply = await ks.call("sign", {"domain": "libp2p-peer-record", "data": b64(b"rec"),
                                       "payload_type": b64(b"\x03\x01")}, actor="transport")
        assert identity.verify(public, "libp2p-peer-record", b"rec",
                               base64.b64decode(reply["signature"]), b"\x03\x01")

        status = await ks.call("sys.status")
        assert status["healthy"] and status["unlocked"] and status["peer_id"] == PEER_ID
        seen = orjson.dumps([info, reply, status])
        for secret in (SEED, bytes(nacl.signing.SigningKey(SEED))):
            assert b64(secret).encode() not in seen and secret.hex().encode() not in seen


async def test_refused_signing_requests(homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        err = await call_error(ks, "sign", {"domain": "ssh-auth:", "data": b64(b"x")},
                               actor="dht")
        assert err.code == errors.FORBIDDEN
        assert "dht" in err.message and "'ssh-auth:'" in err.message
        assert "p2pm-record:" in err.message  # what dht may use instead
        err = await call_error(ks, "sign", {"domain": "x" * 100_000, "data": b64(b"x")},
                               actor="dht")
        assert err.code == errors.FORBIDDEN and len(err.message) < 300  # a flood is cut
        err = await call_error(ks, "sign", {"domain": "p2pm-record:",
                                            "data": b64(bytes(1024 * 1024 + 1))}, actor="dht")
        assert err.code == errors.BAD_PARAMS and "at most" in err.message
        err = await call_error(ks, "sign", {"domain": "libp2p-peer-record", "data": b64(b"x")},
                               actor="transport")
        assert err.code == errors.BAD_PARAMS and "payload_type" in err.message
        err = await call_error(ks, "sign", {"domain": "p2pm-record:", "data": "not base64!"},
                               actor="dht")
        assert err.code == errors.BAD_PARAMS
        # the keystore is still serving after all of that
        assert (await ks.call("sign", {"domain": "p2pm-record:", "data": b64(b"x")},
                              actor="dht"))["signature"]


# What each actor signs in its job, in the domains it signs with (imported from the
# actors, so a domain renamed there and not in the map fails here).
def _jobs() -> list[tuple[str, str, bytes | None]]:
    from p2pm.common import invite
    from p2pm.services.dht.records import RECORD_DOMAIN
    from p2pm.services.gossip import conversations as cv
    from p2pm.services.gossip.roster import ROSTER_DOMAIN
    from p2pm.services.gossip.router.messages import SIGNING_DOMAIN as PUBSUB_DOMAIN
    from p2pm.services.gossip.sessions import PREKEY_DOMAIN
    from p2pm.services.transport.custody import NOISE_DOMAIN, PEER_RECORD_DOMAIN

    return [("transport", NOISE_DOMAIN, None), ("transport", PEER_RECORD_DOMAIN, b"\x03\x01"),
            ("dht", RECORD_DOMAIN, None),
            *[("gossip", d, None) for d in (PUBSUB_DOMAIN, cv.MESSAGE_DOMAIN, cv.RECEIPT_DOMAIN,
                                            cv.INVITE_DOMAIN, invite.DOMAIN,
                                            PREKEY_DOMAIN, ROSTER_DOMAIN)],
            ("gateway", invite.DOMAIN, None)]


def _sign(domain: str, payload_type: bytes | None) -> dict[str, str]:
    params = {"domain": domain, "data": b64(b"job \xf0\x9f\x94\x91")}
    if payload_type is not None:
        params["payload_type"] = b64(payload_type)
    return params


async def test_each_actor_signs_what_its_job_needs_and_nothing_else(
        homes: dict[str, Home]) -> None:
    jobs = _jobs()
    async with keystore(homes["open"]) as ks:
        public = base64.b64decode((await ks.call("identity"))["public_key"])
        refused = 0
        for actor in policy.ALLOWED:
            for _, domain, payload_type in jobs:
                params = _sign(domain, payload_type)
                if (actor, domain, payload_type) in jobs:
                    sig = base64.b64decode((await ks.call("sign", params, actor=actor))["signature"])
                    assert identity.verify(public, domain, b"job \xf0\x9f\x94\x91", sig,
                                           payload_type), (actor, domain)
                elif domain not in policy.ALLOWED[actor].get(policy.SIGN, ()):
                    err = await call_error(ks, "sign", params, actor=actor)
                    assert err.code == errors.FORBIDDEN, (actor, domain)
                    assert actor in err.message and repr(domain) in err.message
                    refused += 1
        # every domain of the map is one an actor really signs with, and the reverse
        mapped = {(a, d) for a, r in policy.ALLOWED.items() for d in r.get(policy.SIGN, ())}
        assert mapped == {(a, d) for a, d, _ in jobs}
        assert policy.ALLOWED["storage"] == {policy.SUBKEY: {"storage-at-rest-v1"}}
        status = await ks.call("sys.status")
        assert sum(status["refused"].values()) == refused
        assert status["refused"]["storage"] == len(jobs)  # storage signs nothing


async def test_gossip_cannot_sign_a_peer_record_nor_transport_a_message(
        homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        err = await call_error(ks, "sign", _sign("libp2p-peer-record", b"\x03\x01"),
                               actor="gossip")
        assert err.code == errors.FORBIDDEN
        assert err.message.startswith("gossip may not ask the keystore for sign in domain "
                                      "'libp2p-peer-record'")
        err = await call_error(ks, "sign", _sign("p2pm-message:", None), actor="transport")
        assert err.code == errors.FORBIDDEN
        assert "transport" in err.message and "'p2pm-message:'" in err.message
        err = await call_error(ks, "direct_secret", {"peer_id": _peer(b"\x07")},
                               actor="transport")
        assert err.code == errors.FORBIDDEN and "transport may not" in err.message
        assert (await ks.call("sys.status"))["refused"] == {"gossip": 1, "transport": 2}


async def test_a_missing_wrong_or_borrowed_token_is_refused(homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        message = _sign("p2pm-message:", None)
        err = await call_error(ks, "sign", message, actor=None)
        assert err.code == errors.FORBIDDEN and "names none" in err.message
        err = await call_error(ks, "sign", message, actor="gossip", token="0" * 64)
        assert err.code == errors.FORBIDDEN
        assert "comes from gossip, but its token is not gossip's" in err.message
        # transport's own token does not make it gossip
        err = await call_error(ks, "sign", message, actor="gossip",
                               token=actor_tokens.token_for(ks.endpoints, "transport"))
        assert err.code == errors.FORBIDDEN and "token is not gossip's" in err.message
        err = await call_error(ks, "sign", message, actor="mallory", token="1" * 64)
        assert err.code == errors.FORBIDDEN and "no actor named 'mallory'" in err.message
        # the same token for another node's keystore (other endpoints) is not this one's
        other = actor_tokens.token_for(Endpoints.inproc("elsewhere"), "gossip")
        err = await call_error(ks, "sign", message, actor="gossip", token=other)
        assert err.code == errors.FORBIDDEN
        for bad in ({"actor": "gossip"}, {"actor": 3, "token": "x"}, "gossip"):
            frame = orjson.dumps({"id": "r1", "method": "sign", "params": message,
                                  "auth": bad})
            with pytest.raises(errors.BusError) as info:
                wire.decode_request(frame)
            assert info.value.code == errors.BAD_REQUEST
        status = await ks.call("sys.status")
        assert status["refused"] == {"unknown": 2, "gossip": 3}
        # identity (public values) needs no token; signing with it still works after
        assert (await ks.call("identity", actor=None))["peer_id"] == PEER_ID
        assert (await ks.call("sign", message))["signature"]


def _peer(seed_byte: bytes) -> str:
    key = nacl.signing.SigningKey(seed_byte * 32)
    return identity.peer_id_from_public_key(bytes(key.verify_key))


async def test_direct_secret_is_the_derived_one_and_never_the_raw_dh(
        homes: dict[str, Home]) -> None:
    bob_key = nacl.signing.SigningKey(bytes(range(7, 39)))
    bob = identity.peer_id_from_public_key(bytes(bob_key.verify_key))
    async with keystore(homes["open"]) as ks:
        secret = base64.b64decode((await ks.call("direct_secret", {"peer_id": bob}))["secret"])
        # bob computes the same from his side: both arrive at one conversation
        from_bob = identity.direct_chat_secret(bob_key, PEER_ID)
        assert secret == from_bob and len(secret) == 32
        # the conversation id of this chat is the one p2pm always derived (blake2b of
        # the X25519 secret, keyed, over both peer IDs): a known value, so no chat moves
        from p2pm.services.gossip import conversations as cv

        raw = nacl.bindings.crypto_scalarmult(
            bytes(nacl.signing.SigningKey(SEED).to_curve25519_private_key()),
            identity.x25519_public(bytes(bob_key.verify_key)))
        first, second = sorted((PEER_ID, bob))
        before = hashlib.blake2b(f"{first} {second}".encode(), key=raw, digest_size=32,
                                 person=b"p2pm-direct").digest()
        assert cv.Keys.derive("direct", secret).id == cv.Keys.derive("direct", before).id
        assert secret != raw
        methods = await ks.call("sys.methods")
        assert "dh" not in methods and "direct_secret" in methods
        err = await call_error(ks, "dh", {"public": b64(bytes(32))})
        assert err.code == errors.UNKNOWN_METHOD
        for bad, why in ((PEER_ID, "another peer"), ("not a peer id", ""),
                         ("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N", "")):
            err = await call_error(ks, "direct_secret", {"peer_id": bad})
            assert err.code == errors.BAD_PARAMS and why in err.message, bad
        for actor in ("gateway", "dht", "storage"):
            err = await call_error(ks, "direct_secret", {"peer_id": bob}, actor=actor)
            assert err.code == errors.FORBIDDEN and f"{actor} may not" in err.message


async def test_subkey_is_bound_to_its_purpose_and_never_the_identity_key(
        homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        reply = await ks.call("subkey", {"purpose": "storage-at-rest-v1"}, actor="storage")
        key = base64.b64decode(reply["key"])
        assert len(key) == 32
        assert key == identity.derive_subkey(nacl.signing.SigningKey(SEED), "storage-at-rest-v1")
        # Stable across calls (the database must open again), other seeds give another.
        again = await ks.call("subkey", {"purpose": "storage-at-rest-v1"}, actor="storage")
        assert base64.b64decode(again["key"]) == key
        other = identity.derive_subkey(nacl.signing.SigningKey(bytes(32)), "storage-at-rest-v1")
        assert other != key and key not in (SEED, bytes(nacl.signing.SigningKey(SEED)))
        for purpose in ("storage-at-rest-v2", "", "p2pm-message:"):
            err = await call_error(ks, "subkey", {"purpose": purpose}, actor="storage")
            assert err.code == errors.FORBIDDEN and "storage-at-rest-v1" in err.message
        # only storage gets its key: no other actor, and no caller without a token
        for actor in ("gossip", "gateway", "transport", "dht"):
            err = await call_error(ks, "subkey", {"purpose": "storage-at-rest-v1"},
                                   actor=actor)
            assert err.code == errors.FORBIDDEN and f"{actor} may not" in err.message
        err = await call_error(ks, "subkey", {"purpose": "storage-at-rest-v1"}, actor=None)
        assert err.code == errors.FORBIDDEN
        # gossip's Olm/Megolm pickles are under a key of their own, which storage
        # (that seals everything it stores) cannot have
        olm = base64.b64decode((await ks.call("subkey", {"purpose": "gossip-sessions-v1"},
                                              actor="gossip"))["key"])
        assert olm == identity.derive_subkey(nacl.signing.SigningKey(SEED),
                                             "gossip-sessions-v1") and olm != key
        for actor in ("storage", "gateway", "transport", "dht"):
            err = await call_error(ks, "subkey", {"purpose": "gossip-sessions-v1"},
                                   actor=actor)
            assert err.code == errors.FORBIDDEN and f"{actor} may not" in err.message
        seen = orjson.dumps([reply, await ks.call("sys.status")])
        assert b64(SEED).encode() not in seen and SEED.hex().encode() not in seen


async def test_locked_until_unlocked(homes: dict[str, Home],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(identity.UNLOCK_KEY_ENV, raising=False)
    async with keystore(homes["protected"]) as ks:
        for method, params, actor in (
                ("identity", {}, "gossip"),
                ("direct_secret", {"peer_id": _peer(b"\x07")}, "gossip"),
                ("sign", {"domain": "p2pm-message:", "data": b64(b"x")}, "gossip"),
                ("subkey", {"purpose": "storage-at-rest-v1"}, "storage")):
            err = await call_error(ks, method, params, actor=actor)
            assert (err.code, err.message) == (errors.UNAVAILABLE, LOCKED)
        status = await ks.call("sys.status")
        assert not status["healthy"] and not status["unlocked"]
        assert status["peer_id"] == PEER_ID  # shown even while locked

        err = await call_error(ks, "unlock", {"passphrase": "not it"}, KDF_TIMEOUT)
        assert (err.code, err.message) == (errors.FORBIDDEN, "wrong passphrase")
        assert (await call_error(ks, "identity")).code == errors.UNAVAILABLE

        assert await ks.call("unlock", {"passphrase": PASSPHRASE}) == {"peer_id": PEER_ID}
        assert (await ks.call("identity"))["peer_id"] == PEER_ID
        assert (await ks.call("sys.status"))["healthy"]
        # unlocking again is harmless, and a wrong passphrase does not lock it
        assert await ks.call("unlock", {"passphrase": PASSPHRASE}) == {"peer_id": PEER_ID}
        assert (await call_error(ks, "unlock", {"passphrase": "x"}, KDF_TIMEOUT)).code == errors.FORBIDDEN
        assert (await ks.call("identity"))["peer_id"] == PEER_ID


async def test_unlock_key_in_environment(homes: dict[str, Home], unlock_key: bytes,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(identity.UNLOCK_KEY_ENV, unlock_key.hex())
    async with keystore(homes["protected"]) as ks:
        assert (await ks.call("sys.status"))["healthy"]
        assert (await ks.call("identity"))["peer_id"] == PEER_ID


@pytest.mark.parametrize("value", ["00" * 32, "not hex at all"])
async def test_bad_unlock_key_leaves_it_locked(homes: dict[str, Home], value: str,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(identity.UNLOCK_KEY_ENV, value)
    async with keystore(homes["protected"]) as ks:
        err = await call_error(ks, "identity")
        assert (err.code, err.message) == (errors.UNAVAILABLE, LOCKED)
        assert await ks.call("unlock", {"passphrase": PASSPHRASE}) == {"peer_id": PEER_ID}


async def test_home_without_identity(homes: dict[str, Home]) -> None:
    home = homes["empty"]
    async with keystore(home) as ks:
        expected = f"no identity in {home.root}: run p2pm init"
        for method, params in (("identity", {}), ("unlock", {"passphrase": ""})):
            err = await call_error(ks, method, params)
            assert (err.code, err.message) == (errors.UNAVAILABLE, expected)
        status = await ks.call("sys.status")
        assert not status["healthy"] and status["problem"] == expected


async def test_damaged_identity_is_reported_not_fatal(homes: dict[str, Home]) -> None:
    home = Home(homes["empty"].root.parent / "damaged").ensure()
    home.identity_file.write_text('{"kind": "p2pm-identity", "version": 1}')
    async with keystore(home) as ks:
        err = await call_error(ks, "sign", {"domain": "p2pm-record:", "data": b64(b"x")},
                               actor="dht")
        assert err.code == errors.UNAVAILABLE and "damaged or tampered" in err.message
        assert (await ks.call("sys.ping"))["pong"]


def test_tokens_are_private_shared_by_racers_and_renewed(tmp_path: Path) -> None:
    home = Home(tmp_path / "node").ensure()
    endpoints = home.endpoints()
    # Many processes (here threads) asking at once for the same actor's token all get
    # the one that was written first, complete.
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        seen = set(pool.map(lambda _: actor_tokens.token_for(endpoints, "gossip"), range(32)))
    assert len(seen) == 1 and len(next(iter(seen))) == 64
    folder = home.run / actor_tokens.TOKEN_DIR
    assert folder.stat().st_mode & 0o777 == 0o700
    assert [p.name for p in folder.iterdir()] == ["gossip.token"]  # no leftovers
    assert (folder / "gossip.token").stat().st_mode & 0o777 == 0o600
    dht = actor_tokens.token_for(endpoints, "dht")
    assert dht not in seen
    actor_tokens.renew(endpoints)
    assert actor_tokens.token_for(endpoints, "gossip") not in seen
    # a file edited by hand is an error to fix, not silently replaced
    (folder / "dht.token").write_text("short")
    with pytest.raises(ValueError, match="does not hold a token"):
        actor_tokens.token_for(endpoints, "dht")
    for bad in ("", "../keystore", "a" * 33, "gössip"):
        with pytest.raises(ValueError, match="not an actor name"):
            actor_tokens.token_for(endpoints, bad)


async def test_a_damaged_token_file_refuses_that_actor_and_says_so(
        homes: dict[str, Home], tmp_path: Path) -> None:
    # Over ipc the keystore reads the token files: a damaged one refuses that actor only.
    home = Home(tmp_path / "ipc").ensure()
    shutil.copy(homes["open"].identity_file, home.identity_file)
    endpoints = home.endpoints()
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Keystore(home, {}), endpoints).serve)
        async with open_client(zmq.Context.instance(), endpoints.rpc("keystore"),
                               "keystore") as client:
            ipc = Ks(client, endpoints)
            assert (await ipc.call("sign", _sign("p2pm-record:", None), actor="dht"))["signature"]
            (home.run / "tokens" / "gossip.token").write_text("garbled")
            err = await call_error(ipc, "sign", _sign("p2pm-message:", None), actor="gossip",
                                   token="f" * 64)
            assert err.code == errors.FORBIDDEN and "token is not gossip's" in err.message
            assert (await ipc.call("sign", _sign("p2pm-record:", None), actor="dht"))["signature"]
        nursery.cancel_scope.cancel()
