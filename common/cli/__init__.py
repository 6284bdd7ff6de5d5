"""The `p2pm` command line. Each module in this package adds its commands to `main`."""

from __future__ import annotations

from .base import main

# Importing a module registers its commands on `main`.
from . import attach as _attach  # noqa: E402,F401
from . import chat as _chat  # noqa: E402,F401
from . import dht as _dht  # noqa: E402,F401
from . import demo as _demo  # noqa: E402,F401
from . import introspect as _introspect  # noqa: E402,F401
from . import node as _node  # noqa: E402,F401
from . import transport as _transport  # noqa: E402,F401

__all__ = ["main"]
