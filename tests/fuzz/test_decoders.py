"""Property-based fuzzing of every decoder that takes outside input.

Each decoder gets random bytes, valid encodings and mutated valid encodings, and must
either return its typed value or raise its own documented error class: anything else
(an IndexError, a UnicodeDecodeError, a RecursionError...) is a crash waiting for a
peer to trigger it. Where a decoder accepts input, re-encoding what it returned must
decode to the same value, so "accepted" also means "understood".

The default run is quick; `make fuzz` (P2PM_FUZZ=long) runs thousands of examples each.
"""

from __future__ import annotations

import base64
import math
import tempfile
from pathlib import Path

import nacl.signing
import orjson
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from p2pm.common import config as configmod
from p2pm.common import errors, identity, invite, wire
from p2pm.common.home import Home
from p2pm.common.protobuf import DecodeError
from p2pm.services.dht import messages as kad
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip import sync
from p2pm.services.gossip.router import messages as gs
from p2pm.common.streams import frames
from p2pm.services.transport import yamux_guard as yg

from .mutate import fuzzed, mutated

# -- shared strategies ---------------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**64 - 1),
                         st.floats(allow_nan=False, allow_infinity=False),
                         st.text(max_size=40))
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5),
                            st.dictionaries(st.text(max_size=12), inner, max_size=5)),
    max_leaves=20)


def dumps(value: object) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)


SIGNER = nacl.signing.SigningKey(b"\x01" * 32)
SIGNER_ID = identity.peer_id_from_public_key(bytes(SIGNER.verify_key))
ROOM = cv.Keys.derive("room", b"\x02" * 32)

# -- the bus envelope ----------------------------------------------------------------

requests = st.fixed_dictionaries(
    {"id": st.one_of(st.text(max_size=140), json_values),
     "method": st.one_of(st.sampled_from(["sys.ping", "sign", "post"]), json_values),
     "params": st.one_of(st.dictionaries(st.text(max_size=8), json_values, max_size=4),
                         json_values)},
    optional={"auth": st.one_of(
        st.fixed_dictionaries({"actor": st.one_of(st.sampled_from(["gossip", ""]), json_values),
                               "token": st.one_of(st.text(max_size=140), json_values)}),
        json_values)},
).map(dumps)


@given(fuzzed(requests))
def test_bus_request_decoder_accepts_only_well_formed_envelopes(frame: bytes) -> None:
    try:
        req = wire.decode_request(frame)
    except errors.BusError as exc:
        assert exc.code == errors.BAD_REQUEST and exc.message
        return
    assert isinstance(req.id, str) and 1 <= len(req.id) <= 128
    assert isinstance(req.method, str) and req.method
    assert isinstance(req.params, dict)
    assert req.auth is None or (1 <= len(req.auth.actor) <= 128 and 1 <= len(req.auth.token) <= 128)
    assert wire.decode_request(wire.encode_request(req.id, req.method, req.params,
                                                   req.auth)) == req


@given(st.one_of(json_values, st.text(alphabet="ABCabc+/=-_ \n", max_size=30)))
def test_base64_params_fail_as_bad_params(value: object) -> None:
    try:
        out = wire.b64d(value, "data")
    except errors.BusError as exc:
        assert exc.code == errors.BAD_PARAMS
        return
    assert base64.b64decode(wire.b64e(out)) == out

# -- Kademlia ------------------------------------------------------------------------

kad_peers = st.builds(kad.Peer, id=st.binary(max_size=40),
                      addrs=st.lists(st.binary(max_size=30), max_size=3).map(tuple),
                      connection=st.integers(0, 3))
kad_messages = st.builds(
    kad.Message, type=st.integers(0, 6), key=st.binary(max_size=40),
    record=st.none() | st.builds(kad.Record, key=st.binary(max_size=20),
                                 value=st.binary(max_size=40),
                                 time_received=st.text(max_size=20)),
    closer_peers=st.lists(kad_peers, max_size=4).map(tuple),
    provider_peers=st.lists(kad_peers, max_size=2).map(tuple),
    cluster_level_raw=st.integers(-2**31, 2**31 - 1),
).map(kad.encode_message)


@given(fuzzed(kad_messages))
def test_kademlia_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        msg = kad.decode_message(data)
    except DecodeError:
        return
    assert kad.decode_message(kad.encode_message(msg)) == msg

# -- GossipSub -----------------------------------------------------------------------

opt_bytes = st.none() | st.binary(max_size=24)
opt_text = st.none() | st.text(max_size=24)
gs_messages = st.builds(gs.Message, from_=opt_bytes, data=opt_bytes, seqno=opt_bytes,
                        topic=opt_text, signature=opt_bytes, key=opt_bytes)
