"""Room invites as capabilities: an invite carries no key; its token lets the holder ask
an admin to admit it, and dies with its issuer's rights, its expiry, or any tampering."""

from __future__ import annotations

import base64

import nacl.signing
import orjson
import pytest

from p2pm.common import identity
from p2pm.services.gossip import admission as ad
from p2pm.services.gossip import conversations as cv
from p2pm.services.gossip import roster as rs

NOW = 1_800_000_000.0
DAY = 86400.0


class Person:
    def __init__(self) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.peer = identity.peer_id_from_public_key(bytes(self.key.verify_key))

    def sign(self, domain: str, payload: bytes) -> bytes:
        return identity.sign(self.key, domain, payload)


SECRET = cv.new_room_secret()
ROOM = cv.Keys.derive("room", SECRET).id


def make_roster(admin: Person, *members: Person) -> rs.Roster:
    roster = rs.Roster.new(ROOM)
    for kind, target in [(rs.CREATE, None)] + [(rs.ADD, m) for m in members]:
        payload = roster.propose(kind, admin.peer, target.peer if target else None, NOW)
        roster.add_signed(payload, admin.sign(rs.ROSTER_DOMAIN, payload))
    return roster


def token_of(issuer: Person, ttl: float = 7 * DAY, now: float = NOW) -> ad.Token:
    payload = ad.token_payload(ROOM, issuer.peer, now, ttl)
    return ad.decode_token({"p": base64.b64encode(payload).decode(),
                            "s": base64.b64encode(issuer.sign(ad.DOMAIN, payload)).decode()},
                           now)


def invite_of(issuer: Person, name: str = "jardín 🌻", **kw) -> str:
    outer = ad.invite_outer(name, token_of(issuer, **kw), ["/ip4/10.0.0.1/tcp/4001"],
                            b"bundle bytes")
    return ad.encode_invite(outer, issuer.sign(ad.DOMAIN, outer))


def test_an_invite_round_trips_and_carries_no_key():
    admin = Person()
    text = invite_of(admin)
    got = ad.decode_invite(text, NOW + 60)
    assert got.name == "jardín 🌻" and got.token.issuer == admin.peer
    assert got.token.room == ROOM and got.bundle == b"bundle bytes"
    raw = base64.urlsafe_b64decode(text[len(ad.PREFIX):].split(".")[0] + "===")
    assert base64.b64encode(SECRET) not in raw and SECRET not in raw


def test_an_admin_admits_on_a_token_until_its_issuer_loses_the_right():
    admin, other_admin, joiner = Person(), Person(), Person()
    roster = make_roster(admin, other_admin)
    payload = roster.propose(rs.PROMOTE, admin.peer, other_admin.peer, NOW)
    roster.add_signed(payload, admin.sign(rs.ROSTER_DOMAIN, payload))
    token = ad.decode_join(ad.join_body(token_of(other_admin)), NOW)
    ad.check_join(token, roster, joiner.peer)  # any admin may check it
    payload = roster.propose(rs.REMOVE, admin.peer, other_admin.peer, NOW)
    roster.add_signed(payload, admin.sign(rs.ROSTER_DOMAIN, payload))
    with pytest.raises(ad.AdmissionRefused, match="no longer an admin"):
        ad.check_join(token, roster, joiner.peer)


def test_a_plain_member_cannot_give_invites_that_admit():
    admin, member, joiner = Person(), Person(), Person()
    roster = make_roster(admin, member)
    with pytest.raises(ad.AdmissionRefused, match="no longer an admin"):
        ad.check_join(token_of(member), roster, joiner.peer)
    with pytest.raises(ad.AdmissionRefused, match="already a member"):
        ad.check_join(token_of(admin), roster, member.peer)


def test_an_expired_or_future_invite_says_so():
    admin = Person()
    with pytest.raises(ad.AdmissionRefused, match="expired"):
        ad.decode_invite(invite_of(admin, ttl=3600), NOW + 7200)
    with pytest.raises(ad.AdmissionRefused, match="future"):
        ad.decode_invite(invite_of(admin), NOW - DAY)
    token = token_of(admin, ttl=3600)
    with pytest.raises(ad.AdmissionRefused, match="expired"):
        ad.decode_join(ad.join_body(token), NOW + 7200)


