"""The stream API from the owner's side: how an actor (dht, gossip, ...) speaks a
libp2p protocol through the transport. `client` is the library an owner uses,
`frames` the wire between the owner and the transport (the transport's hub speaks it
too). They live in `common/` because both sides of the API import them: no actor
package imports another's.

    from p2pm.common.streams import ProtocolSpec, open_streams
"""

from .client import (ProtocolSpec, Stream, StreamClient, StreamError, StreamReset,
                     open_streams, streams_endpoint)

__all__ = ["ProtocolSpec", "Stream", "StreamClient", "StreamError", "StreamReset",
           "open_streams", "streams_endpoint"]
