"""Per-peer outbound queues of the router, and the policy that keeps them bounded.

Policy (nothing is dropped without a counter saying so):

* Own messages (published here) are never dropped from a queue. Before accepting a
  publish, the router checks every target peer's own-message queue: if any holds
  `max_own_queue` messages already, the publish is refused with back-pressure and
  nothing changes, so the caller keeps the message in its outbox and retries after
  the next flush. Accepted own messages stay queued until flushed (or until the peer
  disconnects, which is counted).
* Forwarded messages (relayed from others, IWANT answers) are bounded per peer by
  `max_forward_queue`; beyond it the newest is dropped and counted
  (`dropped_forward_queue_full`). The peer can still get it through gossip.
* Control messages and subscription changes are merged, not queued: a topic's GRAFT
  and PRUNE cancel each other, IHAVE/IWANT/IDONTWANT ids are deduplicated, and their
  totals are capped by the router's IHAVE/IWANT limits, so they are bounded by nature.

`drain` turns everything queued for a peer into RPC frames no larger than
`max_rpc_size`: many messages to one peer travel in one frame.
"""

from __future__ import annotations

from collections import deque

from .messages import (
    ControlGraft, ControlIDontWant, ControlIHave, ControlIWant, ControlMessage,
    ControlPrune, SubOpts, rpc_frame,
)

class PeerQueue:
    def __init__(self) -> None:
        self.own: deque[bytes] = deque()  # publish fields, never dropped
        self.forward: deque[bytes] = deque()  # publish fields, bounded
        self.subscriptions: dict[str, bool] = {}
        self.graft: set[str] = set()
        self.prune: dict[str, ControlPrune] = {}
        self.ihave: dict[str, dict[bytes, None]] = {}
        self.iwant: dict[bytes, None] = {}
        self.idontwant: dict[bytes, None] = {}

    def __bool__(self) -> bool:
        return bool(self.own or self.forward or self.subscriptions or self.graft
                    or self.prune or self.ihave or self.iwant or self.idontwant)

    # -- merging control ---------------------------------------------------------------
    def add_graft(self, topic: str) -> None:
        self.prune.pop(topic, None)
        self.graft.add(topic)

    def add_prune(self, prune: ControlPrune) -> None:
        assert prune.topic_id is not None
        self.graft.discard(prune.topic_id)
        self.prune[prune.topic_id] = prune

    def add_ihave(self, topic: str, ids: list[bytes]) -> None:
        self.ihave.setdefault(topic, {}).update(dict.fromkeys(ids))

    def add_iwant(self, ids: list[bytes]) -> None:
        self.iwant.update(dict.fromkeys(ids))

    def add_idontwant(self, ids: list[bytes]) -> None:
        self.idontwant.update(dict.fromkeys(ids))

    def _control(self) -> ControlMessage | None:
        if not (self.graft or self.prune or self.ihave or self.iwant or self.idontwant):
            return None
        control = ControlMessage(
            ihave=tuple(ControlIHave(topic_id=t, message_ids=tuple(ids))
                        for t, ids in self.ihave.items()),
            iwant=(ControlIWant(message_ids=tuple(self.iwant)),) if self.iwant else (),
            graft=tuple(ControlGraft(topic_id=t) for t in sorted(self.graft)),
            prune=tuple(self.prune.values()),
            idontwant=((ControlIDontWant(message_ids=tuple(self.idontwant)),)
                       if self.idontwant else ()),
        )
        self.graft, self.prune, self.ihave = set(), {}, {}
        self.iwant, self.idontwant = {}, {}
        return control

    # -- draining ----------------------------------------------------------------------
    def drain(self, max_rpc_size: int) -> list[bytes]:
        """Everything queued, as RPC frames of at most `max_rpc_size` bytes (a single
        message never exceeds it: the router refuses bigger ones). Own messages go
        first, so a burst of forwarded traffic cannot delay what this node wrote."""
        subs = tuple(SubOpts(subscribe=s, topicid=t) for t, s in self.subscriptions.items())
        self.subscriptions = {}
        head = rpc_frame(subs, [], None)
        tail = rpc_frame((), [], self._control())
        frames: list[bytes] = []
        while self.own or self.forward or head or tail:
            parts = [head]
            size = len(head) + len(tail)
            for source in (self.own, self.forward):
                # The first message of a frame without control always fits.
                while source and (size == 0 or size + len(source[0]) <= max_rpc_size):
                    part = source.popleft()
                    parts.append(part)
                    size += len(part)
            parts.append(tail)
            frames.append(b"".join(parts))
            head = tail = b""
        return frames
