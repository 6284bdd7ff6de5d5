"""The node's actors, one package each. `load_actor` maps a name to its class lazily,
so `p2pm service keystore` never imports libp2p."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from p2pm.common.actor import Actor

ACTOR_CLASSES = {
    "keystore": "p2pm.services.keystore.actor:Keystore",
    "storage": "p2pm.services.storage.actor:Storage",
    "transport": "p2pm.services.transport.actor:Transport",
    "dht": "p2pm.services.dht.actor:Dht",
    "gossip": "p2pm.services.gossip.actor:Gossip",
    "gateway": "p2pm.services.gateway.actor:Gateway",
}


def load_actor(name: str) -> type["Actor"]:
    try:
        path = ACTOR_CLASSES[name]
    except KeyError:
        raise ValueError(
            f"unknown actor {name!r}; one of: {', '.join(ACTOR_CLASSES)}") from None
    module, _, cls = path.partition(":")
    return getattr(importlib.import_module(module), cls)
