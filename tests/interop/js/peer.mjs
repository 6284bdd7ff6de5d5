// A js-libp2p reference peer for p2pm's interoperability tests: TCP, Noise, Yamux,
// identify, ping, Kademlia (/ipfs/kad/1.0.0, server mode) and GossipSub (StrictSign).
//
// Environment: P2PM_JS_RELAY_SERVER=1 makes it a Circuit Relay v2 server;
// P2PM_JS_LISTEN is a JSON list of more addresses to listen on, such as
// "<relay addr>/p2p-circuit" for a reservation on that relay.
//
// It speaks JSON lines: one command a line on stdin, answered by one line on stdout
// ({"id": n, "ok": ...} or {"id": n, "error": "..."}); unprompted lines are events
// ({"event": "ready" | "message", ...}). The first line is "ready" with the peer id
// and listen addresses.
import { createInterface } from 'node:readline'

// Node.js 20 lacks Promise.withResolvers (22 has it), which these libraries use.
if (typeof Promise.withResolvers !== 'function') {
  Promise.withResolvers = function () {
    let resolve, reject
    const promise = new this((res, rej) => { resolve = res; reject = rej })
    return { promise, resolve, reject }
  }
}
const { createLibp2p } = await import('libp2p')
const { tcp } = await import('@libp2p/tcp')
const { noise } = await import('@chainsafe/libp2p-noise')
const { yamux } = await import('@chainsafe/libp2p-yamux')
const { identify } = await import('@libp2p/identify')
const { ping } = await import('@libp2p/ping')
const { kadDHT, passthroughMapper } = await import('@libp2p/kad-dht')
const { gossipsub } = await import('@libp2p/gossipsub')
const { peerIdFromString } = await import('@libp2p/peer-id')
const { multiaddr } = await import('@multiformats/multiaddr')
const { circuitRelayServer, circuitRelayTransport } = await import('@libp2p/circuit-relay-v2')
const { publicKeyToProtobuf } = await import('@libp2p/crypto/keys')
const { CID } = await import('multiformats/cid')

const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')
const b64 = (bytes) => Buffer.from(bytes).toString('base64')
const pkKey = (peerId) => Buffer.concat([
  Buffer.from('/pk/'), Buffer.from(peerId.toMultihash().bytes)
])

const extraListen = JSON.parse(process.env.P2PM_JS_LISTEN || '[]')
const relayServer = process.env.P2PM_JS_RELAY_SERVER === '1'
  ? { relay: circuitRelayServer() }
  : {}

const node = await createLibp2p({
  addresses: { listen: ['/ip4/127.0.0.1/tcp/0', ...extraListen] },
  transports: [tcp(), circuitRelayTransport()],
  connectionEncrypters: [noise()],
  streamMuxers: [yamux()],
  services: {
    identify: identify(),
    ping: ping(),
    dht: kadDHT({
      protocol: '/ipfs/kad/1.0.0',
      clientMode: false,
      // Loopback addresses are all these tests have.
      peerInfoMapper: passthroughMapper,
      allowQueryWithZeroPeers: true
    }),
    pubsub: gossipsub({
      emitSelf: false,
      allowPublishToZeroTopicPeers: false,
      globalSignaturePolicy: 'StrictSign',
      heartbeatInterval: 1000
    }),
    ...relayServer
  }
})

node.services.pubsub.addEventListener('message', (evt) => {
  const m = evt.detail
  out({
    event: 'message',
    topic: m.topic,
    from: m.type === 'signed' ? m.from.toString() : null,
    signed: m.type === 'signed',
    data: b64(m.data)
  })
})

const commands = {
  async dial ({ addr }) {
    const conn = await node.dial(multiaddr(addr))
    return { peer: conn.remotePeer.toString() }
  },
  async addrs () {
    return node.getMultiaddrs().map(String)
  },
  async peers () {
    const result = []
    for (const conn of node.getConnections()) {
      const peer = await node.peerStore.get(conn.remotePeer).catch(() => null)
      result.push({
        peer: conn.remotePeer.toString(),
        direction: conn.direction,
        encryption: conn.encryption,
        limited: conn.limits !== undefined,
        remoteAddr: conn.remoteAddr.toString(),
        multiplexer: conn.multiplexer,
        protocols: peer ? peer.protocols : []
      })
    }
    return result
  },
  async ping ({ peer }) {
    return { ms: await node.services.ping.ping(peerIdFromString(peer)) }
  },
  async subscribe ({ topic }) {
    node.services.pubsub.subscribe(topic)
    return {}
  },
  async meshPeers ({ topic }) {
    return node.services.pubsub.getMeshPeers(topic).map(String)
  },
  async publish ({ topic, data }) {
    const res = await node.services.pubsub.publish(topic, Buffer.from(data, 'base64'))
    return { recipients: res.recipients.map(String) }
  },
  async findPeer ({ peer }) {
    const info = await node.peerRouting.findPeer(peerIdFromString(peer), {
      signal: AbortSignal.timeout(15000)
    })
    return { peer: info.id.toString(), addrs: info.multiaddrs.map(String) }
  },
  async inTable ({ peer }) {
    const found = await node.services.dht.routingTable.find(peerIdFromString(peer))
    return found !== undefined
  },
  // Records: the key is "/pk/" + a peer's multihash; the value its key protobuf.
  async putOwnPk () {
    const key = pkKey(node.peerId)
    await node.contentRouting.put(key, publicKeyToProtobuf(node.peerId.publicKey), {
      signal: AbortSignal.timeout(15000)
    })
    return {}
  },
  async getPk ({ peer }) {
    const value = await node.contentRouting.get(pkKey(peerIdFromString(peer)), {
      signal: AbortSignal.timeout(15000)
    })
    return b64(value)
  },
  // Provider records under a CIDv0 ("Qm...", a sha2-256 multihash in base58).
  async provide ({ cid }) {
    await node.contentRouting.provide(CID.parse(cid), { signal: AbortSignal.timeout(15000) })
    return {}
  },
  async findProvider ({ cid, want }) {
    const seen = []
    for await (const info of node.contentRouting.findProviders(CID.parse(cid), {
      signal: AbortSignal.timeout(15000)
    })) {
      seen.push(info.id.toString())
      if (info.id.toString() === want) {
        return { found: true, addrs: info.multiaddrs.map(String), seen }
      }
    }
    return { found: false, seen }
  },
}

out({
  event: 'ready',
  peer: node.peerId.toString(),
  addrs: node.getMultiaddrs().map(String)
})

const lines = createInterface({ input: process.stdin })
lines.on('line', async (line) => {
  let req
  try {
    req = JSON.parse(line)
  } catch (err) {
    out({ id: null, error: `not JSON: ${err.message}` })
    return
  }
  const fn = commands[req.cmd]
  if (fn === undefined) {
    out({ id: req.id, error: `unknown command ${req.cmd}` })
    return
  }
  try {
    out({ id: req.id, ok: await fn(req) })
  } catch (err) {
    out({ id: req.id, error: String(err && err.stack ? err.stack : err) })
  }
})
lines.on('close', async () => {
  await node.stop()
  process.exit(0)
})
