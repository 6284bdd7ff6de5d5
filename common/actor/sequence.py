"""What a subscriber knows of the actors it listens to, without sockets or time: each
source's epoch and the last seq of each topic, and when that says it must re-read a
source's state (a `Resync`).

Every event carries `(epoch, seq)`: `seq` counts per topic, `epoch` changes with every
start of the source. A heartbeat carries the source's last seq of every topic. The rules,
in the order they are applied to one event:

1. A new epoch: the source restarted; everything known of it is stale. Resync
   ("restarted"), except for the first epoch ever heard (nothing was known).
2. A heartbeat naming, for a topic we subscribe to, a seq beyond the last we got (0 if
   none: PUB/SUB drops what is published while a subscriber connects, so one that
   joined late has missed those too): one resync listing those topics ("missed events
   on ..."). Heartbeats themselves may be lost at no cost: each carries every seq.
3. An event whose seq skips past the last one + 1: resync ("gap on <topic>").

Bounded: one entry per (topic, source) the subscriber's prefixes match, and a source's
entries are dropped when it restarts. A malformed heartbeat entry is ignored.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Resync:
    source: str
    reason: str


def matches(topic: str, prefixes: typing.Iterable[str]) -> bool:
    """Whether a dotted topic is one of the prefixes or under one."""
    return any(topic == p or topic.startswith(p + ".") for p in prefixes)


def source_of(topic: str) -> str:
    return topic.split(".")[0]


class SequenceTracker:
    """Feed it every event heard (`observe`); it answers the resyncs due, in order."""

    def __init__(self, prefixes: typing.Iterable[str]) -> None:
        self.prefixes = tuple(prefixes)
        self._last: dict[str, tuple[str, int]] = {}  # topic -> (epoch, seq)
        self._epochs: dict[str, str] = {}  # source -> epoch

    def observe(self, topic: str, epoch: str, seq: int, data: Any) -> list[Resync]:
        source = source_of(topic)
        due: list[Resync] = []
        if self._epochs.get(source) != epoch:
            first = source not in self._epochs
            self._epochs[source] = epoch
            self._last = {t: v for t, v in self._last.items()
                          if not t.startswith(source + ".")}
            if not first:
                due.append(Resync(source, "restarted"))
        heartbeat = f"{source}.sys.heartbeat"
        topics = data.get("topics") if isinstance(data, dict) else None
        if topic == heartbeat and isinstance(topics, dict):
            missed = []
            for t, last in topics.items():
                if not isinstance(last, int) or t == heartbeat or not matches(t, self.prefixes):
                    continue
                seen = self._last.get(t)
                if (seen[1] if seen is not None else 0) < last:
                    self._last[t] = (epoch, last)
                    missed.append(t)
            if missed:
                due.append(Resync(source, f"missed events on {', '.join(missed)}"))
        prev = self._last.get(topic)
        self._last[topic] = (epoch, seq)
        if topic != heartbeat and seq > (prev[1] if prev is not None else 0) + 1:
            due.append(Resync(source, f"gap on {topic}"))
        return due

    def last_seq(self, topic: str) -> int | None:
        got = self._last.get(topic)
        return None if got is None else got[1]
