"""The keystore actor: the only process that holds the node's secret identity key."""
