"""Typed clients for the actors an actor depends on (nameko's `RpcProxy` idea).

An actor declares what it calls as class attributes:

    class Dht(Actor):
        keystore = KeystoreClient.dependency()
        storage = StorageClient.dependency()

and calls `await self.keystore.sign(domain, data)` (bytes back, base64 already
decoded) instead of `self.call("keystore", "sign", {...})` and picking the reply
apart. Each client method is one RPC of the actor it names: its parameters are the
RPC's params, its result the reply decoded once here. "Not found" is `None` where a
caller has something to do without the thing (`kv_get`, `contact_get`, ...); any other
error is raised as the `BusError` it was.

Call options (the per-attempt `timeout`, `retries`) are not RPC params: they are set
on a copy, `self.storage.with_options(timeout=2.0, retries=1).kv_get(KEY)`.
`until_answered()` makes a copy that waits out an actor that is not there yet (at
start: the keystore's identity), as `Actor.call_until_answered` does.

Tests build an actor with fakes for its dependencies (`build_actor`, `fake`): a fake is
autospec'd from the client class, so a call with a method or parameter the client does
not have fails the test, and `tests/unit/test_clients.py` holds each client to the
signatures of the RPCs it claims to call. Unanswered methods raise instead of
returning a mock, so a test cannot pass on a call it did not expect.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import trio

from . import errors, wire
from .log import get_logger

# `Actor.call`'s shape: (actor, method, params, **options) -> result.
Call = Callable[..., Awaitable[Any]]
T = TypeVar("T")
C = TypeVar("C", bound="RpcClient")

# Waiting for an actor that is not there yet: one attempt this long, then a pause that
# doubles up to the cap. Only "not there yet" is waited out.
PATIENT_ATTEMPT_S = 2.0
PATIENT_BACKOFF_START_S = 0.1
PATIENT_BACKOFF_CAP_S = 2.0
_NOT_THERE_YET = (errors.TIMEOUT, errors.UNAVAILABLE)

_log = get_logger("clients")


async def none_if_not_found(call: Awaitable[T]) -> T | None:
    """The result of `call`, or None when the answer is NOT_FOUND; other errors raise."""
    try:
        return await call
    except errors.BusError as exc:
        if exc.code != errors.NOT_FOUND:
            raise
        return None


async def call_until_answered(call: Call, actor: str, method: str,
                              params: dict[str, Any] | None = None,
                              on_wait: Callable[[str], None] | None = None,
                              log: Any = None) -> Any:
    """Call until `actor` answers, backing off up to PATIENT_BACKOFF_CAP_S. Only "not
    there yet" (timeout, unavailable) is waited out; any other error is raised. `on_wait`
    gets the reason each time, e.g. to show it in `sys.status`."""
    delay = PATIENT_BACKOFF_START_S
    while True:
        try:
            return await call(actor, method, params, timeout=PATIENT_ATTEMPT_S, retries=0)
        except errors.BusError as exc:
            if exc.code not in _NOT_THERE_YET:
                raise
            (log or _log).info("actor.waiting", actor=actor, method=method, error=exc.message)
            if on_wait is not None:
                on_wait(f"waiting for the {actor}: {exc.message}")
            await trio.sleep(delay)
            delay = min(delay * 2, PATIENT_BACKOFF_CAP_S)


# -- the base class ------------------------------------------------------------------


class RpcClient:
    """Calls one actor through a `Call`. Subclasses set `actor` and add typed methods."""

    actor: ClassVar[str] = ""

    def __init__(self, call: Call, **options: Any) -> None:
        self._call = call
        self._options = options
        self._patient = False
        self._on_wait: Callable[[str], None] | None = None

    @classmethod
    def dependency(cls: type[C], via: str = "call", **options: Any) -> Dependency[C]:
        """Declare this client as a dependency of an actor class; `via` names the
        actor's method that makes the calls (`call`, or a wrapper of it)."""
        return Dependency(cls, via, options)

    def with_options(self: C, **options: Any) -> C:
        """A copy whose calls use these call options (`timeout`, `retries`)."""
        other = copy.copy(self)
        other._options = {**self._options, **options}
        return other

    def until_answered(self: C, on_wait: Callable[[str], None] | None = None) -> C:
        """A copy whose calls wait until the actor answers (see `call_until_answered`)."""
        other = copy.copy(self)
        other._patient, other._on_wait = True, on_wait
        return other

    async def _rpc(self, method: str, params: dict[str, Any] | None = None) -> Any:
        if self._patient:
            return await call_until_answered(self._call, self.actor, method, params,
                                             self._on_wait)
        return await self._call(self.actor, method, params, **self._options)

    async def status(self) -> dict[str, Any]:
        """`sys.status`: the actor's health, counters and own fields."""
        return dict(await self._rpc("sys.status"))


