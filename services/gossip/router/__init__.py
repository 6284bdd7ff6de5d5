"""The sans-IO GossipSub router of the gossip actor: wire messages, caches, scoring,
per-peer queues and the router state machine (`core.Router`)."""

from .core import (
    Backpressure, Event, Grafted, MessageReceived, PeerExchange, Published, Pruned,
    Router, SendRpc, Validation, default_message_id,
)
from .params import (
    PROTOCOL_V10, PROTOCOL_V11, PROTOCOL_V12, GossipParams, ScoreParams, TopicScoreParams,
)

__all__ = [
    "Backpressure", "Event", "Grafted", "MessageReceived", "PeerExchange", "Published",
    "Pruned", "Router", "SendRpc", "Validation", "default_message_id", "PROTOCOL_V10",
    "PROTOCOL_V11", "PROTOCOL_V12", "GossipParams", "ScoreParams", "TopicScoreParams",
]
