"""The settings schema: default.toml and the schema name the same keys, the defaults
pass their own rules, and every bad value a user might write is refused with its key
named, never replaced by a default."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from p2pm.common import config as configmod
from p2pm.common.home import Home
from p2pm.common.settings import Settings

PEER = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"


def test_the_schema_and_default_toml_name_the_same_keys() -> None:
    defaults = configmod.defaults()
    schema = {name: {f.name for f in dataclasses.fields(kind)}
              for name, kind in typing.get_type_hints(Settings).items()}
    assert {s: set(t) for s, t in defaults.items()} == schema
    # The defaults pass the rules unchanged (a default the schema refuses would
    # make every node refuse to start).
    assert configmod.settings_of(None).to_mapping() == defaults


BAD = [
    ({"transport": {"listen": ["/ip4/127.0.0.1/udp/4001/quic-v1"]}},
     "transport.listen: '/ip4/127.0.0.1/udp/4001/quic-v1' is not supported"),
    ({"transport": {"listen": ["/ip4/127.0.0.1/tcp/99999"]}}, "transport.listen:"),
    ({"transport": {"listen": []}}, "transport.listen: needs at least one address"),
    ({"transport": {"listen": ["/ip4/127.0.0.1/tcp/1/p2p/" + PEER]}}, "transport.listen:"),
    ({"transport": {"max_connections": -5}}, "transport.max_connections: must be an integer"),
    ({"transport": {"max_connections": True}}, "transport.max_connections: must be an integer"),
    ({"dht": {"mode": "banana"}}, "dht.mode: must be one of auto, server, client"),
    ({"dht": {"bucket_size": 4, "alpha": 5}}, "dht.alpha: must be at most dht.bucket_size"),
    ({"transport": {"bootstrap": ["nonsense"]}}, "transport.bootstrap: 'nonsense' is not"),
    ({"transport": {"bootstrap": ["/ip4/10.0.0.1/tcp/4001"]}}, "must end in /p2p/<peer id>"),
    ({"transport": {"bootstrap": [f"/ip4/10.0.0.1/tcp/0/p2p/{PEER}"]}}, "port 0"),
    ({"transport": {"relays": [f"/ip4/10.0.0.1/tcp/1/p2p/{PEER}/p2p-circuit"]}},
     "transport.relays:"),
    ({"transport": {"reachability": "sometimes"}}, "transport.reachability:"),
    ({"transport": {"upnp": True}}, "transport.upnp: UPnP port mapping is not implemented"),
    ({"transport": {"keepalive_timeout_s": 0}}, "transport.keepalive_timeout_s: must be more"),
    ({"node": {"log_level": "LOUD"}}, "node.log_level: must be one of DEBUG, INFO"),
    ({"storage": {"synchronous": "SOMETIMES"}}, "storage.synchronous: must be one of OFF"),
    ({"gossip": {"heartbeat_s": 0}}, "gossip.heartbeat_s: must be at least 0.1"),
    ({"gossip": {"heartbeat_s": "1s"}}, "gossip.heartbeat_s: must be a number, not a string"),
    ({"gateway": {"tcp": "http://0.0.0.0:80"}}, "gateway.tcp: must be"),
    ({"gateway": {"invite_ttl_s": 60}},
     "gateway.invite_ttl_s: must be at least 3600 and at most 3.1536e+07 seconds"),
    ({"gateway": {"invite_ttl_s": "7d"}}, "gateway.invite_ttl_s: must be a number"),
    ({"gossip": {"room_invite_ttl_s": 400 * 86400}}, "gossip.room_invite_ttl_s: must be"),
    ({"gateway": {"tcp": "tcp://127.0.0.1:70000"}}, "gateway.tcp:"),
    ({"transport": {"max_conections": 5}},
     "unknown setting transport.max_conections (did you mean transport.max_connections?)"),
    ({"gosip": {"heartbeat_s": 1.0}}, "unknown section gosip (did you mean gossip?)"),
    ({"gossip": 1}, "gossip: must be a table"),
]


@pytest.mark.parametrize("tables, complaint", BAD)
def test_a_bad_setting_is_refused_with_its_key(tables: dict, complaint: str) -> None:
    with pytest.raises(configmod.ConfigError) as info:
        configmod.settings_of(tables)
    assert complaint in str(info.value)


def test_good_values_are_taken_as_written(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text(
        '[node]\nlog_level = "debug"\n'
        '[transport]\nlisten = ["/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/0"]\n'
        f'bootstrap = ["/dns4/boot.example.org/tcp/4001/p2p/{PEER}"]\n'
        '[gossip]\nheartbeat_s = 2\n[storage]\nsynchronous = "normal"\n'
        '[gateway]\ntcp = "tcp://[::1]:*"\n')
    s = configmod.load(home)
    assert s.node.log_level == "DEBUG" and s.storage.synchronous == "NORMAL"
    assert s.transport.listen == ("/ip4/127.0.0.1/tcp/4001", "/ip6/::1/tcp/0")
    assert s.transport.bootstrap == (f"/dns4/boot.example.org/tcp/4001/p2p/{PEER}",)
    assert s.gossip.heartbeat_s == 2.0 and s.gateway.tcp == "tcp://[::1]:*"
    assert s.transport.max_connections == 256  # not set: the default


def test_a_bad_file_names_the_file_and_the_key(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.config_file.write_text('[dht]\nmode = "banana"\n')
    with pytest.raises(configmod.ConfigError) as info:
        configmod.load(home)
    assert str(info.value).startswith(f"{home.config_file}: dht.mode: ")
    assert info.value.key == "dht.mode"
    home.config_file.write_text("[dht\n")
    with pytest.raises(configmod.ConfigError, match="not valid TOML"):
        configmod.load(home)
