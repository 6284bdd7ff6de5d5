"""The actor runtime: one declarative shape for every p2pm service.

The package: `decorators` (rpc, on_event, every: metadata only), `base` (the Actor
class and its hooks), `params` (binding a request to a handler's signature),
`sequence` (the pure epoch/seq bookkeeping that says when to resync), `runtime`
(ActorRuntime: the sockets around all of that) and `process` (one actor a process).

An actor is a class with a `name`. Decorators only record metadata:

    class Storage(Actor):
        name = "storage"

        @rpc
        async def save_message(self, conversation: str, body: bytes) -> dict: ...

        @on_event("gossip.message.received")
        async def _store_incoming(self, topic: str, data: dict) -> None: ...

        @every(30.0)
        async def _checkpoint(self) -> None: ...

`ActorRuntime` derives from that the ROUTER routes, SUB subscriptions and timers. The
same class runs three ways: methods called directly in a unit test; several actors in
one process over `inproc://` endpoints (integration tests, simulations); or one actor a
process under supervisord over `ipc://` endpoints in the node's home.

Theory of operation
-------------------
* Requests arrive on a ROUTER. Each is decoded once at the boundary (`wire`), its
  params bound to the handler's signature and type-checked (`params`), and handled in
  its own task, at most `MAX_CONCURRENT` at once (beyond that the ROUTER stops reading
  and ZMQ pushes back on the callers).
* Redelivery is harmless: clients retry with the same request id; a reply is cached
  by id for a while and re-sent, and a duplicate of an in-flight request waits for the
  same reply instead of running the handler twice.
* A request may say which actor sends it (`auth`: name and token, see actor_tokens);
  `Actor.call` adds it to requests for the keystore only, and a handler reads it with
  `request_auth()`. The runtime does not check it: the keystore does.
* Anything wrong with a request becomes an error reply; nothing a client sends can take
  the actor down. A handler crash is logged and answered with `internal`.
* Events go out on a PUB socket as `[topic, {epoch, seq, ts, data}]`; `seq` counts per
  topic, `epoch` changes with every process start. A heartbeat every `heartbeat_s`
  (1 s by default) carries the epoch and the last seq of every topic, so a subscriber
  notices both a restart and an event it missed (`sequence.SequenceTracker`), and
  calls the actor's `resync(source, reason)` to re-read state.
"""

from __future__ import annotations

from .base import Actor
from .decorators import every, on_event, rpc
from .process import run_actor_process
from .runtime import (
    HEARTBEAT_S, MAX_CONCURRENT, REPLY_CACHE, STOP_BOUND_S, TEARDOWN_S, ActorRuntime,
    request_auth,
)
from .sequence import Resync, SequenceTracker

__all__ = ["HEARTBEAT_S", "MAX_CONCURRENT", "REPLY_CACHE", "STOP_BOUND_S", "TEARDOWN_S",
           "Actor", "ActorRuntime", "Resync", "SequenceTracker", "every", "on_event", "request_auth", "rpc",
           "run_actor_process"]