ids = st.lists(st.binary(max_size=20), max_size=3).map(tuple)
gs_control = st.builds(
    gs.ControlMessage,
    ihave=st.lists(st.builds(gs.ControlIHave, topic_id=opt_text, message_ids=ids),
                   max_size=2).map(tuple),
    iwant=st.lists(st.builds(gs.ControlIWant, message_ids=ids), max_size=2).map(tuple),
    graft=st.lists(st.builds(gs.ControlGraft, topic_id=opt_text), max_size=2).map(tuple),
    prune=st.lists(st.builds(
        gs.ControlPrune, topic_id=opt_text,
        peers=st.lists(st.builds(gs.PeerInfo, peer_id=opt_bytes,
                                 signed_peer_record=opt_bytes), max_size=2).map(tuple),
        backoff=st.none() | st.integers(0, 2**64 - 1)), max_size=2).map(tuple),
    idontwant=st.lists(st.builds(gs.ControlIDontWant, message_ids=ids),
                       max_size=2).map(tuple))
gs_rpcs = st.builds(
    gs.RPC,
    subscriptions=st.lists(st.builds(gs.SubOpts, subscribe=st.none() | st.booleans(),
                                     topicid=opt_text), max_size=3).map(tuple),
    publish=st.lists(gs_messages, max_size=3).map(tuple),
    control=st.none() | gs_control,
).map(gs.encode)


@given(fuzzed(gs_rpcs))
def test_gossipsub_decoder_raises_only_decode_error(data: bytes) -> None:
    try:
        rpc = gs.decode_rpc(data, max_size=1 << 20)
        gs.control_has_unknown_fields(data, rpc)
    except DecodeError:
        return
    assert gs.decode_rpc(gs.encode(rpc), max_size=1 << 20) == rpc
    for msg in rpc.publish:
        assert gs.signed_prefix(gs.encode(msg), msg) == gs.signing_data(msg)


@given(gs_rpcs, st.integers(0, 64))
def test_gossipsub_size_limit_is_enforced(data: bytes, limit: int) -> None:
    assume(len(data) > limit)
    with pytest.raises(DecodeError):
        gs.decode_rpc(data, max_size=limit)

# -- Yamux headers (every frame a peer sends passes this first) ----------------------

yamux_headers = st.builds(yg.encode_header, st.integers(0, 3), st.integers(0, 15),
                          st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1))


@given(fuzzed(yamux_headers, 16))
def test_yamux_header_decoder_raises_only_protocol_error(data: bytes) -> None:
    try:
        h = yg.decode_header(data)
    except yg.YamuxProtocolError:
        return
    assert len(data) == yg.HEADER_SIZE and h.version == 0
    assert h.type in (yg.TYPE_DATA, yg.TYPE_WINDOW_UPDATE, yg.TYPE_PING, yg.TYPE_GO_AWAY)
    assert (h.stream_id == 0) == (h.type in (yg.TYPE_PING, yg.TYPE_GO_AWAY))
    assert yg.encode_header(h.type, h.flags, h.stream_id, h.length) == data


# -- the transport's stream frames ---------------------------------------------------

frame_parts = st.lists(st.one_of(st.sampled_from(sorted(frames.KINDS)),
                                 st.binary(max_size=10)), min_size=0, max_size=4)


@given(frame_parts, fuzzed(json_values.map(dumps), 64))
def test_stream_frames_raise_only_frame_error(parts: list[bytes], body: bytes) -> None:
    try:
        f = frames.parse(parts)
    except frames.FrameError:
        return
    assert f.kind in frames.KINDS and 0 <= f.sid < 2**64
    for decode in (frames.Frame(f.kind, f.sid, body).json,
                   frames.Frame(f.kind, f.sid, body).credit):
        try:
            decode()
        except frames.FrameError:
            pass


@given(st.lists(st.binary(max_size=12), min_size=1, max_size=3).map(tuple),
       st.lists(st.integers(1, 7), max_size=12))
def test_uvarint_stream_decoder_splits_any_chunking(messages: tuple[bytes, ...],
                                                    cuts: list[int]) -> None:
    stream = b"".join(frames.encode_message(m) for m in messages)
    dec = frames.MessageDecoder(max_message=64)
    got, pos = [], 0
    for cut in cuts + [len(stream)]:
        got += dec.feed(stream[pos:pos + cut])
        pos += cut
    assert tuple(got) == messages and dec.buffered == 0