def test_older_invites_are_refused_as_from_an_older_p2pm():
    inviter = Person()
    payload = cv.invite_payload("old room", SECRET, inviter.peer, [], NOW, DAY)
    v2 = cv.encode_invite(payload, inviter.sign(cv.INVITE_DOMAIN, payload))
    for text in (v2, "p2pm-invite1:abc.def"):
        with pytest.raises(ad.AdmissionRefused, match="older p2pm"):
            ad.decode_invite(text, NOW)


def test_a_tampered_invite_or_token_is_refused():
    admin, mallory = Person(), Person()
    text = invite_of(admin)
    body, sig = text[len(ad.PREFIX):].split(".")
    outer = orjson.loads(base64.urlsafe_b64decode(body + "==="))
    outer["addrs"] = ["/ip4/6.6.6.6/tcp/1"]
    forged = ad.encode_invite(orjson.dumps(outer, option=orjson.OPT_SORT_KEYS),
                              base64.urlsafe_b64decode(sig + "==="))
    with pytest.raises(ad.AdmissionRefused, match="signature"):
        ad.decode_invite(forged, NOW)
    # mallory re-signs a token naming the admin as issuer
    payload = ad.token_payload(ROOM, admin.peer, NOW, DAY)
    fake = {"p": base64.b64encode(payload).decode(),
            "s": base64.b64encode(mallory.sign(ad.DOMAIN, payload)).decode()}
    with pytest.raises(ad.AdmissionRefused, match="signature"):
        ad.decode_join({"token": fake}, NOW)
    # an invite's outer signature cannot pass for a token's
    outer_bytes = base64.urlsafe_b64decode(body + "===")
    with pytest.raises(ad.AdmissionRefused):
        ad.decode_token({"p": base64.b64encode(outer_bytes).decode(),
                         "s": base64.b64encode(base64.urlsafe_b64decode(sig + "===")).decode()},
                        NOW)
    for junk in ("", "p2pm-invite3:", "p2pm-invite3:%%%.%%%", "p2pm-invite3:e30.e30",
                 "hello", ad.PREFIX + "A" * (ad.MAX_INVITE + 1), "p2pm-invite3:" + "é" * 9):
        with pytest.raises(ad.AdmissionRefused):
            ad.decode_invite(junk, NOW)
    for body_ in (None, {}, {"token": 1}, {"token": {"p": 1, "s": 2}}, {"token": fake, "x": 1}):
        with pytest.raises(ad.AdmissionRefused):
            ad.decode_join(body_, NOW)


def test_a_token_for_another_room_does_not_admit():
    admin, joiner = Person(), Person()
    roster = make_roster(admin)
    payload = ad.token_payload("r" + "0" * 32, admin.peer, NOW, DAY)
    token = ad.decode_token({"p": base64.b64encode(payload).decode(),
                             "s": base64.b64encode(admin.sign(ad.DOMAIN, payload)).decode()},
                            NOW)
    with pytest.raises(ad.AdmissionRefused, match="another room"):
        ad.check_join(token, roster, joiner.peer)


def test_an_admit_carries_the_rooms_secret_and_is_checked_against_its_id():
    admin = Person()
    roster = make_roster(admin)
    body = ad.admit_body(ROOM, "garden", SECRET, roster.heads())
    got = ad.decode_admit(orjson.loads(orjson.dumps(body)))
    assert got.secret == SECRET and got.heads == tuple(roster.heads())
    wrong = dict(body, secret=base64.b64encode(cv.new_room_secret()).decode())
    with pytest.raises(ad.AdmissionRefused, match="not this room"):
        ad.decode_admit(wrong)
    for bad in (dict(body, heads=[]), dict(body, heads=["x"]), dict(body, name=7),
                dict(body, secret="%%"), {"room": ROOM}, None):
        with pytest.raises(ad.AdmissionRefused):
            ad.decode_admit(bad)


def test_a_join_payload_fits_the_pairwise_channel():
    from p2pm.services.gossip import channel as ch
    admin = Person()
    plaintext = ch.encode_payload(ch.Payload("join", ad.join_body(token_of(admin))))
    assert len(plaintext) <= ch.MAX_PAYLOAD
    admit = ch.encode_payload(ch.Payload("admit", ad.admit_body(
        ROOM, "n" * cv.MAX_NAME, SECRET, ["a" * 64] * 16)))
    assert len(admit) <= ch.MAX_PAYLOAD
