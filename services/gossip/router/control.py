"""Control input of the router (`core.Router`): IHAVE, IWANT, GRAFT, PRUNE and
IDONTWANT from a peer, with the v1.1 spam limits and the private-topic gate. A mixin
of `Router`: it works on the router's own state and is only ever used through it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from p2pm.common.log import get_logger

from .events import Event, PeerExchange, Pruned
from .messages import ControlMessage, ControlPrune, publish_field
from .params import PROTOCOL_V10

if TYPE_CHECKING:
    from .core import _Peer

log = get_logger("gossip.router")


class ControlHandling:
    def _handle_control(self, peer: bytes, state: _Peer, control: ControlMessage,
                        now: float, events: list[Event]) -> None:
        gossip_ok = self._score.score(peer) >= self._score.params.gossip_threshold
        if not gossip_ok and (control.ihave or control.iwant):
            self.counters["gossip_ignored_low_score"] += 1
        if gossip_ok:
            self._handle_ihave(peer, state, control, now)
            self._handle_iwant(peer, state, control)
        for graft in control.graft:
            self._handle_graft(peer, state, graft.topic_id, now, events)
        for prune in control.prune:
            self._handle_prune(peer, state, prune, now, events)
        for idw in control.idontwant:
            for mid in idw.message_ids:
                if state.idontwant_received >= self.params.max_idontwant_messages:
                    self.counters["idontwant_over_limit"] += 1
                    break
                state.idontwant_received += 1
                state.dont_send[mid] = now + self.params.mcache_len * self.params.heartbeat_s

    def _handle_ihave(self, peer: bytes, state: _Peer, control: ControlMessage,
                      now: float) -> None:
        wanted: list[bytes] = []
        for ihave in control.ihave:
            state.ihave_received += 1
            if state.ihave_received > self.params.max_ihave_messages:
                self.counters["ihave_over_limit"] += 1
                continue
            if ihave.topic_id not in self._topics:
                self.counters["ihave_unknown_topic"] += 1
                continue
            if not self._allowed(ihave.topic_id, peer):
                self.counters["ihave_not_admitted"] += 1
                continue
            for mid in ihave.message_ids:
                if len(mid) > self.params.max_message_id_length:
                    self.counters["ihave_bad_id"] += 1
                elif mid not in self._seen and mid not in self._promises \
                        and mid not in wanted:
                    wanted.append(mid)
        room = self.params.max_ihave_length - state.iwant_asked
        if len(wanted) > room:
            self.counters["ihave_over_limit"] += 1
            self._rng.shuffle(wanted)
            wanted = wanted[:max(room, 0)]
        if not wanted:
            return
        state.iwant_asked += len(wanted)
        state.queue.add_iwant(wanted)
        self.counters["iwant_sent_ids"] += len(wanted)
        # Track one advertised id at random: if it never arrives, the peer lied (P7).
        promised = self._rng.choice(wanted)
        self._promises.setdefault(promised, {})[peer] = now + self.params.iwant_followup_s

    def _handle_iwant(self, peer: bytes, state: _Peer, control: ControlMessage) -> None:
        for iwant in control.iwant:
            for mid in iwant.message_ids:
                entry = self._mcache.get(mid)
                if entry is None:
                    self.counters["iwant_unknown"] += 1
                    continue
                if not self._allowed(entry.message.topic or "", peer):
                    # Answered as if unknown: a stranger learns nothing from asking.
                    self.counters["iwant_not_admitted"] += 1
                    continue
                served = entry.iwant_served.get(peer, 0)
                if served >= self.params.gossip_retransmission:
                    self.counters["iwant_over_retransmission"] += 1
                    continue
                entry.iwant_served[peer] = served + 1
                self._enqueue_forward(state, publish_field(entry.encoded))

    def _handle_graft(self, peer: bytes, state: _Peer, topic: str | None, now: float,
                      events: list[Event]) -> None:
        if topic is None or topic not in self._topics:
            # v1.1 spam protection: no PRUNE for topics we do not know.
            self.counters["graft_unknown_topic"] += 1
            return
        if not self._allowed(topic, peer):
            self.counters["graft_not_admitted"] += 1  # no PRUNE: that would confirm it
            return
        mesh = self._mesh.setdefault(topic, set())
        if peer in mesh:
            return
        if state.direct:
            # The spec calls this an error of the other side: refuse, log, no penalty.
            self.counters["graft_from_direct"] += 1
            log.warning("graft.from_direct_peer", peer=peer.hex()[:16], topic=topic)
            self._prune(peer, topic, now, events, px=False, in_mesh=False)
            return
        expiry = self._backoff.get(topic, {}).get(peer)
        if expiry is not None and now < expiry:
            self.counters["graft_during_backoff"] += 1
            if state.protocol != PROTOCOL_V10:
                self._score.add_penalty(peer)
                flood_cutoff = expiry + self.params.graft_flood_threshold_s \
                    - self.params.prune_backoff_s
                if now < flood_cutoff:
                    self._score.add_penalty(peer)
            self._prune(peer, topic, now, events, px=False, in_mesh=False)
            return
        if self._score.score(peer) < 0:
            self.counters["graft_low_score"] += 1
            self._prune(peer, topic, now, events, px=False, in_mesh=False)
            return
        if len(mesh) >= self.params.d_hi and not state.outbound:
            self.counters["graft_mesh_full"] += 1
            self._prune(peer, topic, now, events, px=True, in_mesh=False)
            return
        self._add_to_mesh(peer, topic, now, events)

    def _handle_prune(self, peer: bytes, state: _Peer, prune: ControlPrune, now: float,
                      events: list[Event]) -> None:
        topic = prune.topic_id
        if topic is None or topic not in self._topics or not self._allowed(topic, peer):
            return
        if peer in self._mesh.get(topic, ()):
            self._mesh[topic].discard(peer)
            self._score.prune(peer, topic)
            events.append(Pruned(peer, topic))
        backoff = self.params.prune_backoff_s
        if prune.backoff is not None and state.protocol != PROTOCOL_V10:
            backoff = float(min(prune.backoff, 24 * 3600))
        self._set_backoff(topic, peer, now + backoff)
        if prune.peers and state.protocol != PROTOCOL_V10:
            if self._score.score(peer) < self._score.params.accept_px_threshold:
                self.counters["px_ignored_low_score"] += 1
            else:
                events.append(PeerExchange(topic, peer, prune.peers[:self.params.prune_peers]))