@given(st.lists(fuzzed(st.binary(max_size=16).map(frames.encode_message), 32), max_size=6))
def test_uvarint_stream_decoder_refuses_garbage_cleanly(chunks: list[bytes]) -> None:
    dec = frames.MessageDecoder(max_message=16)
    try:
        for chunk in chunks:
            for msg in dec.feed(chunk):
                assert len(msg) <= 16
    except frames.MessageTooLarge:
        pass
    assert dec.buffered <= sum(map(len, chunks))


@given(json_values, json_values, json_values)
def test_stream_registration_fields_raise_only_frame_error(spec: object, proto: object,
                                                           window: object) -> None:
    for check in (lambda: frames.ProtocolSpec.from_wire(spec, "spec"),
                  lambda: frames.check_protocol_id(proto),
                  lambda: frames.check_window(window)):
        try:
            check()
        except frames.FrameError:
            pass

# -- catch-up sync -------------------------------------------------------------------

spans = st.lists(st.tuples(st.integers(1, 50), st.integers(0, 50)), max_size=3).map(
    lambda pairs: [(sum(p[0] for p in pairs[:i]) * 100 + lo, sum(p[0] for p in pairs[:i])
                    * 100 + lo + n) for i, (lo, n) in enumerate(pairs)])
# Authors and addrs keys: mostly valid peer ids (so frames survive), some not (dropped).
PEERS = [identity.peer_id_from_public_key(bytes([i]) * 32) for i in range(1, 5)]
peer_keys = st.sampled_from(PEERS) | st.text(min_size=1, max_size=12)
ranges = st.dictionaries(peer_keys, spans, max_size=3)
sync_frames = st.one_of(
    st.builds(sync.Open, nonce=st.binary(min_size=16, max_size=16)),
    st.builds(sync.Proof, proof=st.binary(min_size=32, max_size=32)),
    st.builds(sync.Hello, ranges=ranges,
              addrs=st.dictionaries(peer_keys,
                                    st.lists(st.text(min_size=1, max_size=20), max_size=2),
                                    max_size=2)),
    st.builds(sync.Envs, envelopes=st.lists(st.binary(max_size=30), max_size=3).map(tuple)),
    st.just(sync.Done()),
    st.builds(sync.Have, ranges=ranges),
).map(sync.encode)


@given(fuzzed(sync_frames))
def test_sync_decoder_raises_only_sync_error(data: bytes) -> None:
    try:
        frame = sync.decode(data)
    except sync.SyncError:
        return
    if isinstance(frame, (sync.Hello, sync.Have)):  # what it kept is all valid
        assert all(sync.valid_peer_id(a) for a in frame.ranges)
    if isinstance(frame, sync.Hello):
        assert all(sync.valid_peer_id(p) for p in frame.addrs)
    assert sync.decode(sync.encode(frame)) == frame


@given(st.lists(fuzzed(sync_frames), min_size=1, max_size=6), st.sampled_from(sync.Role))
def test_a_sync_session_fed_anything_raises_only_sync_error(frames: list[bytes],
                                                           role: sync.Role) -> None:
    """Any sequence of frames into either side: the table refuses what is out of
    order, and nothing but SyncError ever comes out (no proof is ever accepted)."""
    session = sync.Session(role, PEERS[0], PEERS[1], b"\x00" * 16, {ROOM.id: ROOM.content_key})
    for data in frames:
        try:
            session.receive(data)
        except sync.SyncError:
            assert session.theirs is sync.State.FAILED
            return
        assert session.theirs < sync.State.PROVEN


@given(ranges, ranges)
def test_sync_reconciliation_never_asks_for_what_it_holds(mine: dict, theirs: dict) -> None:
    wanted = sync.missing(mine, theirs)
    for author, wanted_spans in wanted.items():
        for lo, hi in wanted_spans:
            for seq in (lo, hi):
                assert sync.holds(mine, author, seq)
                assert not sync.holds(theirs, author, seq)

# -- envelopes and invites -----------------------------------------------------------

plaintexts = st.one_of(
    st.builds(lambda s, t, text: cv.message_plaintext(ROOM.id, SIGNER_ID, s, t, text),
              st.integers(1, 2**63 - 1), st.floats(0, 2e9), st.text(min_size=1, max_size=40)),
    st.fixed_dictionaries({"v": st.just(1), "k": st.sampled_from(["m", "r", "x"]),
                           "c": st.just(ROOM.id), "a": st.just(SIGNER_ID)},
                          optional={"s": json_values, "t": json_values, "b": json_values,
                                    "ids": json_values}).map(dumps),
    json_values.map(dumps),
)


