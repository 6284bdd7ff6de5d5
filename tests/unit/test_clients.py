"""The typed clients of common/clients.py: each one matches the RPCs of the actor it
calls (so a fake made from it cannot drift from the real interface), they work
against the real keystore and storage actors over inproc, and the fakes refuse what
the real client would not take."""

from __future__ import annotations

import inspect
import itertools
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from p2pm.common import clients, errors, identity
from p2pm.common.actor import Actor, ActorRuntime
from p2pm.common.clients import (
    DhtClient, KeystoreClient, StorageClient, TransportClient, build_actor, fake,
    none_if_not_found,
)
from p2pm.common.home import Endpoints, Home
from p2pm.services.dht.actor import Dht
from p2pm.services.keystore.actor import Keystore
from p2pm.services.storage.actor import Storage
from p2pm.services.transport.actor import Transport

SEED = bytes(range(7, 39))
_names = itertools.count()

SERVERS = [(KeystoreClient, Keystore), (StorageClient, Storage),
           (TransportClient, Transport), (DhtClient, Dht)]


def _client_methods(cls: type) -> list[str]:
    return [n for n, f in vars(cls).items()
            if not n.startswith("_") and inspect.iscoroutinefunction(f)]


@pytest.mark.parametrize(("client_cls", "actor_cls"), SERVERS,
                         ids=[c.actor for c, _ in SERVERS])
def test_each_client_method_is_an_rpc_of_its_actor_with_its_params(
        client_cls: type, actor_cls: type) -> None:
    """The fakes are autospec'd from the clients; this holds the clients to the
    actors, so a renamed or reshaped RPC fails here instead of in production."""
    assert client_cls.actor == actor_cls.name
    for name in _client_methods(client_cls):
        rpc = getattr(actor_cls, name, None)
        assert rpc is not None and getattr(rpc, "_p2pm_rpc", None) == name, \
            f"{actor_cls.name} has no RPC {name}"
        theirs = inspect.signature(rpc).parameters
        ours = inspect.signature(getattr(client_cls, name)).parameters
        assert list(ours) == list(theirs), f"{name}: {list(ours)} != {list(theirs)}"
        for pname, param in theirs.items():
            if param.default is inspect.Parameter.empty:
                assert ours[pname].default is inspect.Parameter.empty, \
                    f"{name}: {pname} is required by the actor"


# -- against the real actors -----------------------------------------------------------


class Needy(Actor):
    """An actor that only depends on others, as gateway or dht do. Named gateway, so the
    keystore answers it within the gateway's allow-list."""

    name = "gateway"
    keystore = KeystoreClient.dependency()
    storage = StorageClient.dependency()


@pytest.fixture
def home() -> Any:
    root = Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))
    h = Home(root).ensure()
    identity.create_identity(h.identity_file, None, seed=SEED)
    try:
        yield h
    finally:
        shutil.rmtree(root, ignore_errors=True)


@asynccontextmanager
async def node(home: Home) -> AsyncIterator[Needy]:
    endpoints = Endpoints.inproc(f"cl-{next(_names)}")
    async with trio.open_nursery() as nursery:
        await nursery.start(ActorRuntime(Keystore(home, {}), endpoints).serve)
        await nursery.start(ActorRuntime(Storage(home, {}), endpoints).serve)
        needy = Needy(home, {})
        await nursery.start(ActorRuntime(needy, endpoints).serve)
        yield needy
        nursery.cancel_scope.cancel()


async def test_keystore_client_signs_and_tells_the_identity(home: Home) -> None:
    async with node(home) as needy:
        me = await needy.keystore.identity()
        assert me.peer_id == identity.peer_id_from_public_key(me.public_key)
        signature = await needy.keystore.sign("p2pm-invite:", b"hello \x00 bytes")
        assert isinstance(signature, bytes) and len(signature) == 64
        assert identity.verify(me.public_key, "p2pm-invite:", b"hello \x00 bytes", signature)
        assert not identity.verify(me.public_key, "p2pm-invite:", b"hello", signature)
        with pytest.raises(errors.BusError) as refused:
            await needy.keystore.sign("not-a-domain", b"x")
        assert refused.value.code == errors.FORBIDDEN
        # the actor presents its own name and token: the gateway's rights, no more
        with pytest.raises(errors.BusError) as refused:
            await needy.keystore.sign("p2pm-message:", b"x")
        assert refused.value.code == errors.FORBIDDEN and "gateway may not" in refused.value.message
        with pytest.raises(errors.BusError) as refused:
            await needy.keystore.direct_secret(identity.peer_id_from_public_key(bytes(32)))
        assert refused.value.code == errors.FORBIDDEN and "gateway may not" in refused.value.message
        status = await needy.keystore.status()
        assert status["refused"] == {"gateway": 3}


