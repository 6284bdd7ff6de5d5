"""Peer scoring of gossipsub v1.1, the parts this router uses.

On: P1 time in mesh, P2 first message deliveries, P4 invalid messages (per topic,
through `ScoreParams.for_topic`, so runtime-created topics are scored too), P5 the
application-specific score, P7 the behaviour penalty. Off: P3/P3b (mesh delivery
rate, see `TopicScoreParams`) and P6 (IP colocation: the core never sees addresses).

    Score(p) = min(cap, Σ_t w_t·(w1·P1 + w2·P2 + w4·P4²)) + w5·P5 + w7·max(0, P7 - thr)²

Counters decay every `decay_interval_s`; a disconnected peer's counters are kept for
`retain_score_s`, so reconnecting does not wash a bad score clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .params import ScoreParams


@dataclass
class _TopicStats:
    in_mesh: bool = False
    grafted_at: float = 0.0
    mesh_time: float = 0.0
    first_deliveries: float = 0.0
    invalid_deliveries: float = 0.0


@dataclass
class _PeerStats:
    topics: dict[str, _TopicStats] = field(default_factory=dict)
    behaviour_penalty: float = 0.0
    app_score: float = 0.0
    connected: bool = True
    expires_at: float = 0.0  # when a disconnected peer's record is forgotten


class PeerScore:
    def __init__(self, params: ScoreParams) -> None:
        self.params = params
        self._peers: dict[bytes, _PeerStats] = {}
        self._last_decay: float | None = None

    # -- lifecycle ---------------------------------------------------------------------
    def add_peer(self, peer: bytes) -> None:
        stats = self._peers.setdefault(peer, _PeerStats())
        stats.connected = True

    def remove_peer(self, peer: bytes, now: float) -> None:
        stats = self._peers.get(peer)
        if stats is None:
            return
        for ts in stats.topics.values():
            ts.in_mesh = False
        if self.score(peer) > 0:
            # Nothing bad to remember, and a good score must be earned again.
            del self._peers[peer]
            return
        stats.connected = False
        stats.expires_at = now + self.params.retain_score_s

    # -- events ------------------------------------------------------------------------
    def graft(self, peer: bytes, topic: str, now: float) -> None:
        ts = self._topic(peer, topic)
        if ts is not None:
            ts.in_mesh, ts.grafted_at, ts.mesh_time = True, now, 0.0

    def prune(self, peer: bytes, topic: str) -> None:
        ts = self._topic(peer, topic)
        if ts is not None:
            ts.in_mesh = False

    def first_delivery(self, peer: bytes, topic: str) -> None:
        tp = self.params.for_topic(topic)
        ts = self._topic(peer, topic)
        if tp is not None and ts is not None:
            ts.first_deliveries = min(ts.first_deliveries + 1,
                                      tp.first_message_deliveries_cap)

    def invalid_delivery(self, peer: bytes, topic: str) -> None:
        ts = self._topic(peer, topic)
        if ts is not None:
            ts.invalid_deliveries += 1

    def add_penalty(self, peer: bytes, count: float = 1.0) -> None:
        stats = self._peers.get(peer)
        if stats is not None:
            stats.behaviour_penalty += count

    def set_app_score(self, peer: bytes, value: float) -> None:
        stats = self._peers.get(peer)
        if stats is not None:
            stats.app_score = value

    # -- the score ---------------------------------------------------------------------
    def score(self, peer: bytes) -> float:
        stats = self._peers.get(peer)
        if stats is None:
            return 0.0
        p = self.params
        topic_total = 0.0
        for topic, ts in stats.topics.items():
            tp = p.for_topic(topic)
            if tp is None:
                continue
            p1 = min(ts.mesh_time / tp.time_in_mesh_quantum_s, tp.time_in_mesh_cap) \
                if ts.in_mesh else 0.0
            topic_total += tp.topic_weight * (
                tp.time_in_mesh_weight * p1
                + tp.first_message_deliveries_weight * ts.first_deliveries
                + tp.invalid_message_deliveries_weight * ts.invalid_deliveries ** 2)
        if p.topic_score_cap > 0:
            topic_total = min(topic_total, p.topic_score_cap)
        excess = max(0.0, stats.behaviour_penalty - p.behaviour_penalty_threshold)
        return (topic_total + p.app_specific_weight * stats.app_score
                + p.behaviour_penalty_weight * excess * excess)

    def refresh(self, now: float) -> None:
        """Decay counters once per elapsed decay interval, update time in mesh and
        forget disconnected peers whose retention ran out. Called every heartbeat."""
        p = self.params
        if self._last_decay is None:
            self._last_decay = now
        rounds = max(0, int((now - self._last_decay) / p.decay_interval_s))
        self._last_decay += rounds * p.decay_interval_s
        for peer, stats in list(self._peers.items()):
            if not stats.connected and now >= stats.expires_at:
                del self._peers[peer]
                continue
            for topic, ts in stats.topics.items():
                if ts.in_mesh:
                    ts.mesh_time = now - ts.grafted_at
                tp = p.for_topic(topic)
                if tp is None or rounds == 0:
                    continue
                ts.first_deliveries = _decay(ts.first_deliveries,
                                             tp.first_message_deliveries_decay ** rounds,
                                             p.decay_to_zero)
                ts.invalid_deliveries = _decay(ts.invalid_deliveries,
                                               tp.invalid_message_deliveries_decay ** rounds,
                                               p.decay_to_zero)
            if rounds:
                stats.behaviour_penalty = _decay(stats.behaviour_penalty,
                                                 p.behaviour_penalty_decay ** rounds,
                                                 p.decay_to_zero)

    def _topic(self, peer: bytes, topic: str) -> _TopicStats | None:
        stats = self._peers.get(peer)
        if stats is None or self.params.for_topic(topic) is None:
            return None
        return stats.topics.setdefault(topic, _TopicStats())

    def __contains__(self, peer: bytes) -> bool:
        return peer in self._peers


def _decay(value: float, factor: float, zero: float) -> float:
    value *= factor
    return 0.0 if value < zero else value
