"""A test actor run as its own process, to exercise the bus across processes.

    python tests/integration/bus_peer.py ENDPOINT_BASE

It answers `echo`, publishes bursts of events on request (`blast`), and exits 0 on
SIGTERM like every p2pm actor.
"""

from __future__ import annotations

import sys
from typing import Any

import trio

from p2pm.common.actor import Actor, rpc, run_actor_process
from p2pm.common.home import Endpoints


class BusPeer(Actor):
    name = "buspeer"

    def __init__(self) -> None:
        super().__init__()
        self.handled = 0

    @rpc
    async def echo(self, value: Any = None) -> Any:
        self.handled += 1
        return value

    @rpc
    async def handled_count(self) -> int:
        return self.handled

    @rpc
    async def blast(self, count: int, topic: str = "buspeer.blast.item") -> int:
        """Publish `count` events as fast as the PUB socket takes them, in a task of
        its own so the reply goes out first."""
        self.spawn(self._blast, count, topic)
        return count

    async def _blast(self, count: int, topic: str) -> None:
        for i in range(count):
            self.publish(topic, {"i": i})
            if i % 1000 == 999:
                await trio.sleep(0)


if __name__ == "__main__":
    sys.exit(run_actor_process(BusPeer(), Endpoints(sys.argv[1])))
