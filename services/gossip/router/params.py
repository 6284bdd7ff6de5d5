"""Parameters of the GossipSub router: overlay degrees, timings, limits and scoring.

Defaults follow the gossipsub v1.0/v1.1 specs where they fit a messenger, and depart
where they do not (noted inline). Every parameter set is validated once at
construction: a bad value is a `ValueError` naming the field, never a silent clamp.
"""

from __future__ import annotations

from dataclasses import dataclass, field

PROTOCOL_V10 = "/meshsub/1.0.0"
PROTOCOL_V11 = "/meshsub/1.1.0"
PROTOCOL_V12 = "/meshsub/1.2.0"
PROTOCOLS = (PROTOCOL_V12, PROTOCOL_V11, PROTOCOL_V10)  # preference order


@dataclass(frozen=True)
class TopicScoreParams:
    """Per-topic score parameters (spec: P1, P2, P4; P3/P3b are not implemented).

    P3/P3b (mesh delivery rate) need an expected message rate per topic; a chat topic
    is quiet most of the time, so a rate floor would punish honest mesh peers.
    """

    topic_weight: float = 1.0
    # P1: time in mesh, a small bonus so established mesh peers survive pruning.
    time_in_mesh_weight: float = 0.01
    time_in_mesh_quantum_s: float = 1.0
    time_in_mesh_cap: float = 300.0
    # P2: first deliveries, rewarding peers that bring us new valid messages.
    first_message_deliveries_weight: float = 0.5
    first_message_deliveries_decay: float = 0.9
    first_message_deliveries_cap: float = 50.0
    # P4: invalid messages (bad signature, missing fields, rejected by validation).
    # Squared: one invalid message prunes the sender, three graylist it.
    invalid_message_deliveries_weight: float = -10.0
    invalid_message_deliveries_decay: float = 0.9995

    def __post_init__(self) -> None:
        _check(self.topic_weight >= 0, "topic_weight", "must be >= 0")
        _check(self.time_in_mesh_weight >= 0, "time_in_mesh_weight", "must be >= 0")
        _check(self.time_in_mesh_quantum_s > 0, "time_in_mesh_quantum_s", "must be > 0")
        _check(self.time_in_mesh_cap >= 0, "time_in_mesh_cap", "must be >= 0")
        _check(self.first_message_deliveries_weight >= 0,
               "first_message_deliveries_weight", "must be >= 0")
        _check(self.first_message_deliveries_cap >= 0,
               "first_message_deliveries_cap", "must be >= 0")
        _check(self.invalid_message_deliveries_weight <= 0,
               "invalid_message_deliveries_weight", "must be <= 0")
        for name in ("first_message_deliveries_decay", "invalid_message_deliveries_decay"):
            _check(0.0 < getattr(self, name) < 1.0, name, "must be in (0, 1)")


@dataclass(frozen=True)
class ScoreParams:
    """Global score parameters and thresholds (spec: P5 and P7 on; P6 off, because
    the router core does not see IP addresses)."""

    gossip_threshold: float = -10.0
    publish_threshold: float = -50.0
    graylist_threshold: float = -80.0
    accept_px_threshold: float = 10.0
    opportunistic_graft_threshold: float = 1.0
    decay_interval_s: float = 1.0
    decay_to_zero: float = 0.01
    retain_score_s: float = 600.0
    app_specific_weight: float = 1.0
    # P7: GRAFT during backoff, unanswered IWANT promises. Squared.
    behaviour_penalty_weight: float = -10.0
    behaviour_penalty_threshold: float = 0.0
    behaviour_penalty_decay: float = 0.99
    topic_score_cap: float = 100.0
    # Applied to every topic without its own entry: conversation topics are created at
    # runtime and cannot be listed in advance.
    default_topic: TopicScoreParams | None = field(default_factory=TopicScoreParams)
    topics: dict[str, TopicScoreParams] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check(self.gossip_threshold <= 0, "gossip_threshold", "must be <= 0")
        _check(self.publish_threshold <= self.gossip_threshold, "publish_threshold",
               "must be <= gossip_threshold")
        _check(self.graylist_threshold < self.publish_threshold, "graylist_threshold",
               "must be < publish_threshold")
        _check(self.accept_px_threshold >= 0, "accept_px_threshold", "must be >= 0")
        _check(self.opportunistic_graft_threshold >= 0, "opportunistic_graft_threshold",
               "must be >= 0")
        _check(self.decay_interval_s > 0, "decay_interval_s", "must be > 0")
        _check(0 < self.decay_to_zero < 1, "decay_to_zero", "must be in (0, 1)")
        _check(self.behaviour_penalty_weight <= 0, "behaviour_penalty_weight", "must be <= 0")
        _check(0 < self.behaviour_penalty_decay < 1, "behaviour_penalty_decay",
               "must be in (0, 1)")
        _check(self.topic_score_cap >= 0, "topic_score_cap", "must be >= 0 (0: no cap)")

    def for_topic(self, topic: str) -> TopicScoreParams | None:
        return self.topics.get(topic, self.default_topic)