class Dependency(Generic[C]):
    """A class attribute that gives each actor instance its own client (built on first
    use from the actor's `via` method). A fake put in its place by `build_actor` (or
    plain assignment) takes precedence: this is a non-data descriptor."""

    def __init__(self, cls: type[C], via: str, options: dict[str, Any]) -> None:
        self.cls = cls
        self.via = via
        self.options = options
        self.attr = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.attr = name

    def __get__(self, obj: Any, owner: type | None = None) -> Any:
        if obj is None:
            return self
        client = self.cls(getattr(obj, self.via), **self.options)
        obj.__dict__[self.attr] = client
        return client


def dependencies(actor_cls: type) -> dict[str, type[RpcClient]]:
    """The clients an actor class declares: attribute name -> client class."""
    found: dict[str, type[RpcClient]] = {}
    for klass in reversed(actor_cls.__mro__):
        for name, value in vars(klass).items():
            if isinstance(value, Dependency):
                found[name] = value.cls
    return found


# -- keystore ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Identity:
    """This node's identity, as the keystore tells it."""

    peer_id: str
    public_key: bytes          # raw Ed25519
    x25519_public: bytes


class KeystoreClient(RpcClient):
    actor = "keystore"

    async def identity(self) -> Identity:
        got = await self._rpc("identity")
        return Identity(str(got["peer_id"]), wire.b64d(got["public_key"], "public_key"),
                        wire.b64d(got["x25519_public"], "x25519_public"))

    async def sign(self, domain: str, data: bytes,
                   payload_type: bytes | None = None) -> bytes:
        """The keystore's signature over `identity.signed_bytes(domain, data, ...)`."""
        params: dict[str, Any] = {"domain": domain, "data": wire.b64e(data)}
        if payload_type is not None:
            params["payload_type"] = wire.b64e(payload_type)
        got = await self._rpc("sign", params)
        return wire.b64d(got["signature"], "keystore signature")

    async def direct_secret(self, peer_id: str) -> bytes:
        """The secret of our direct chat with `peer_id` (never the raw X25519 output)."""
        got = await self._rpc("direct_secret", {"peer_id": peer_id})
        return wire.b64d(got["secret"], "secret")

    async def subkey(self, purpose: str) -> bytes:
        """The 32-byte key the keystore derives for `purpose` (identity.SUBKEY_PURPOSES)."""
        got = await self._rpc("subkey", {"purpose": purpose})
        return wire.b64d(got["key"], "subkey")


# -- storage -------------------------------------------------------------------------


def _given(**params: Any) -> dict[str, Any]:
    """Params without the optional ones left out (None), so the actor's defaults hold."""
    return {k: v for k, v in params.items() if v is not None}


def history_cursor(ts: float, id: str) -> str:
    """Storage's `history` cursor for "older than this message": (ts, id) as text
    (repr() of a float round-trips exactly and never contains ':')."""
    return f"{float(ts)!r}:{id}"


