"""The dht actor: Kademlia (/ipfs/kad/1.0.0) through the transport's stream API.

The protocol is a sans-IO core, usable without the actor: `messages` (the wire
format), `keyspace` and `routing` (k-buckets), `lookup` (one iterative lookup),
`records` (strict validators, record and provider stores), `ratelimit`, and `core`
(`KadCore`, which ties them together and says what to send and when). `sim` runs
thousands of cores on a simulated network. The shell around one core: `driver`
(streams in and out through the transport, the clock), `convert` (the bus's text forms
and the wire's binary ones), `actor` (identity, peers, bootstrap, persistence, RPCs);
`testing` runs a whole node's dht in-process for tests.
"""
