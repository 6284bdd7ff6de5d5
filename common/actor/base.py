"""The base class every actor subclasses: its hooks (setup, run, teardown, status,
health, resync) and the services the runtime gives it (publish, call, spawn)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from p2pm.common import actor_tokens, clients, wire
from p2pm.common.home import Home
from p2pm.common.log import get_logger

if TYPE_CHECKING:
    from .runtime import ActorRuntime


class Actor:
    """Base class. Subclasses set `name` and override the hooks they need."""

    name: ClassVar[str] = ""
    _keystore_auth: wire.Auth | None = None  # set on the first call to the keystore

    def __init__(self, home: Home | None = None, config: dict[str, Any] | None = None) -> None:
        self.home = home
        self.config = config or {}
        self.log = get_logger(self.name or type(self).__name__)
        self.runtime: ActorRuntime | None = None

    # hooks ---------------------------------------------------------------------------
    async def setup(self) -> None:
        """Runs before the endpoints serve requests (open files, load state)."""

    async def run(self) -> None:
        """Long-running work of the actor; returns or runs until cancelled."""

    async def teardown(self) -> None:
        """Runs on shutdown, after requests stop (flush, close)."""

    def status(self) -> dict[str, Any]:
        """Extra fields for `sys.status`."""
        return {}

    def healthy(self) -> bool:
        return True

    async def resync(self, source: str, reason: str) -> None:
        """A subscribed actor restarted or we missed its events: re-read its state."""

    # services of the runtime ---------------------------------------------------------
    def publish(self, topic: str, data: Any) -> None:
        assert self.runtime is not None, "publish() needs a running actor"
        self.runtime.publish(topic, data)

    async def call_until_answered(self, actor: str, method: str,
                                  params: dict[str, Any] | None = None,
                                  on_wait: Callable[[str], None] | None = None) -> Any:
        """Call an actor this one cannot work without (at start: the keystore's
        identity, say) until it answers, backing off up to 2 s. Only "not there yet"
        (timeout, unavailable) is waited out; any other error is raised. `on_wait`
        gets the reason each time, e.g. to show it in `sys.status`."""
        return await clients.call_until_answered(self.call, actor, method, params,
                                                 on_wait, self.log)

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Start a background task in the actor's nursery (it dies with the actor)."""
        assert self.runtime is not None and self.runtime._nursery is not None
        self.runtime._nursery.start_soon(fn, *args)

    async def call(self, actor: str, method: str, params: dict[str, Any] | None = None,
                   **kw: Any) -> Any:
        assert self.runtime is not None, "call() needs a running actor"
        client = await self.runtime.client(actor)
        if actor == "keystore":
            # The keystore answers each actor within its own allow-list, so it must
            # know who asks; no other actor is shown our token (it could replay it).
            # Read once: tokens change only when nothing of the node runs (`p2pm up`).
            if self._keystore_auth is None:
                self._keystore_auth = actor_tokens.auth_for(self.runtime.endpoints, self.name)
            kw.setdefault("auth", self._keystore_auth)
        return await client.call(method, params, **kw)