class StorageClient(RpcClient):
    actor = "storage"

    async def kv_get(self, key: str) -> bytes | None:
        got = await none_if_not_found(self._rpc("kv_get", {"key": key}))
        return None if got is None else wire.b64d(got["value"], key)

    async def kv_put(self, key: str, value: bytes) -> None:
        await self._rpc("kv_put", {"key": key, "value": wire.b64e(value)})

    async def kv_delete(self, key: str) -> bool:
        return bool((await self._rpc("kv_delete", {"key": key}))["deleted"])

    async def contact_add(self, name: str, peer_id: str, addrs: list[str] | None = None,
                          verified: bool | None = None) -> dict[str, Any]:
        return dict(await self._rpc("contact_add", _given(
            name=name, peer_id=peer_id, addrs=addrs, verified=verified)))

    async def contact_get(self, name: str | None = None,
                          peer_id: str | None = None) -> dict[str, Any] | None:
        return await none_if_not_found(
            self._rpc("contact_get", _given(name=name, peer_id=peer_id)))

    async def contact_list(self) -> list[dict[str, Any]]:
        return list((await self._rpc("contact_list"))["contacts"])

    async def contact_remove(self, name: str | None = None,
                             peer_id: str | None = None) -> bool:
        got = await self._rpc("contact_remove", _given(name=name, peer_id=peer_id))
        return bool(got["removed"])

    async def conversation_put(self, id: str, kind: str, secret: bytes, members: list[str],
                               name: str | None = None,
                               created_at: float | None = None) -> dict[str, Any]:
        return dict(await self._rpc("conversation_put", _given(
            id=id, kind=kind, secret=wire.b64e(secret), members=members, name=name,
            created_at=created_at)))

    async def conversation_get(self, id: str) -> dict[str, Any] | None:
        return await none_if_not_found(self._rpc("conversation_get", {"id": id}))

    async def conversation_list(self, member: str | None = None) -> list[dict[str, Any]]:
        got = await self._rpc("conversation_list", _given(member=member))
        return list(got["conversations"])

    async def message_put(self, id: str, conversation: str, author: str, seq: int,
                          ts: float, body: bytes, state: str,
                          recipients: list[str] | None = None) -> dict[str, Any]:
        return dict(await self._rpc("message_put", _given(
            id=id, conversation=conversation, author=author, seq=seq, ts=ts,
            body=wire.b64e(body), state=state, recipients=recipients)))

    async def message_get(self, id: str) -> dict[str, Any] | None:
        return await none_if_not_found(self._rpc("message_get", {"id": id}))

    async def message_set_state(self, id: str, state: str) -> dict[str, Any]:
        return dict(await self._rpc("message_set_state", {"id": id, "state": state}))

    async def history(self, conversation: str, before: str | None = None,
                      before_ts: float | None = None,
                      limit: int | None = None) -> dict[str, Any]:
        return dict(await self._rpc("history", _given(
            conversation=conversation, before=before, before_ts=before_ts, limit=limit)))

    async def unread_counts(self, marks: dict[str, float],
                            limit: int | None = None) -> dict[str, int]:
        got = await self._rpc("unread_counts", _given(marks=marks, limit=limit))
        return {str(c): int(n) for c, n in got["counts"].items()}

    async def author_ranges(self, conversation: str) -> dict[str, Any]:
        return dict((await self._rpc("author_ranges", {"conversation": conversation}))
                    ["authors"])

    async def messages_by_author(self, conversation: str, author: str,
                                 from_seq: int | None = None, to_seq: int | None = None,
                                 limit: int | None = None) -> dict[str, Any]:
        return dict(await self._rpc("messages_by_author", _given(
            conversation=conversation, author=author, from_seq=from_seq, to_seq=to_seq,
            limit=limit)))

    async def messages_unqueued(self, conversation: str, author: str,
                                from_seq: int | None = None,
                                limit: int | None = None) -> dict[str, Any]:
        return dict(await self._rpc("messages_unqueued", _given(
            conversation=conversation, author=author, from_seq=from_seq, limit=limit)))

    async def outbox_add(self, message_id: str, recipients: list[str],
                         next_attempt_at: float | None = None) -> dict[str, Any]:
        return dict(await self._rpc("outbox_add", _given(
            message_id=message_id, recipients=recipients, next_attempt_at=next_attempt_at)))

    async def outbox_due(self, now: float, limit: int | None = None,
                         after: dict[str, Any] | None = None) -> dict[str, Any]:
        return dict(await self._rpc("outbox_due", _given(now=now, limit=limit, after=after)))

    async def outbox_get(self, message_id: str) -> list[dict[str, Any]]:
        return list((await self._rpc("outbox_get", {"message_id": message_id}))["entries"])

    async def outbox_done(self, message_id: str, recipient: str) -> bool | None:
        """True if it was pending, False if no longer, None if it was never queued."""
        got = await none_if_not_found(self._rpc(
            "outbox_done", {"message_id": message_id, "recipient": recipient}))
        return None if got is None else bool(got["done"])

    async def outbox_failed(self, message_id: str, recipient: str, error: str,
                            next_attempt_at: float | None) -> dict[str, Any]:
        # next_attempt_at is required on the wire (null: give up), so it always goes.
        return dict(await self._rpc("outbox_failed", {
            "message_id": message_id, "recipient": recipient, "error": error,
            "next_attempt_at": next_attempt_at}))


# -- transport -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Addresses:
    """This node's peer ID and the full addresses it can be reached on."""

    peer_id: str
    addrs: tuple[str, ...]


class TransportClient(RpcClient):
    actor = "transport"

    async def addrs(self) -> Addresses:
        got = await self._rpc("addrs")
        return Addresses(str(got["peer_id"]), tuple(got["addrs"]))

    async def peers(self) -> list[dict[str, Any]]:
        """[{"peer_id", "addrs", "protocols", ...}] of the connected peers."""
        return list(await self._rpc("peers"))

    async def peer_info(self, peer_id: str) -> dict[str, Any]:
        return dict(await self._rpc("peer_info", {"peer_id": peer_id}))

    async def dial(self, addr: str) -> dict[str, Any]:
        return dict(await self._rpc("dial", {"addr": addr}))

    async def add_addrs(self, peer_id: str, addrs: list[str]) -> dict[str, Any]:
        return dict(await self._rpc("add_addrs", {"peer_id": peer_id, "addrs": addrs}))

    async def hangup(self, peer_id: str) -> dict[str, Any]:
        return dict(await self._rpc("hangup", {"peer_id": peer_id}))

    async def ping(self, peer_id: str, count: int | None = None) -> dict[str, Any]:
        return dict(await self._rpc("ping", _given(peer_id=peer_id, count=count)))


