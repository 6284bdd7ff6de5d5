"""The bus envelope: encoding and validation of requests, replies and events.

Decided once: every payload is one orjson frame; bytes travel inside it as standard
base64 strings (helpers `b64e`/`b64d`). Stream data, which is bulk, does not use the
bus at all but the transport's dedicated stream sockets.

Request  {"id": str, "method": str, "params": object, "auth"?: {"actor": str, "token": str}}
         (`auth` only on requests to the keystore: which actor asks, see actor_tokens.py)
Reply    {"id": str, "ok": true, "result": any} | {"id", "ok": false, "error": {"code", "message"}}
Event    frames [topic, {"epoch": str, "seq": int, "ts": float, "data": any}]
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import Any

import orjson

from . import errors

MAX_FRAME = 4 * 1024 * 1024  # a bus message larger than this is refused


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(obj)).decode("ascii")
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    raise TypeError(f"not serialisable on the bus: {type(obj).__name__}")


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj, default=_default)


def loads(data: bytes) -> Any:
    return orjson.loads(data)


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: Any, what: str = "value") -> bytes:
    if not isinstance(text, str):
        raise errors.bad_params(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise errors.bad_params(f"{what} is not valid base64") from None


@dataclasses.dataclass(frozen=True, slots=True)
class Auth:
    """Who sends a request, as the request says: an actor's name and its token."""

    actor: str
    token: str


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    id: str
    method: str
    params: dict[str, Any]
    auth: Auth | None = None


def decode_request(frame: bytes) -> Request:
    """Parse one request frame; raises BusError(BAD_REQUEST) with what is wrong."""
    if len(frame) > MAX_FRAME:
        raise errors.BusError(errors.BAD_REQUEST, f"request larger than {MAX_FRAME} bytes")
    try:
        obj = orjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise errors.BusError(errors.BAD_REQUEST, f"request is not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise errors.BusError(errors.BAD_REQUEST, "request must be a JSON object")
    rid, method, params = obj.get("id"), obj.get("method"), obj.get("params", {})
    if not isinstance(rid, str) or not rid or len(rid) > 128:
        raise errors.BusError(errors.BAD_REQUEST, "request needs a string 'id' (1-128 chars)")
    if not isinstance(method, str) or not method:
        raise errors.BusError(errors.BAD_REQUEST, "request needs a string 'method'")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise errors.BusError(errors.BAD_REQUEST, "'params' must be a JSON object")
    auth = obj.get("auth")
    if auth is not None:
        if not (isinstance(auth, dict) and set(auth) == {"actor", "token"}
                and all(isinstance(v, str) and 0 < len(v) <= 128 for v in auth.values())):
            raise errors.BusError(errors.BAD_REQUEST, (
                "'auth' must be an object with a string 'actor' and 'token' (1-128 chars)"))
        auth = Auth(auth["actor"], auth["token"])
    return Request(rid, method, params, auth)


def encode_request(rid: str, method: str, params: dict[str, Any] | None,
                   auth: Auth | None = None) -> bytes:
    request: dict[str, Any] = {"id": rid, "method": method, "params": params or {}}
    if auth is not None:
        request["auth"] = {"actor": auth.actor, "token": auth.token}
    return dumps(request)


def encode_ok(rid: str, result: Any) -> bytes:
    return dumps({"id": rid, "ok": True, "result": result})


def encode_error(rid: str | None, err: errors.BusError) -> bytes:
    return dumps({"id": rid, "ok": False, "error": err.to_wire()})


def encode_event(epoch: str, seq: int, ts: float, data: Any) -> bytes:
    return dumps({"epoch": epoch, "seq": seq, "ts": ts, "data": data})
