"""The GossipSub v1.1 router core (`/meshsub/1.1.0`, `/meshsub/1.0.0`, and the
IDONTWANT of `/meshsub/1.2.0`), without I/O.

Theory of operation
-------------------
`Router` is a state machine in the style of h11: the actor shell feeds it inputs and
performs what comes back; it never sleeps, sends or reads a clock. Time arrives as
`now` (seconds, any monotonic origin) and randomness as the `rng` given at
construction, so a simulation or a test drives it deterministically.

Inputs                                   Outputs
  add_peer / remove_peer (stream up/down)  a list of events: MessageReceived,
  subscribe / unsubscribe (local topics)     Grafted, Pruned, PeerExchange
  handle_rpc(peer, frame)  (peer's RPC)    publish -> Published | Backpressure
  publish(topic, data)     (our message)   flush() -> SendRpc(peer, frame) per frame
  heartbeat(now)           (every heartbeat_s)

Everything destined to a peer goes into that peer's `PeerQueue` (queues.py, which
also states the overflow policy), and `flush()` turns each queue into as few RPC
frames as fit `max_rpc_size`: many messages and control entries to one peer travel
in one frame. The shell calls `flush()` after each batch of inputs, when the
transport has credit for the peer.

A received RPC goes through, in order: size limit, decoding (DecodeError -> counted,
nothing changes), graylist (score below `graylist_threshold` -> ignored),
subscriptions, messages, control. A message is checked for topic (we only take
messages of topics we subscribe to), size, StrictSign fields (from, seqno,
signature must be present), duplicates (seen cache), the author's signature (the
injected `verify`), then the application's `validate` hook (accept / reject /
ignore). Accepted messages are delivered once, cached for gossip, and forwarded to
the topic mesh minus the sender, the author and peers that sent IDONTWANT for it.
A bad signature or a rejected message costs the forwarding peer P4 score; the
message id is marked seen only after the signature checks, so a forged copy cannot
shadow the genuine message.

Protocol awareness per peer: towards `/meshsub/1.0.0` peers a PRUNE carries neither
peer exchange nor backoff, and their early re-GRAFT is refused without the P7
penalty (they cannot know our backoff); IDONTWANT goes only to 1.2 peers. Direct
peers (v1.1 explicit peering) stay outside the mesh and get every message.

Private topics (conversations, `make_private`): only peers the shell `admit`s (the
conversation's proven members) learn that we subscribe, count as the topic's peers
(mesh, fanout, IHAVE targets, forwarding, PX) and have their messages, IHAVE, IWANT
and GRAFT for it taken; anyone else's traffic on it is counted and dropped before
any decoding or signature work, with no reply (a PRUNE or an IWANT answer would
confirm the topic). A stranger's subscription is remembered only as a claim
(`claimants`), which the shell may answer by asking for a membership proof.
`revoke` turns a member back into a stranger (removed, left).

The router is one class in three files: this one (peers, topics, publishing,
receiving, output), control.py (IHAVE/IWANT/GRAFT/PRUNE/IDONTWANT input) and mesh.py
(mesh changes and the heartbeat); events.py holds what goes in and comes out.

Every input a peer controls is bounded: IHAVE messages and advertised ids per
heartbeat, IWANT retransmissions per message, IDONTWANT ids per heartbeat, topics
per peer, message and frame sizes. Whatever is refused or dropped is counted in
`statistics()`.
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from p2pm.common.log import get_logger

from .caches import MessageCache, SeenCache
from .control import ControlHandling
from .events import (
    Backpressure, Event, Grafted, MessageReceived, PeerExchange, Published, Pruned,
    SendRpc, Signer, Validation, Validator, Verifier, default_message_id,
)
from .mesh import MeshMaintenance
from .messages import (
    RPC, DecodeError, Message, control_has_unknown_fields, decode_rpc, encode,
    publish_field, signed_prefix, signing_data,
)
from .params import PROTOCOL_V12, PROTOCOLS, GossipParams, ScoreParams
from .queues import PeerQueue
from .score import PeerScore

__all__ = [
    "Backpressure", "Event", "Grafted", "MessageReceived", "PeerExchange", "Published",
    "Pruned", "Router", "SendRpc", "Signer", "Validation", "Validator", "Verifier",
    "default_message_id",
]

log = get_logger("gossip.router")

# -- state -----------------------------------------------------------------------------


@dataclass
class _Pending:
    message: Message
    encoded: bytes
    source: bytes
    since: float


@dataclass
class _Peer:
    protocol: str
    outbound: bool
    direct: bool = False  # v1.1 explicit peering: outside the mesh, always forwarded to
    topics: set[str] = field(default_factory=set)
    queue: PeerQueue = field(default_factory=PeerQueue)
    # Per-heartbeat spam budgets, reset every heartbeat.
    ihave_received: int = 0
    iwant_asked: int = 0
    idontwant_received: int = 0
    dont_send: dict[bytes, float] = field(default_factory=dict)  # msg id -> expiry


class Router(ControlHandling, MeshMaintenance):
    def __init__(self, local_peer: bytes, *, verify: Verifier, rng: random.Random,
                 sign: Signer | None = None, validate: Validator | None = None,
                 params: GossipParams | None = None, score_params: ScoreParams | None = None,
                 message_id: Callable[[Message], bytes] = default_message_id) -> None:
        self.local_peer = local_peer
        self.params = params or GossipParams()
        self._verify = verify
        self._sign = sign
        self._validate = validate
        self._rng = rng
        self._message_id = message_id
        self._score = PeerScore(score_params or ScoreParams())
        self._peers: dict[bytes, _Peer] = {}
        self._topics: set[str] = set()  # our subscriptions
        # Private topics (conversations): topic -> the peers admitted to it. One entry
        # per private topic the shell declared (bounded by its conversations); the
        # admitted peers are the conversation's proven members.
        self._private: dict[str, set[bytes]] = {}
        self._topic_peers: dict[str, set[bytes]] = {}
        self._mesh: dict[str, set[bytes]] = {}
        self._fanout: dict[str, set[bytes]] = {}
        self._fanout_last_publish: dict[str, float] = {}
        self._backoff: dict[str, dict[bytes, float]] = {}  # topic -> peer -> expiry
        self._promises: dict[bytes, dict[bytes, float]] = {}  # msg id -> peer -> deadline
        self._pending: dict[bytes, _Pending] = {}  # awaiting report_validation
        self._mcache = MessageCache(self.params.mcache_len, self.params.mcache_gossip)
        self._seen = SeenCache(self.params.seen_ttl_s)
        self._seqno = 0
        self._ticks = 0
        self.counters: Counter[str] = Counter()

    # -- peers -------------------------------------------------------------------------
    def add_peer(self, peer: bytes, protocol: str, *, outbound: bool, now: float,
                 direct: bool = False) -> None:
        """A pubsub stream to `peer` is up. Our subscriptions go to it on next flush.

        A `direct` peer (v1.1 explicit peering, e.g. the user's own other devices) is
        never in the mesh, gets every message of its topics, and its RPCs are taken
        whatever its score."""
        if protocol not in PROTOCOLS:
            raise ValueError(f"unsupported pubsub protocol {protocol!r}; "
                             f"one of {', '.join(PROTOCOLS)}")
        if peer == self.local_peer:
            raise ValueError("cannot add the local peer as a pubsub peer")
        if peer in self._peers:
            self._peers[peer].protocol = protocol
            return
        state = _Peer(protocol, outbound, direct)
        state.queue.subscriptions.update(
            dict.fromkeys(sorted(t for t in self._topics if self._allowed(t, peer)), True))
        self._peers[peer] = state
        self._score.add_peer(peer)

    def remove_peer(self, peer: bytes, now: float) -> list[Event]:
        state = self._peers.pop(peer, None)
        if state is None:
            return []
        events: list[Event] = []
        for topic in state.topics:
            self._topic_peers.get(topic, set()).discard(peer)
        for topic, members in self._mesh.items():
            if peer in members:
                members.discard(peer)
                events.append(Pruned(peer, topic))
        for members in self._fanout.values():
            members.discard(peer)
        # Counted, not silent: these were queued for a peer that is gone. Own messages
        # reached the other targets; the mcache still answers IWANTs for them.
        self.counters["own_discarded_on_disconnect"] += len(state.queue.own)
        self.counters["forward_discarded_on_disconnect"] += len(state.queue.forward)
        self._score.remove_peer(peer, now)
        return events

    def peers(self) -> list[bytes]:
        return list(self._peers)

    def score(self, peer: bytes) -> float:
        return self._score.score(peer)

    def set_app_score(self, peer: bytes, value: float) -> None:
        """P5: the application's opinion of a peer (e.g. a known conversation member)."""
        self._score.set_app_score(peer, value)

    def mesh(self, topic: str) -> set[bytes]:
        return set(self._mesh.get(topic, ()))

    def fanout(self, topic: str) -> set[bytes]:
        return set(self._fanout.get(topic, ()))

    def topic_peers(self, topic: str) -> set[bytes]:
        return set(self._topic_peers.get(topic, ()))

    @property
    def topics(self) -> frozenset[str]:
        return frozenset(self._topics)

    # -- private topics ----------------------------------------------------------------
    def make_private(self, topic: str) -> None:
        """Declare `topic` private (a conversation): from now on only admitted peers
        hear that we subscribe to it, are counted as its peers (mesh, fanout, gossip,
        forwarding, IWANT answers), and may send us its messages and control. Call it
        before `subscribe`; peers already counted for it and not admitted are dropped
        from it. Idempotent."""
        self.check_topic(topic)
        if topic in self._private:
            return
        self._private[topic] = set()
        for peer in list(self._topic_peers.get(topic, ())):
            self._forget_topic_peer(topic, peer)

    def admit(self, topic: str, peer: bytes, now: float) -> None:
        """`peer` proved it belongs to private `topic`: it learns our subscription on
        the next flush and counts as a topic peer once it subscribed (now or before)."""
        admitted = self._private.get(topic)
        if admitted is None or peer in admitted or peer == self.local_peer:
            return
        admitted.add(peer)
        state = self._peers.get(peer)
        if state is None:
            return
        if topic in self._topics:
            state.queue.subscriptions[topic] = True
        if topic in state.topics:
            self._topic_peers.setdefault(topic, set()).add(peer)

    def revoke(self, topic: str, peer: bytes, now: float) -> list[Event]:
        """`peer` no longer belongs to private `topic` (removed, left): it leaves the
        mesh and fanout, is told we unsubscribed, and is treated as a stranger."""
        admitted = self._private.get(topic)
        if admitted is None or peer not in admitted:
            return []
        admitted.discard(peer)
        events: list[Event] = []
        state = self._peers.get(peer)
        if state is not None:
            if peer in self._mesh.get(topic, ()):
                self._prune(peer, topic, now, events, px=False)
            if topic in self._topics:
                state.queue.subscriptions[topic] = False
        self._forget_topic_peer(topic, peer)
        return events

    def admitted(self, topic: str) -> set[bytes]:
        return set(self._private.get(topic, ()))

    def claimants(self, topic: str) -> set[bytes]:
        """Peers that subscribed to private `topic` without being admitted: candidates
        for the shell to ask for a membership proof, never members."""
        admitted = self._private.get(topic)
        if admitted is None:
            return set()
        return {p for p, s in self._peers.items() if topic in s.topics and p not in admitted}

    def _allowed(self, topic: str, peer: bytes) -> bool:
        admitted = self._private.get(topic)
        return admitted is None or peer in admitted

    def _forget_topic_peer(self, topic: str, peer: bytes) -> None:
        members = self._topic_peers.get(topic)
        if members is not None:
            members.discard(peer)
            if not members:
                del self._topic_peers[topic]
        self._mesh.get(topic, set()).discard(peer)
        self._fanout.get(topic, set()).discard(peer)

    # -- topics ------------------------------------------------------------------------
    def subscribe(self, topic: str, now: float) -> list[Event]:
        """JOIN(topic): announce it and build the mesh from fanout and known peers."""
        self.check_topic(topic)
        if topic in self._topics:
            return []
        self._topics.add(topic)
        for peer, state in self._peers.items():
            if self._allowed(topic, peer):
                state.queue.subscriptions[topic] = True
        mesh = self._mesh.setdefault(topic, set())
        fanout = self._fanout.pop(topic, set())
        self._fanout_last_publish.pop(topic, None)
        events: list[Event] = []
        for peer in sorted(fanout):
            if len(mesh) < self.params.d and self._score.score(peer) >= 0:
                self._graft(peer, topic, now, events)
        if len(mesh) < self.params.d:
            for peer in self._pick(self._graft_candidates(topic, now), self.params.d - len(mesh)):
                self._graft(peer, topic, now, events)
        return events

    def unsubscribe(self, topic: str, now: float) -> list[Event]:
        """LEAVE(topic): announce it and prune the mesh with the unsubscribe backoff."""
        if topic not in self._topics:
            return []
        self._topics.discard(topic)
        for peer, state in self._peers.items():
            if self._allowed(topic, peer):
                state.queue.subscriptions[topic] = False
        events: list[Event] = []
        for peer in list(self._mesh.get(topic, ())):
            self._prune(peer, topic, now, events, px=False,
                        backoff_s=self.params.unsubscribe_backoff_s)
        self._mesh.pop(topic, None)
        return events

    def check_topic(self, topic: str) -> None:
        """ValueError unless `topic` is one this router takes (non-empty, bounded)."""
        if not isinstance(topic, str) or not topic \
                or len(topic.encode()) > self.params.max_topic_length:
            raise ValueError(f"a topic is a non-empty string of at most "
                             f"{self.params.max_topic_length} bytes")

    # -- publishing --------------------------------------------------------------------
    def new_message(self, topic: str, data: bytes, now: float) -> Message:
        """An unsigned message from us. Seqnos grow with the clock, so they stay unique
        across restarts (as go-libp2p does) and within a run they never repeat."""
        self.check_topic(topic)
        self._seqno = max(self._seqno + 1, int(now * 1_000_000_000))
        return Message(from_=self.local_peer, data=bytes(data),
                       seqno=self._seqno.to_bytes(8, "big"), topic=topic)

    def publish(self, topic: str, data: bytes, now: float) -> Published | Backpressure:
        """Publish `data` signed with the injected signer (see `publish_message` for a
        message signed elsewhere, e.g. by the keystore over the bus)."""
        if self._sign is None:
            raise ValueError("this router has no signer: sign the message and use "
                             "publish_message()")
        msg = self.new_message(topic, data, now)
        return self.publish_message(
            dataclasses.replace(msg, signature=self._sign(signing_data(msg))), now)

    def publish_message(self, msg: Message, now: float) -> Published | Backpressure:
        """Publish our own signed message. ValueError for a message that is not ours,
        unsigned or too big (a caller's mistake: nothing changes)."""
        if msg.from_ != self.local_peer or msg.seqno is None or msg.signature is None:
            raise ValueError("a published message needs our peer id as from, a seqno "
                             "and a signature (StrictSign)")
        if msg.topic is None:
            raise ValueError("a published message needs a topic")
        self.check_topic(msg.topic)
        encoded = encode(msg)
        if len(encoded) > self.params.max_message_size:
            raise ValueError(f"message of {len(encoded)} bytes exceeds the limit of "
                             f"{self.params.max_message_size}")
        msg_id = self._message_id(msg)
        if msg_id in self._seen:
            return Published(msg_id, (), duplicate=True)
        targets = self._publish_targets(msg.topic, now)
        full = tuple(p for p in targets
                     if len(self._peers[p].queue.own) >= self.params.max_own_queue)
        if full:
            self.counters["publish_backpressure"] += 1
            return Backpressure(msg_id, full)
        self._seen.add(msg_id, now)
        self._mcache.put(msg_id, msg, encoded)
        part = publish_field(encoded)
        for peer in targets:
            self._peers[peer].queue.own.append(part)
        if msg.topic not in self._topics:
            self._fanout_last_publish[msg.topic] = now
        self.counters["published"] += 1
        return Published(msg_id, tuple(targets))

    def _publish_targets(self, topic: str, now: float) -> list[bytes]:
        threshold = self._score.params.publish_threshold
        members = self._topic_peers.get(topic, set())
        direct = [p for p in members if self._peers[p].direct]
        if self.params.flood_publish:
            return direct + [p for p in members if not self._peers[p].direct
                             and self._score.score(p) >= threshold]
        if topic in self._topics:
            return direct + list(self._mesh.get(topic, ()))
        fanout = self._fanout.get(topic)
        if not fanout:
            candidates = [p for p in members if not self._peers[p].direct
                          and self._score.score(p) >= threshold]
            fanout = self._fanout[topic] = set(self._pick(candidates, self.params.d))
        return direct + list(fanout)

    # -- receiving ---------------------------------------------------------------------
    def handle_rpc(self, peer: bytes, frame: bytes, now: float) -> list[Event]:
        """One RPC frame (without length prefix) from `peer`. Never raises on peer
        input: whatever is wrong is counted and ignored."""
        state = self._peers.get(peer)
        if state is None:
            self.counters["rpc_unknown_peer"] += 1
            return []
        self.counters["rpc_received"] += 1
        if len(frame) > self.params.max_rpc_size:
            self.counters["rpc_oversized"] += 1
            return []
        try:
            rpc = decode_rpc(frame, self.params.max_rpc_size)
            unknown_control = control_has_unknown_fields(frame, rpc)
        except DecodeError as exc:
            self.counters["rpc_malformed"] += 1
            log.debug("rpc.malformed", peer=peer.hex()[:16], error=str(exc))
            return []
        if not state.direct \
                and self._score.score(peer) < self._score.params.graylist_threshold:
            self.counters["rpc_graylisted"] += 1
            return []
        if unknown_control:
            self.counters["control_unknown_fields"] += 1
        events: list[Event] = []
        self._handle_subscriptions(peer, state, rpc, events)
        for msg in rpc.publish:
            self._handle_message(peer, state, msg, now, events)
        if rpc.control is not None:
            self._handle_control(peer, state, rpc.control, now, events)
        return events

    def _handle_subscriptions(self, peer: bytes, state: _Peer, rpc: RPC,
                              events: list[Event]) -> None:
        for sub in rpc.subscriptions:
            topic = sub.topicid
            if not topic or len(topic.encode()) > self.params.max_topic_length:
                self.counters["subscription_invalid"] += 1
                continue
            if sub.subscribe:
                if topic in state.topics:
                    continue
                if len(state.topics) >= self.params.max_topics_per_peer:
                    self.counters["subscription_over_limit"] += 1
                    continue
                state.topics.add(topic)
                if self._allowed(topic, peer):
                    self._topic_peers.setdefault(topic, set()).add(peer)
                else:
                    self.counters["subscription_not_admitted"] += 1
                continue
            state.topics.discard(topic)
            members = self._topic_peers.get(topic)
            if members is not None:
                members.discard(peer)
                if not members:
                    del self._topic_peers[topic]
            if peer in self._mesh.get(topic, ()):
                self._mesh[topic].discard(peer)
                self._score.prune(peer, topic)
                events.append(Pruned(peer, topic))
            self._fanout.get(topic, set()).discard(peer)

    def _handle_message(self, peer: bytes, state: _Peer, msg: Message, now: float,
                        events: list[Event]) -> None:
        topic = msg.topic
        if topic is None or topic not in self._topics:
            self.counters["msg_unknown_topic"] += 1
            return
        if not self._allowed(topic, peer):
            # Checked before any decoding or signature work: a stranger's traffic on
            # a conversation costs us one set lookup.
            self.counters["msg_not_admitted"] += 1
            return
        if msg.from_ is None or msg.seqno is None or msg.signature is None:
            self.counters["msg_unsigned"] += 1
            self._score.invalid_delivery(peer, topic)
            return
        msg_id = self._message_id(msg)
        if msg_id in self._seen:  # most copies end here: check before any encoding
            self.counters["msg_duplicate"] += 1
            return
        encoded = encode(msg)
        if len(encoded) > self.params.max_message_size:
            self.counters["msg_oversized"] += 1
            return
        if msg.from_ == self.local_peer:
            self.counters["msg_self_origin"] += 1
            return
        try:
            valid = bool(self._verify(msg.from_, msg.key, signed_prefix(encoded, msg),
                                      msg.signature))
        except Exception:
            log.error("verify.crashed", exc=True)
            valid = False
        if not valid:
            self.counters["msg_invalid_signature"] += 1
            self._score.invalid_delivery(peer, topic)
            return
        verdict = Validation.ACCEPT
        if self._validate is not None:
            try:
                verdict = self._validate(msg)
            except Exception:
                log.error("validate.crashed", exc=True, topic=topic)
                verdict = Validation.IGNORE
        if verdict is Validation.PENDING \
                and len(self._pending) >= self.params.max_pending_validations:
            # Not marked seen: a later copy of the message gets another chance.
            self.counters["validation_backlog_full"] += 1
            return
        self._seen.add(msg_id, now)
        self._promises.pop(msg_id, None)
        if len(encoded) >= self.params.idontwant_min_size:
            for other in self._mesh.get(topic, ()):
                if other != peer and self._peers[other].protocol == PROTOCOL_V12:
                    self._peers[other].queue.add_idontwant([msg_id])
        if verdict is Validation.PENDING:
            self._pending[msg_id] = _Pending(msg, encoded, peer, now)
            return
        self._conclude(msg_id, msg, encoded, peer, verdict, events)

    def report_validation(self, msg_id: bytes, verdict: Validation, now: float) -> list[Event]:
        """The application's late verdict on a message its validator left PENDING.
        An id that is not pending (unknown, already decided, timed out) changes
        nothing and is counted."""
        pending = self._pending.pop(msg_id, None)
        if pending is None or verdict is Validation.PENDING:
            if pending is not None:
                self._pending[msg_id] = pending
            self.counters["validation_report_unknown"] += 1
            return []
        events: list[Event] = []
        self._conclude(msg_id, pending.message, pending.encoded, pending.source, verdict,
                       events)
        return events

    def _conclude(self, msg_id: bytes, msg: Message, encoded: bytes, peer: bytes,
                  verdict: Validation, events: list[Event]) -> None:
        topic = msg.topic
        assert topic is not None
        if verdict is Validation.REJECT:
            self.counters["msg_rejected"] += 1
            self._score.invalid_delivery(peer, topic)
            return
        if verdict is not Validation.ACCEPT:
            self.counters["msg_ignored"] += 1
            return
        self.counters["msg_delivered"] += 1
        self._score.first_delivery(peer, topic)
        self._mcache.put(msg_id, msg, encoded)
        events.append(MessageReceived(msg_id, topic, msg, peer))
        part = publish_field(encoded)
        direct = [q for q in self._topic_peers.get(topic, ()) if self._peers[q].direct]
        for other in self._mesh.get(topic, set()).union(direct):
            if other == peer or other == msg.from_:
                continue
            target = self._peers[other]
            if msg_id in target.dont_send:
                self.counters["forward_skipped_idontwant"] += 1
                continue
            self._enqueue_forward(target, part)

    def _enqueue_forward(self, target: _Peer, part: bytes) -> None:
        if len(target.queue.forward) >= self.params.max_forward_queue:
            self.counters["dropped_forward_queue_full"] += 1
            return
        target.queue.forward.append(part)
        self.counters["forwarded"] += 1

    # -- output ------------------------------------------------------------------------
    def flush(self, peers: Iterable[bytes] | None = None) -> list[SendRpc]:
        """Everything queued (for `peers`, or all), as RPC frames to send in order."""
        out: list[SendRpc] = []
        for peer in (self._peers if peers is None else list(peers)):
            state = self._peers.get(peer)
            if state is None or not state.queue:
                continue
            for frame in state.queue.drain(self.params.max_rpc_size):
                out.append(SendRpc(peer, frame))
        self.counters["frames_sent"] += len(out)
        return out

    def pending_peers(self) -> list[bytes]:
        """Peers with something queued for them."""
        return [p for p, s in self._peers.items() if s.queue]

    def queued(self, peer: bytes) -> tuple[int, int]:
        """(own, forwarded) messages waiting for `peer`."""
        state = self._peers.get(peer)
        return (len(state.queue.own), len(state.queue.forward)) if state else (0, 0)

    def statistics(self) -> dict[str, Any]:
        """Counters of everything received, sent, refused and dropped, plus sizes.

        Refused from peers: rpc_malformed, rpc_oversized, rpc_graylisted,
        rpc_unknown_peer, control_unknown_fields, subscription_invalid,
        subscription_over_limit, msg_unknown_topic, msg_oversized, msg_unsigned,
        msg_duplicate, msg_self_origin, msg_invalid_signature, msg_rejected,
        msg_ignored, ihave_over_limit, ihave_unknown_topic, ihave_bad_id,
        iwant_unknown, iwant_over_retransmission, idontwant_over_limit,
        validation_backlog_full, validation_timeout, validation_report_unknown,
        graft_unknown_topic, graft_from_direct, graft_during_backoff, graft_low_score, graft_mesh_full,
        gossip_ignored_low_score, px_ignored_low_score, iwant_broken_promises;
        for private topics, from peers not admitted: subscription_not_admitted,
        msg_not_admitted, ihave_not_admitted, iwant_not_admitted, graft_not_admitted.
        Dropped or refused here: dropped_forward_queue_full, publish_backpressure,
        own_discarded_on_disconnect, forward_discarded_on_disconnect. Activity:
        rpc_received, msg_delivered, published, forwarded, forward_skipped_idontwant,
        frames_sent, ihave_sent, iwant_sent_ids, opportunistic_grafts. A counter
        appears once it is non-zero."""
        return {
            "counters": dict(sorted(self.counters.items())),
            "peers": len(self._peers),
            "topics": sorted(self._topics),
            "private_topics": len(self._private),
            "mesh": {t: len(m) for t, m in sorted(self._mesh.items())},
            "fanout": {t: len(m) for t, m in sorted(self._fanout.items())},
            "mcache": len(self._mcache),
            "seen": len(self._seen),
            "queued_own": sum(len(s.queue.own) for s in self._peers.values()),
            "queued_forward": sum(len(s.queue.forward) for s in self._peers.values()),
        }
