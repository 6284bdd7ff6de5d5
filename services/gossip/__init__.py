"""The gossip actor: GossipSub, conversations, sync and the outbox."""
