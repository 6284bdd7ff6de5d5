"""The dht actor: Kademlia (/ipfs/kad/1.0.0) through the transport's stream API."""