async def test_storage_client_not_found_is_none_and_values_round_trip(home: Home) -> None:
    async with node(home) as needy:
        storage = needy.storage.with_options(timeout=2.0, retries=1)
        assert await storage.kv_get("nothing.here") is None
        await storage.kv_put("a.key", b"\x00\xffvalue")
        assert await storage.kv_get("a.key") == b"\x00\xffvalue"
        assert await storage.kv_delete("a.key") is True
        assert await storage.kv_get("a.key") is None
        assert await storage.contact_get(name="nobody") is None
        me = await needy.keystore.identity()
        other = identity.peer_id_from_public_key(bytes(32))
        added = await storage.contact_add("bob", other, ["/ip4/127.0.0.1/tcp/1"])
        assert added["created"] is True
        got = await storage.contact_get(peer_id=other)
        assert got is not None and got["name"] == "bob"
        assert [c["name"] for c in await storage.contact_list()] == ["bob"]
        assert me.peer_id != other
        with pytest.raises(errors.BusError) as bad:
            await storage.contact_add("", other)
        assert bad.value.code == errors.BAD_PARAMS


async def test_until_answered_waits_for_an_actor_that_starts_late(home: Home) -> None:
    endpoints = Endpoints.inproc(f"cl-{next(_names)}")
    waits: list[str] = []
    async with trio.open_nursery() as nursery:
        needy = Needy(home, {})
        await nursery.start(ActorRuntime(needy, endpoints).serve)
        got: list[clients.Identity] = []

        async def ask() -> None:
            got.append(await needy.keystore.until_answered(waits.append).identity())

        nursery.start_soon(ask)
        with trio.fail_after(10):
            while not waits:
                await trio.sleep(0.01)
        await nursery.start(ActorRuntime(Keystore(home, {}), endpoints).serve)
        with trio.fail_after(10):
            while not got:
                await trio.sleep(0.01)
        assert got[0].peer_id.startswith("12D3KooW")
        assert "waiting for the keystore" in waits[0]
        nursery.cancel_scope.cancel()


# -- the helpers, on a fake clock ------------------------------------------------------


async def test_none_if_not_found_passes_every_other_error() -> None:
    async def missing() -> None:
        raise errors.not_found("no such thing")

    async def refused() -> None:
        raise errors.forbidden("no")

    assert await none_if_not_found(missing()) is None
    with pytest.raises(errors.BusError) as exc:
        await none_if_not_found(refused())
    assert exc.value.code == errors.FORBIDDEN


def test_call_until_answered_backs_off_and_gives_up_only_on_real_errors() -> None:
    attempts: list[float] = []
    script = [errors.BusError(errors.TIMEOUT, "t")] * 5 + [
        errors.unavailable("locked"), {"ok": 1}, errors.forbidden("no")]

    async def call(actor: str, method: str, params: Any = None, **kw: Any) -> Any:
        assert kw == {"timeout": clients.PATIENT_ATTEMPT_S, "retries": 0}
        attempts.append(trio.current_time())
        step = script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    async def main() -> None:
        reasons: list[str] = []
        assert await clients.call_until_answered(call, "keystore", "identity",
                                                 on_wait=reasons.append) == {"ok": 1}
        assert len(reasons) == 6 and "locked" in reasons[-1]
        gaps = [round(b - a, 3) for a, b in zip(attempts, attempts[1:])]
        assert gaps == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]  # doubling, capped
        with pytest.raises(errors.BusError):
            await clients.call_until_answered(call, "keystore", "identity")

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


# -- fakes -----------------------------------------------------------------------------


async def test_a_fake_answers_as_told_and_refuses_what_the_client_would() -> None:
    async def sign(domain: str, data: bytes, payload_type: bytes | None = None) -> bytes:
        return b"sig:" + data

    ks = fake(KeystoreClient, sign=sign, direct_secret=errors.unavailable("locked"))
    assert await ks.sign("p2pm-invite", b"abc") == b"sig:abc"
    assert await ks.with_options(timeout=1).sign("d", b"x") == b"sig:x"
    ks.sign.assert_awaited_with("d", b"x")
    with pytest.raises(errors.BusError):
        await ks.direct_secret("12D3KooW")
    with pytest.raises(AssertionError, match="unexpected call keystore.identity"):
        await ks.identity()
    with pytest.raises(TypeError):
        await ks.sign("d", b"x", b"t", "one too many")
    with pytest.raises(AttributeError):
        ks.sign_everything  # noqa: B018 - not part of the client
    with pytest.raises(AttributeError, match="has no method"):
        fake(StorageClient, kv_fetch=b"")


def test_build_actor_puts_fakes_in_place_and_refuses_unknown_dependencies() -> None:
    storage = fake(StorageClient, kv_get=None)
    needy = build_actor(Needy, None, {}, storage=storage)
    assert needy.storage is storage
    assert needy.keystore._spec_class is KeystoreClient  # an answerless fake
    with pytest.raises(TypeError, match="declares no dependency dht"):
        build_actor(Needy, None, {}, dht=fake(DhtClient))
    with pytest.raises(TypeError, match="must stand in for StorageClient"):
        build_actor(Needy, None, {}, storage=fake(KeystoreClient))
    assert clients.dependencies(Needy) == {"keystore": KeystoreClient,
                                           "storage": StorageClient}
