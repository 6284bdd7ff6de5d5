"""The transport actor: the node's libp2p host and the stream API for other actors."""