@dataclass(frozen=True)
class GossipParams:
    d: int = 6
    d_lo: int = 4
    d_hi: int = 12
    d_lazy: int = 6
    d_score: int = 4
    d_out: int = 2
    heartbeat_s: float = 1.0
    fanout_ttl_s: float = 60.0
    mcache_len: int = 5
    mcache_gossip: int = 3
    seen_ttl_s: float = 120.0
    gossip_factor: float = 0.25
    prune_backoff_s: float = 60.0
    unsubscribe_backoff_s: float = 10.0
    graft_flood_threshold_s: float = 10.0
    backoff_slack_heartbeats: int = 1
    prune_peers: int = 16
    flood_publish: bool = True
    opportunistic_graft_ticks: int = 60
    opportunistic_graft_peers: int = 2
    # Spam limits (v1.1 "Spam Protection Measures").
    max_ihave_length: int = 5000
    max_ihave_messages: int = 10
    max_idontwant_messages: int = 1000
    gossip_retransmission: int = 3
    iwant_followup_s: float = 3.0
    # IDONTWANT (v1.2) goes out for messages at least this big; smaller ones cost
    # less to receive twice than to announce.
    idontwant_min_size: int = 1024
    # Sizes. The spec suggests 1 MiB for a message; an RPC carries a little more.
    max_message_size: int = 1 << 20
    max_rpc_size: int = (1 << 20) + 64 * 1024
    max_topic_length: int = 256
    max_message_id_length: int = 256
    max_topics_per_peer: int = 1000
    # Messages waiting for a PENDING validation verdict, and for how long.
    max_pending_validations: int = 1024
    validation_timeout_s: float = 30.0
    # Outbound queues, per peer (see queues.py for the policy).
    max_forward_queue: int = 1024
    max_own_queue: int = 1024

    def __post_init__(self) -> None:
        for name in ("d", "d_lo", "d_hi", "d_lazy", "d_score", "d_out", "mcache_len",
                     "mcache_gossip", "prune_peers", "gossip_retransmission",
                     "max_ihave_length", "max_ihave_messages", "max_idontwant_messages",
                     "opportunistic_graft_peers", "backoff_slack_heartbeats"):
            _check(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                   name, "must be an integer >= 0")
        _check(self.d_lo <= self.d <= self.d_hi, "d", "needs d_lo <= d <= d_hi")
        _check(self.d_score <= self.d, "d_score", "must be <= d")
        _check(self.d_out < self.d_lo or self.d_out == 0, "d_out", "must be < d_lo")
        _check(self.d_out <= self.d // 2, "d_out", "must be <= d/2")
        _check(1 <= self.mcache_gossip <= self.mcache_len, "mcache_gossip",
               "needs 1 <= mcache_gossip <= mcache_len")
        _check(0.0 <= self.gossip_factor <= 1.0, "gossip_factor", "must be in [0, 1]")
        for name in ("heartbeat_s", "fanout_ttl_s", "seen_ttl_s", "iwant_followup_s",
                     "validation_timeout_s"):
            _check(getattr(self, name) > 0, name, "must be > 0")
        for name in ("prune_backoff_s", "unsubscribe_backoff_s", "graft_flood_threshold_s"):
            _check(getattr(self, name) >= 0, name, "must be >= 0")
        _check(self.opportunistic_graft_ticks >= 1, "opportunistic_graft_ticks", "must be >= 1")
        _check(self.max_message_size >= 1, "max_message_size", "must be >= 1")
        _check(self.max_rpc_size >= self.max_message_size + 1024, "max_rpc_size",
               "must exceed max_message_size by at least 1 KiB (framing, control)")
        for name in ("max_topic_length", "max_message_id_length", "max_topics_per_peer",
                     "max_forward_queue", "max_own_queue", "max_pending_validations"):
            _check(getattr(self, name) >= 1, name, "must be >= 1")


def _check(ok: bool, name: str, why: str) -> None:
    if not ok:
        raise ValueError(f"gossip parameter {name} {why}")
