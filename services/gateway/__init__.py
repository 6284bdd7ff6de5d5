"""The gateway actor: the only door for local clients."""
