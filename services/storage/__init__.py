"""The storage actor: the node's SQLite database (schema, blocking store, actor shell)."""