# -- dht -----------------------------------------------------------------------------


class DhtClient(RpcClient):
    """`timeout` here is the DHT operation's own (an RPC param); the time one call may
    take is a call option (`with_options(timeout=...)`), set above it."""

    actor = "dht"

    async def find_peer(self, peer_id: str, timeout: float | None = None) -> dict[str, Any]:
        """{"peer_id", "addrs", ...}; NOT_FOUND raises: no peer knows it."""
        return dict(await self._rpc("find_peer", _given(peer_id=peer_id, timeout=timeout)))

    async def closest_peers(self, key: str, timeout: float | None = None) -> dict[str, Any]:
        return dict(await self._rpc("closest_peers", _given(key=key, timeout=timeout)))

    async def put(self, key: str, value: bytes, ttl: float | None = None,
                  timeout: float | None = None) -> dict[str, Any]:
        return dict(await self._rpc("put", _given(
            key=key, value=wire.b64e(value), ttl=ttl, timeout=timeout)))

    async def get(self, key: str, timeout: float | None = None) -> dict[str, Any] | None:
        return await none_if_not_found(self._rpc("get", _given(key=key, timeout=timeout)))

    async def provide(self, key: str, timeout: float | None = None) -> dict[str, Any]:
        return dict(await self._rpc("provide", _given(key=key, timeout=timeout)))

    async def find_providers(self, key: str,
                             timeout: float | None = None) -> dict[str, Any]:
        return dict(await self._rpc("find_providers", _given(key=key, timeout=timeout)))

    async def routing_table(self) -> dict[str, Any]:
        return dict(await self._rpc("routing_table"))


# -- fakes for tests -------------------------------------------------------------------


def fake(cls: type[C], **answers: Any) -> C:
    """A stand-in for a client, autospec'd from `cls`: a call with a method or argument
    `cls` does not have raises. Each answer is a return value, an exception to raise,
    or a function (sync or async) called with the arguments. A method without an
    answer raises AssertionError when called, so nothing passes by accident. Calls are
    recorded as on any mock (`fake.sign.await_args`)."""
    # Imported here: unittest.mock brings asyncio along (3 MiB and 40 ms in each actor
    # process, which never builds a fake).
    from unittest import mock

    stand_in = mock.create_autospec(cls, instance=True)
    for name in _methods(cls):
        method = getattr(stand_in, name)
        if name in answers:
            answer = answers.pop(name)
            if isinstance(answer, BaseException) or callable(answer):
                method.side_effect = answer
            else:
                method.return_value = answer
        else:
            method.side_effect = _unexpected(cls, name)
    if answers:
        raise AttributeError(f"{cls.__name__} has no method {', '.join(sorted(answers))}")
    # The copies the options make are the fake itself: answers and records stay one.
    stand_in.with_options.side_effect = lambda **_: stand_in
    stand_in.until_answered.side_effect = lambda on_wait=None: stand_in
    return stand_in


def _methods(cls: type) -> list[str]:
    skip = {"dependency", "with_options", "until_answered"}
    return [n for n in dir(cls) if not n.startswith("_") and n not in skip
            and callable(getattr(cls, n))]


def _unexpected(cls: type, name: str) -> Callable[..., Any]:
    def fail(*args: Any, **kw: Any) -> Any:
        raise AssertionError(f"unexpected call {cls.actor}.{name}{args or ''}{kw or ''}: "
                             "give the fake an answer for it")
    return fail


def build_actor(actor_cls: type[T], *args: Any, **fakes: Any) -> T:
    """An actor instance whose declared dependencies are fakes: those given by name,
    and an answerless `fake` for each other one. A name the class does not declare, or
    a fake of another client class, is refused."""
    declared = dependencies(actor_cls)
    unknown = set(fakes) - set(declared)
    if unknown:
        raise TypeError(f"{actor_cls.__name__} declares no dependency "
                        f"{', '.join(sorted(unknown))} (it has {', '.join(sorted(declared))})")
    actor = actor_cls(*args)
    for name, cls in declared.items():
        stand_in = fakes.get(name) or fake(cls)
        spec = getattr(stand_in, "_spec_class", None)
        if spec is not cls and not isinstance(stand_in, cls):
            raise TypeError(f"the fake for {name} must stand in for {cls.__name__}")
        actor.__dict__[name] = stand_in
    return actor
