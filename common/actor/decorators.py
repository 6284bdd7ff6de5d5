"""The decorators that make a method an RPC, an event handler or a timer. They only
record metadata on the function; `ActorRuntime` reads it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any


def rpc(fn: Callable[..., Awaitable[Any]] | None = None, *, name: str | None = None) -> Any:
    """Mark a coroutine method as an RPC entrypoint (wire name: the method's name)."""

    def mark(f: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        f._p2pm_rpc = name or f.__name__  # type: ignore[attr-defined]
        return f

    return mark(fn) if fn is not None else mark


def on_event(*prefixes: str) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Mark a coroutine method `(self, topic, data)` as handler of events with these
    dotted prefixes (`transport.peer` matches `transport.peer.connected`)."""

    def mark(f: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        f._p2pm_events = tuple(prefixes)  # type: ignore[attr-defined]
        return f

    return mark


def every(seconds: float) -> Callable[[Callable[..., Awaitable[None]]], Any]:
    """Mark a coroutine method to run every `seconds` while the actor runs."""

    def mark(f: Callable[..., Awaitable[None]]) -> Callable[..., Awaitable[None]]:
        f._p2pm_every = float(seconds)  # type: ignore[attr-defined]
        return f

    return mark
