"""Every error code that crosses the bus, in one place.

A reply is either `{"id", "ok": true, "result"}` or
`{"id", "ok": false, "error": {"code", "message"}}`; `code` is one of the names below.
Callers branch on the code, people read the message.
"""

from __future__ import annotations

# The request itself is broken: not an envelope, not JSON, missing fields.
BAD_REQUEST = "bad_request"
# The actor has no such method.
UNKNOWN_METHOD = "unknown_method"
# The method exists but the params do not fit its signature or fail validation.
BAD_PARAMS = "bad_params"
# The operation is refused by policy (e.g. a signing domain not on the allow-list).
FORBIDDEN = "forbidden"
# The thing asked for does not exist.
NOT_FOUND = "not_found"
# The actor cannot serve this now (locked keystore, limit reached); try later.
UNAVAILABLE = "unavailable"
# A limit was hit (connections, streams, sizes).
LIMIT = "limit"
# The operation conflicts with current state.
CONFLICT = "conflict"
# Persisting failed (disk full, read-only database): the write did NOT happen.
STORAGE = "storage"
# The handler crashed; the actor stays up and logs the traceback.
INTERNAL = "internal"
# Client side only: no reply within the deadline after all retries.
TIMEOUT = "timeout"

ALL = frozenset(
    {BAD_REQUEST, UNKNOWN_METHOD, BAD_PARAMS, FORBIDDEN, NOT_FOUND, UNAVAILABLE, LIMIT,
     CONFLICT, STORAGE, INTERNAL, TIMEOUT}
)


class BusError(Exception):
    """An error reply, raised by a handler or received by a client."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def bad_params(message: str) -> BusError:
    return BusError(BAD_PARAMS, message)


def not_found(message: str) -> BusError:
    return BusError(NOT_FOUND, message)


def forbidden(message: str) -> BusError:
    return BusError(FORBIDDEN, message)


def unavailable(message: str) -> BusError:
    return BusError(UNAVAILABLE, message)
