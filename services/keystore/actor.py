"""The keystore actor: holds the Ed25519 identity key and uses it for the other actors,
each only for what its job needs. The secret key never leaves this process: not in a
reply, an event or a log line; nor does any raw X25519 output (a direct chat's secret
is derived here and only that is handed out; nor is a subkey handed out for a purpose
not on the list: `subkey` gives the storage actor its at-rest key).

Who may ask what is the allow-list in policy.py. Each request for a key operation must
say which actor asks (the request's `auth`, with the token actor_tokens.py issued for
that actor); a request without it, with a wrong token, or for something outside that
actor's list is FORBIDDEN with a message naming the actor and the domain, logged
(`keystore.refused`) and counted per actor in `sys.status` (`refused`). `identity` and
`unlock` are open to any caller.

States: *no identity* (the file is missing or damaged: every RPC answers UNAVAILABLE
with the reason), *locked* (only `unlock` works), *unlocked* (healthy). At start it
unlocks by itself with the hex unlock key in $P2PM_KEYSTORE_KEY (put there by `p2pm up`
through supervisord, so a restarted keystore comes back unlocked without the passphrase
ever touching the disk), or with the empty passphrase if the identity is unprotected.
Once read, the variable is removed from this process's environment (so nothing it may
start inherits it); the kernel's copy in /proc/<pid>/environ stays, see README.

Events: `keystore.identity.unlocked {"peer_id"}` when `unlock` opens the key (one that
starts unlocked shows it in its heartbeat's `healthy` flag instead).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from typing import Any, NoReturn

import nacl.signing
import trio

from p2pm.common import actor_tokens, errors, identity
from p2pm.common.actor import Actor, request_auth, rpc

from . import policy

MAX_SIGN_BYTES = 1024 * 1024
MAX_PASSPHRASE_BYTES = 4096
LOCKED = "keystore is locked: start the node with p2pm up and its passphrase"


@dataclass(frozen=True, slots=True)
class IdentityInfo:
    peer_id: str
    public_key: bytes
    public_key_proto: bytes
    x25519_public: bytes


@dataclass(frozen=True, slots=True)
class Signature:
    signature: bytes


@dataclass(frozen=True, slots=True)
class DirectSecret:
    secret: bytes


@dataclass(frozen=True, slots=True)
class Subkey:
    key: bytes


@dataclass(frozen=True, slots=True)
class Unlocked:
    peer_id: str


class Keystore(Actor):
    name = "keystore"

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._key: nacl.signing.SigningKey | None = None
        self._peer_id: str | None = None
        self._problem: str | None = None  # why there is no usable identity
        # Argon2id takes 128 MiB a run: unlock attempts go one at a time.
        self._unlocking = trio.Lock()
        # Tokens of the actors in policy.ALLOWED, read once (bounded by that map).
        self._tokens: dict[str, str] = {}
        # Refused requests per actor: the actors of the map, plus "unknown" for every
        # name outside it (a name a caller makes up never becomes a new key).
        self._refused: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------
    async def setup(self) -> None:
        if self.home is None:
            self._problem = "the keystore runs without a home folder"
            return
        path = self.home.identity_file
        if not path.exists():
            self._problem = f"no identity in {self.home.root}: run p2pm init"
            self.log.warning("keystore.no_identity", home=self.home.root)
            return
        try:
            self._peer_id = identity.read_peer_id(path)
            protected = identity.is_protected(path)
        except identity.IdentityError as exc:
            self._problem = str(exc)
            self.log.error("keystore.bad_identity", reason=self._problem)
            return
        how = "locked"
        env_key = os.environ.pop(identity.UNLOCK_KEY_ENV, None)
        if env_key:
            try:
                self._key = identity.open_identity(path, bytes.fromhex(env_key))
                how = "unlock_key"
            except ValueError:
                self.log.warning("keystore.unlock_key_refused", reason="not hex",
                                 variable=identity.UNLOCK_KEY_ENV)
            except identity.IdentityError as exc:
                self.log.warning("keystore.unlock_key_refused", reason=str(exc),
                                 variable=identity.UNLOCK_KEY_ENV)
        elif not protected:
            try:
                self._key = await self._open_with(path, "")
                how = "no_passphrase"
            except identity.IdentityError as exc:
                self.log.error("keystore.open_failed", reason=str(exc))
        self.log.info("keystore.identity", peer_id=self._peer_id, state=how)

    def healthy(self) -> bool:
        return self._key is not None

    def status(self) -> dict[str, Any]:
        return {"unlocked": self._key is not None, "peer_id": self._peer_id,
                "problem": self._problem, "refused": dict(self._refused)}

    # -- helpers -----------------------------------------------------------------------
    def _unlocked_key(self) -> nacl.signing.SigningKey:
        if self._problem is not None:
            raise errors.unavailable(self._problem)
        if self._key is None:
            raise errors.unavailable(LOCKED)
        return self._key

    def _allow(self, operation: str, domain: str) -> None:
        """Raise FORBIDDEN unless the request comes, authenticated, from an actor whose
        allow-list has `operation` in `domain`."""
        auth = request_auth()
        if auth is None:
            self._refuse("unknown", operation, domain, (
                f"the keystore does {operation} only for an actor that says which it is "
                "(the request's auth: actor name and token); this request names none"))
        if auth.actor not in policy.ALLOWED:
            self._refuse("unknown", operation, domain, policy.refusal(auth.actor, operation,
                                                                       domain) or "")
        if not self._token_matches(auth.actor, auth.token):
            self._refuse(auth.actor, operation, domain, (
                f"the request says it comes from {auth.actor}, but its token is not "
                f"{auth.actor}'s; refused {operation} in domain {policy.shown(domain)}"))
        why = policy.refusal(auth.actor, operation, domain)
        if why is not None:
            self._refuse(auth.actor, operation, domain, why)

    def _token_matches(self, actor: str, token: str) -> bool:
        assert self.runtime is not None
        for fresh in (False, True):  # on a mismatch, read again: `p2pm up` renews them
            if fresh or actor not in self._tokens:
                try:
                    self._tokens[actor] = actor_tokens.token_for(self.runtime.endpoints, actor)
                except (OSError, ValueError) as exc:
                    self.log.error("keystore.token_unreadable", actor=actor, reason=str(exc))
                    return False
            if hmac.compare_digest(self._tokens[actor].encode(), token.encode()):
                return True
        return False

    def _refuse(self, counted_as: str, operation: str, domain: str, why: str) -> NoReturn:
        self._refused[counted_as] = self._refused.get(counted_as, 0) + 1
        auth = request_auth()
        self.log.warning("keystore.refused", actor=auth.actor if auth else None,
                         operation=operation, domain=policy.shown(domain), reason=why)
        raise errors.forbidden(why)

    @staticmethod
    async def _open_with(path: os.PathLike[str], passphrase: str) -> nacl.signing.SigningKey:
        def work() -> nacl.signing.SigningKey:
            return identity.open_identity(path, identity.derive_unlock_key(path, passphrase))

        # Argon2id takes ~0.2 s; off the event loop, the actor keeps answering meanwhile.
        return await trio.to_thread.run_sync(work)

    # -- RPCs --------------------------------------------------------------------------
    @rpc
    async def identity(self) -> IdentityInfo:
        """{} -> {"peer_id", "public_key": b64 (32 bytes), "public_key_proto": b64
        (libp2p protobuf), "x25519_public": b64 (32 bytes)}"""
        key = self._unlocked_key()
        public = bytes(key.verify_key)
        return IdentityInfo(
            peer_id=identity.peer_id_from_public_key(public),
            public_key=public,
            public_key_proto=identity.public_key_proto(public),
            x25519_public=identity.x25519_public(public),
        )

    @rpc
    async def sign(self, domain: str, data: bytes, payload_type: bytes | None = None) -> Signature:
        """{"domain", "data": b64, "payload_type"?: b64} -> {"signature": b64 (64 bytes)}

        Signs `identity.signed_bytes(domain, data, payload_type)`. FORBIDDEN for a domain
        not on the calling actor's allow-list; BAD_PARAMS for data over 1 MiB or a
        payload_type that does not fit the domain (required for "libp2p-peer-record",
        refused otherwise).
        """
        self._allow(policy.SIGN, domain)
        key = self._unlocked_key()
        if domain not in identity.SIGNING_DOMAINS:
            raise errors.forbidden(
                f"the keystore does not sign in domain {domain!r}; allowed: "
                f"{', '.join(sorted(identity.SIGNING_DOMAINS))}")
        if len(data) > MAX_SIGN_BYTES:
            raise errors.bad_params(f"data is {len(data)} bytes; the keystore signs at most "
                                    f"{MAX_SIGN_BYTES}")
        try:
            return Signature(identity.sign(key, domain, data, payload_type))
        except identity.SigningDomainError as exc:
            raise errors.bad_params(str(exc)) from None

    @rpc
    async def direct_secret(self, peer_id: str) -> DirectSecret:
        """{"peer_id"} -> {"secret": b64 (32 bytes)}

        The secret of our direct chat with `peer_id`: X25519 of our identity with the
        key inside that peer ID, then `identity.direct_secret`. The X25519 output itself
        is never returned. BAD_PARAMS for a peer ID without an Ed25519 key, our own, or
        a low-order key.
        """
        self._allow(policy.DIRECT_SECRET, policy.DIRECT_PURPOSE)
        key = self._unlocked_key()
        try:
            return DirectSecret(identity.direct_chat_secret(key, peer_id))
        except identity.IdentityError as exc:
            raise errors.bad_params(str(exc)) from None

    @rpc
    async def subkey(self, purpose: str) -> Subkey:
        """{"purpose": "storage-at-rest-v1"} -> {"key": b64 (32 bytes)}

        A key derived one-way from the identity for one purpose (identity.derive_subkey),
        never the identity key itself. FORBIDDEN for a purpose not on
        identity.SUBKEY_PURPOSES or outside the caller's allow-list; UNAVAILABLE while
        locked.
        """
        self._allow(policy.SUBKEY, purpose)
        key = self._unlocked_key()
        try:
            return Subkey(identity.derive_subkey(key, purpose))
        except identity.SigningDomainError as exc:
            raise errors.forbidden(str(exc)) from None

    @rpc
    async def unlock(self, passphrase: str) -> Unlocked:
        """{"passphrase"} -> {"peer_id"}; FORBIDDEN "wrong passphrase".

        Also answers on an unlocked keystore (checking the passphrase all the same),
        so a retried or repeated unlock is harmless.
        """
        if self._problem is not None or self.home is None:
            raise errors.unavailable(self._problem or "no identity")
        if len(passphrase.encode()) > MAX_PASSPHRASE_BYTES:
            raise errors.bad_params(f"passphrase longer than {MAX_PASSPHRASE_BYTES} bytes")
        async with self._unlocking:
            try:
                key = await self._open_with(self.home.identity_file, passphrase)
            except identity.WrongPassphrase:
                self.log.warning("keystore.unlock_refused", reason="wrong passphrase")
                raise errors.forbidden("wrong passphrase") from None
            except identity.IdentityError as exc:
                raise errors.unavailable(str(exc)) from None
            peer_id = identity.peer_id_from_public_key(bytes(key.verify_key))
            if peer_id != self._peer_id:
                raise errors.BusError(errors.CONFLICT, (
                    f"the identity file now holds {peer_id}, not {self._peer_id}; "
                    "restart the node to use it"))
            if self._key is None:
                self._key = key
                self.log.info("keystore.unlocked", peer_id=peer_id)
                if self.runtime is not None:
                    self.publish("keystore.identity.unlocked", {"peer_id": peer_id})
        return Unlocked(peer_id)