def _sealed(plaintext: bytes) -> bytes:
    return cv.seal(ROOM.content_key, identity.sign(SIGNER, cv.MESSAGE_DOMAIN, plaintext),
                   plaintext)


@given(st.one_of(st.binary(max_size=200), plaintexts.map(_sealed),
                 plaintexts.map(_sealed).flatmap(lambda e: mutated(st.just(e)))))
def test_envelope_opening_raises_only_envelope_error(envelope: bytes) -> None:
    try:
        opened = cv.open_envelope(ROOM, envelope)
    except cv.EnvelopeError:
        return
    # Only what the signer wrote opens: any byte changed breaks the box's MAC.
    assert opened.author == SIGNER_ID and opened.conversation == ROOM.id
    assert opened.kind == "m" and opened.seq >= 1 and cv.check_text(opened.text)


room_invites = st.builds(
    lambda name, addrs, secret, ts, ttl: cv.encode_invite(
        p := cv.invite_payload(name, secret, SIGNER_ID, addrs, ts, ttl),
        identity.sign(SIGNER, cv.INVITE_DOMAIN, p)),
    st.text(max_size=20), st.lists(st.text(min_size=1, max_size=30), max_size=3),
    st.binary(min_size=16, max_size=64), st.floats(0, 2e9),
    st.floats(3600, 365 * 86400))


@given(st.one_of(st.text(max_size=300), room_invites,
                 room_invites.flatmap(lambda t: mutated(st.just(t.encode())))
                 .map(lambda b: b.decode("utf-8", "replace"))))
def test_room_invite_decoder_raises_only_invite_error(text: str) -> None:
    try:
        inv = cv.decode_invite(text, now=1e9)
    except cv.InviteError:
        return
    assert inv.inviter == SIGNER_ID and inv.ts <= 1e9 + 600 and inv.exp > 1e9
    assert cv.Keys.derive("room", inv.secret).id == inv.id


node_invites = st.builds(
    lambda name, addrs, ts: invite.encode(
        inv := invite.NodeInvite.issue(SIGNER_ID, name, tuple(addrs), ts),
        identity.sign(SIGNER, invite.DOMAIN, inv.payload())),
    st.text(min_size=1, max_size=20), st.lists(st.text(min_size=1, max_size=30).map(
        lambda s: "/" + s), max_size=3), st.floats(0, 2e9))


@given(st.one_of(st.text(max_size=300), node_invites,
                 node_invites.flatmap(lambda t: mutated(st.just(t.encode())))
                 .map(lambda b: b.decode("utf-8", "replace"))))
def test_node_invite_decoder_raises_only_invite_error(text: str) -> None:
    try:
        inv = invite.decode(text, now=1e9)
    except invite.InviteError:
        return
    assert inv.peer_id == SIGNER_ID and invite.check_name(inv.name) and inv.exp > 1e9
    assert math.isfinite(inv.ts) and all(a.startswith("/") for a in inv.addrs)

# -- config files --------------------------------------------------------------------

DEFAULTS = configmod.defaults()
config_keys = st.sampled_from([(s, k) for s, table in DEFAULTS.items() for k in table]
                              + [("node", "nope"), ("nope", "x")])
toml_values = st.one_of(st.booleans(), st.integers(-2**63, 2**63 - 1), st.text(max_size=20),
                        st.floats(allow_nan=False, allow_infinity=False),
                        st.lists(st.text(max_size=20), max_size=3),
                        st.lists(st.integers(), max_size=3))


@st.composite
def config_texts(draw: st.DrawFn) -> bytes:
    table: dict[str, dict[str, object]] = {}
    for section, key in draw(st.lists(config_keys, max_size=6)):
        table.setdefault(section, {})[key] = draw(toml_values)
    return configmod.dump(table).encode()


@given(fuzzed(config_texts(), 200))
def test_config_loader_raises_only_config_error(text: bytes) -> None:
    root = Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp"))
    try:
        (root / "config.toml").write_bytes(text)
        try:
            cfg = configmod.load(Home(root))
        except configmod.ConfigError as exc:
            assert "config.toml" in str(exc)
            return
    finally:
        for p in root.iterdir():
            p.unlink()
        root.rmdir()
    # Whatever was accepted is complete and of the defaults' types.
    tables = cfg.to_mapping()
    assert tables.keys() == DEFAULTS.keys()
    for section, table in DEFAULTS.items():
        assert tables[section].keys() == table.keys()
        for key, default in table.items():
            assert type(tables[section][key]) is type(default), (section, key)