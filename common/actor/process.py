"""One actor as this process (what supervisord runs): a lock so a second instance in
the same home is refused, signals that stop it cleanly, and the ZMQ context ended so
queued messages are not lost."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from typing import Any

import trio
import zmq

from p2pm.common.home import Endpoints

from .base import Actor
from .runtime import STOP_BOUND_S, ActorRuntime


def run_actor_process(actor: Actor, endpoints: Endpoints) -> int:
    """Run one actor as this process until SIGTERM/SIGINT; returns the exit code.

    On a signal the root nursery is cancelled, sockets close with a linger and the
    context is terminated (pyzmq does not do that at interpreter exit, and queued
    messages would be lost). 0 on a signal, 1 on a crash.
    """
    ctx = zmq.Context.instance()
    lock = _lock_actor(actor.name, endpoints)
    if lock is None:
        print(f"p2pm: {actor.name} is already running in this home; stop it first "
              f"(e.g. supervisorctl stop {actor.name})", file=sys.stderr)
        return 2

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            runtime = ActorRuntime(actor, endpoints, ctx)

            async def watch_signals() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as sigs:
                    async for signum in sigs:
                        actor.log.info("actor.stopping", signal=signal.Signals(signum).name)
                        _exit_after(STOP_BOUND_S, actor)
                        nursery.cancel_scope.cancel()
                        return

            nursery.start_soon(watch_signals)
            await runtime.serve()

    code = 0
    try:
        trio.run(main)
    except Exception:
        actor.log.error("actor.crashed", exc=True)
        code = 1
    finally:
        ctx.term()
        lock.close()
    return code


def _exit_after(seconds: float, actor: Actor) -> None:
    """The stop's bound: a task that ignores cancellation (a shielded send to a peer
    socket that went away, a thread) must not keep a stopping actor alive until
    supervisord's SIGKILL. Exits 0, as a stop does; the log says it was cut short."""
    def overrun() -> None:
        actor.log.error("actor.stop_overrun", bound_s=seconds)
        logging.shutdown()
        os._exit(0)

    timer = threading.Timer(seconds, overrun)
    timer.daemon = True
    timer.start()


# How long a starting actor waits for its lock. `p2pm status`/`up` find live actors
# by taking each lock shared for an instant; an actor starting in that instant must
# not take the probe for a second instance (`up` once failed with "dht is already
# running" in a fresh home). A real second instance holds it for good: still refused.
LOCK_WAIT_S = 1.0


def _lock_actor(name: str, endpoints: Endpoints) -> Any:
    """One process per actor and home: binding an ipc endpoint silently steals it from
    a live process, so a second instance must be refused before it binds."""
    import fcntl

    run_dir = endpoints.run_dir
    if run_dir is None:
        return open(os.devnull)  # inproc: nothing to guard
    f = open(run_dir / f"{name}.lock", "a+")
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                f.close()
                return None
            time.sleep(0.01)
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    return f
