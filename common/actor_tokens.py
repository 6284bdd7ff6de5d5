"""Per-actor tokens: how an actor proves to the keystore which actor it is.

Every request an actor sends to the keystore carries its name and its token (the
request's `auth` field, see wire.py); the keystore compares the token with the one
issued for that name before it applies the actor's allow-list (services/keystore/
policy.py). A token is 32 random bytes, hex.

Where a token lives depends on the endpoints, so one rule serves every way a node is
started (`p2pm up` under supervisord, `p2pm service` by hand or under honcho, the test
harnesses and benches that run actors in one process):

- ipc endpoints (a real home): `run/tokens/<actor>.token`, the folder 0700 and the file
  0600. Whichever side needs a token first (the actor presenting it, or the keystore
  checking it) creates it; creation is atomic (link of a complete file), so two that
  race read the same token. `p2pm up` removes the old ones before it starts a node,
  so every run has fresh tokens.
- inproc endpoints (one process): a table in this module, keyed by the endpoints.

Files rather than per-program `environment=` lines in supervisord.conf: the environment
would be no narrower (supervisord's would hold every token, and /proc/<pid>/environ is
readable by the same user as these files are), and it would not reach actors started
without supervisord.

This tells actors apart and stops one from using another's rights by mistake; it does
not stop hostile code running as the same user, which can read these files (and
/proc/<pid>/environ, and the memory of every actor). README: key custody.
"""

from __future__ import annotations

import os
import secrets
from collections import OrderedDict
from pathlib import Path

from .home import Endpoints
from .wire import Auth

TOKEN_DIR = "tokens"
TOKEN_BYTES = 32
# Longest actor name a token is kept for: names reach file names, so they are checked.
MAX_NAME = 32
# inproc tokens: one per (endpoints, actor). Tests start many inproc nodes in a process;
# past this many the oldest is dropped (a node that old is long gone).
MAX_INPROC = 1024
_inproc: OrderedDict[tuple[str, str], str] = OrderedDict()


def valid_name(actor: str) -> bool:
    return 0 < len(actor) <= MAX_NAME and actor.replace("-", "").replace("_", "").isalnum() \
        and actor.isascii()


def auth_for(endpoints: Endpoints, actor: str) -> Auth:
    """What a request from `actor` to the keystore of these endpoints carries."""
    return Auth(actor, token_for(endpoints, actor))


def token_for(endpoints: Endpoints, actor: str) -> str:
    """The token issued for `actor` on these endpoints, issuing it if there is none."""
    if not valid_name(actor):
        raise ValueError(f"not an actor name: {actor!r}")
    run_dir = endpoints.run_dir
    if run_dir is None:
        key = (endpoints.base, actor)
        if key not in _inproc:
            _inproc[key] = secrets.token_hex(TOKEN_BYTES)
            while len(_inproc) > MAX_INPROC:
                _inproc.popitem(last=False)
        return _inproc[key]
    folder = run_dir / TOKEN_DIR
    path = folder / f"{actor}.token"
    if (token := _read(path)) is not None:
        return token
    folder.mkdir(mode=0o700, exist_ok=True)
    os.chmod(folder, 0o700)
    tmp = folder / f".{actor}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(TOKEN_BYTES))
        try:
            os.link(tmp, path)  # fails if another process issued it first: use theirs
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    token = _read(path)
    assert token is not None  # linked above, by us or by the one that came first
    return token


def _read(path: Path) -> str | None:
    """The token in `path`; None when there is none. A file that holds anything else
    (edited by hand) is an error to fix, not a token to replace behind the actors."""
    try:
        token = path.read_text().strip()
    except FileNotFoundError:
        return None
    if len(token) != 2 * TOKEN_BYTES:
        raise ValueError(f"{path} does not hold a token; p2pm up issues new ones")
    return token


def renew(endpoints: Endpoints) -> None:
    """Forget every token of these endpoints (`p2pm up`, before anything runs), so the
    next ones are fresh."""
    run_dir = endpoints.run_dir
    if run_dir is None:
        for key in [k for k in _inproc if k[0] == endpoints.base]:
            del _inproc[key]
        return
    folder = run_dir / TOKEN_DIR
    if folder.is_dir():
        for path in folder.iterdir():
            path.unlink(missing_ok=True)
