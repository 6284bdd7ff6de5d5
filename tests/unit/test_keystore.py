"""The keystore actor in one process over inproc endpoints: signing within the allowed
domains, X25519, the locked state and unlocking (by RPC and by the unlock key in the
environment), and a home without an identity."""

from __future__ import annotations

import base64
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import nacl.bindings
import nacl.public
import nacl.signing
import orjson
import pytest
import trio
import zmq

from p2pm.common import errors, identity
from p2pm.common.actor import ActorRuntime
from p2pm.common.client import Client, open_client
from p2pm.common.home import Endpoints, Home
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


@asynccontextmanager
async def keystore(home: Home) -> AsyncIterator[Client]:
    endpoints = Endpoints.inproc(f"ks-{next(_names)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Keystore(home, {}), endpoints).serve)
        async with open_client(zmq.Context.instance(), endpoints.rpc("keystore"),
                               "keystore") as client:
            yield client
        nursery.cancel_scope.cancel()


# Argon2id is slow on purpose: about 1 s on an idle core, several on a busy machine.
KDF_TIMEOUT = 30.0


async def call_error(client: Client, method: str, params: dict | None = None,  # type: ignore[type-arg]
                     timeout: float = 2.0) -> errors.BusError:
    with pytest.raises(errors.BusError) as info:
        await client.call(method, params, timeout=timeout, retries=0)
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
                                       "payload_type": b64(b"\x03\x01")})
        assert identity.verify(public, "libp2p-peer-record", b"rec",
                               base64.b64decode(reply["signature"]), b"\x03\x01")

        status = await ks.call("sys.status")
        assert status["healthy"] and status["unlocked"] and status["peer_id"] == PEER_ID
        seen = orjson.dumps([info, reply, status])
        for secret in (SEED, bytes(nacl.signing.SigningKey(SEED))):
            assert b64(secret).encode() not in seen and secret.hex().encode() not in seen


async def test_refused_signing_requests(homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        err = await call_error(ks, "sign", {"domain": "ssh-auth:", "data": b64(b"x")})
        assert err.code == errors.FORBIDDEN
        assert "p2pm-message:" in err.message and "noise-libp2p-static-key:" in err.message
        err = await call_error(ks, "sign", {"domain": "p2pm-record:",
                                            "data": b64(bytes(1024 * 1024 + 1))})
        assert err.code == errors.BAD_PARAMS and "at most" in err.message
        err = await call_error(ks, "sign", {"domain": "libp2p-peer-record", "data": b64(b"x")})
        assert err.code == errors.BAD_PARAMS and "payload_type" in err.message
        err = await call_error(ks, "sign", {"domain": "p2pm-record:", "data": "not base64!"})
        assert err.code == errors.BAD_PARAMS
        # the keystore is still serving after all of that
        assert (await ks.call("sign", {"domain": "p2pm-record:", "data": b64(b"x")}))["signature"]


async def test_dh(homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        theirs = nacl.public.PrivateKey.generate()
        shared = base64.b64decode(
            (await ks.call("dh", {"public": b64(bytes(theirs.public_key))}))["shared"])
        ours = base64.b64decode((await ks.call("identity"))["x25519_public"])
        assert shared == nacl.bindings.crypto_scalarmult(bytes(theirs), ours)
        for bad in (bytes(31), bytes(32)):
            err = await call_error(ks, "dh", {"public": b64(bad)})
            assert err.code == errors.BAD_PARAMS


async def test_subkey_is_bound_to_its_purpose_and_never_the_identity_key(
        homes: dict[str, Home]) -> None:
    async with keystore(homes["open"]) as ks:
        reply = await ks.call("subkey", {"purpose": "storage-at-rest-v1"})
        key = base64.b64decode(reply["key"])
        assert len(key) == 32
        assert key == identity.derive_subkey(nacl.signing.SigningKey(SEED), "storage-at-rest-v1")
        # Stable across calls (the database must open again), other seeds give another.
        again = await ks.call("subkey", {"purpose": "storage-at-rest-v1"})
        assert base64.b64decode(again["key"]) == key
        other = identity.derive_subkey(nacl.signing.SigningKey(bytes(32)), "storage-at-rest-v1")
        assert other != key and key not in (SEED, bytes(nacl.signing.SigningKey(SEED)))
        for purpose in ("storage-at-rest-v2", "", "p2pm-message:"):
            err = await call_error(ks, "subkey", {"purpose": purpose})
            assert err.code == errors.FORBIDDEN and "storage-at-rest-v1" in err.message
        seen = orjson.dumps([reply, await ks.call("sys.status")])
        assert b64(SEED).encode() not in seen and SEED.hex().encode() not in seen


async def test_locked_until_unlocked(homes: dict[str, Home],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(identity.UNLOCK_KEY_ENV, raising=False)
    async with keystore(homes["protected"]) as ks:
        for method, params in (("identity", {}), ("dh", {"public": b64(bytes(32))}),
                               ("sign", {"domain": "p2pm-message:", "data": b64(b"x")}),
                               ("subkey", {"purpose": "storage-at-rest-v1"})):
            err = await call_error(ks, method, params)
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
        err = await call_error(ks, "sign", {"domain": "p2pm-record:", "data": b64(b"x")})
        assert err.code == errors.UNAVAILABLE and "damaged or tampered" in err.message
        assert (await ks.call("sys.ping"))["pong"]
