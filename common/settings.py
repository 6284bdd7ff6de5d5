"""The node's settings as one typed schema: every actor reads its settings from here.

`config/default.toml` gives every key its default; the home's `config.toml` overrides
some (config.py reads and merges the files). `Settings.from_mapping` then checks every
value against its rule below and builds frozen dataclasses, one per `[section]`. A bad
value raises ConfigError naming the key (`dht.mode: must be one of auto, server,
client, not 'banana'`): nothing is ever replaced by a default behind the user's back,
and since `p2pm up` and `p2pm service` both load the settings before anything starts,
a node with a bad setting does not start at all.

Rules are functions from the TOML value (its type already checked against the
default's) to the value the actor uses, raising ValueError with the reason.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

class ConfigError(ValueError):
    """A setting that cannot be used; the message names it. `key` and `reason` are
    its parts when one key is at fault (for a command line to name its option)."""

    def __init__(self, message: str, key: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.reason = reason or message


Rule = Callable[[Any], Any]


def _rule(check: Rule) -> Any:
    return field(metadata={"rule": check})


# -- rules ---------------------------------------------------------------------------


def choice(*names: str) -> Rule:
    """One of `names`, in any case (stored as written in `names`)."""
    by_upper = {n.upper(): n for n in names}

    def check(value: str) -> str:
        if value.upper() not in by_upper:
            raise ValueError(f"must be one of {', '.join(names)}, not {value!r}")
        return by_upper[value.upper()]
    return check


def integer(lo: int, hi: int) -> Rule:
    def check(value: int) -> int:
        if not lo <= value <= hi:
            raise ValueError(f"must be an integer from {lo} to {hi}, not {value!r}")
        return value
    return check


def seconds(lo: float, hi: float) -> Rule:
    """A duration in seconds from lo to hi; with lo 0, 0 itself is refused (0 s is
    never meant, and would spin a loop)."""
    def check(value: float) -> float:
        if not (lo < value if lo == 0 else lo <= value) or value > hi:
            low = "more than 0" if lo == 0 else f"at least {lo:g}"
            raise ValueError(f"must be {low} and at most {hi:g} seconds, not {value!r}")
        return float(value)
    return check


def boolean(value: bool) -> bool:
    return value


def not_implemented(what: str) -> Rule:
    """A switch for something p2pm does not do: only false is accepted, so that
    asking for it fails at start instead of being ignored."""
    def check(value: bool) -> bool:
        if value:
            raise ValueError(f"{what} is not implemented; set it to false")
        return value
    return check


_IP = ("ip4", "ip6")
_HOST = ("ip4", "ip6", "dns", "dns4", "dns6")


def _multiaddr(text: str, first: tuple[str, ...], peer: bool) -> str:
    """`/<first>/HOST/tcp/PORT` (+ `/p2p/<peer id>` when `peer`), nothing else: the
    transport listens and dials on TCP only."""
    import multiaddr  # imports libp2p's multiformats; only loaded when checking

    try:
        ma = multiaddr.Multiaddr(text)
    except Exception as exc:  # the package raises several unrelated types
        raise ValueError(f"{text!r} is not a valid multiaddr ({_why(exc)})") from None
    names = [p.name for p in ma.protocols()]
    if peer and "p2p" not in names:
        raise ValueError(f"{text!r} must end in /p2p/<peer id>")
    want = "/".join(["{" + "|".join(first) + "}", "HOST", "tcp", "PORT"]
                    + (["p2p", "<peer id>"] if peer else []))
    if len(names) < 2 or names[0] not in first or names[1] != "tcp" \
            or names[2:] != (["p2p"] if peer else []):
        raise ValueError(f"{text!r} is not supported: the transport speaks TCP only "
                         f"(/{want})")
    port = int(ma.value_for_protocol("tcp"))
    if peer and port == 0:
        raise ValueError(f"{text!r} names port 0, which cannot be dialled")
    return str(ma)


def _why(exc: Exception) -> str:
    # multiaddr repeats the whole address in its messages; keep the reason.
    return str(exc).split(": ", 1)[-1].split(" (string:")[0]


def addr_list(first: tuple[str, ...], peer: bool, nonempty: bool) -> Rule:
    def check(value: list[Any]) -> tuple[str, ...]:
        if nonempty and not value:
            raise ValueError("needs at least one address")
        out = []
        for item in value:
            if not isinstance(item, str):
                raise ValueError(f"must be a list of multiaddr strings, not {item!r}")
            out.append(_multiaddr(item, first, peer))
        if len(set(out)) != len(out):
            raise ValueError("names an address twice")
        return tuple(out)
    return check


def tcp_endpoint_or_empty(value: str) -> str:
    """"" (off) or a ZeroMQ TCP endpoint to bind: tcp://IP:PORT, with IP an address,
    `*` (every interface) or `localhost`, and PORT 1-65535 or `*` (any free one)."""
    if value == "":
        return value
    if not value.startswith("tcp://") or ":" not in value[len("tcp://"):]:
        raise ValueError(f"must be \"\" (off) or tcp://IP:PORT, not {value!r}")
    host, port = value[len("tcp://"):].rsplit(":", 1)
    if host not in ("*", "localhost"):
        try:
            ipaddress.ip_address(host[1:-1] if host.startswith("[") else host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IP address, * or "
                             "localhost") from None
    if port != "*" and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"{value!r}: the port must be 1-65535 or *")
    return value


# -- the schema ----------------------------------------------------------------------
# Field names are the TOML keys; each section's keys are exactly default.toml's
# (tests/unit/test_settings.py holds the two together).

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
DAY = 86400.0


@dataclass(frozen=True)
class NodeSettings:
    log_level: str = _rule(choice(*LOG_LEVELS))


@dataclass(frozen=True)
class TransportSettings:
    listen: tuple[str, ...] = _rule(addr_list(_IP, peer=False, nonempty=True))
    bootstrap: tuple[str, ...] = _rule(addr_list(_HOST, peer=True, nonempty=False))
    max_connections: int = _rule(integer(1, 100_000))
    max_streams_per_peer: int = _rule(integer(1, 10_000))
    # unread muxer data the whole node holds for its peers (services/transport/mux_budget.py)
    mux_budget_mib: int = _rule(integer(4, 4096))
    keepalive_interval_s: float = _rule(seconds(0, DAY))
    keepalive_timeout_s: float = _rule(seconds(0, DAY))
    reachability: str = _rule(choice("auto", "public", "private"))
    autonat_service: bool = _rule(boolean)
    autonat_max_per_peer: int = _rule(integer(1, 10_000))
    autonat_max_total: int = _rule(integer(1, 100_000))
    autonat_dial_timeout_s: float = _rule(seconds(0, 600))
    autonat_interval_s: float = _rule(seconds(0, DAY))
    autonat_retry_s: float = _rule(seconds(0, DAY))
    relays: tuple[str, ...] = _rule(addr_list(_HOST, peer=True, nonempty=False))
    relay_client_reservations: int = _rule(integer(1, 64))
    relay_discovery: bool = _rule(boolean)
    relay_service: bool = _rule(boolean)
    relay_max_reservations: int = _rule(integer(1, 100_000))
    relay_reservation_ttl_s: int = _rule(integer(1, 7 * 86400))
    relay_max_circuits: int = _rule(integer(1, 100_000))
    relay_max_circuits_per_peer: int = _rule(integer(1, 10_000))
    relay_circuit_duration_s: int = _rule(integer(1, 86400))
    relay_circuit_data_bytes: int = _rule(integer(1, 1 << 40))
    holepunch: bool = _rule(boolean)
    holepunch_cooldown_s: float = _rule(seconds(0, 7 * DAY))
    upnp: bool = _rule(not_implemented("UPnP port mapping"))


@dataclass(frozen=True)
class DhtSettings:
    mode: str = _rule(choice("auto", "server", "client"))
    bucket_size: int = _rule(integer(1, 256))
    alpha: int = _rule(integer(1, 256))

    def __post_init__(self) -> None:
        if self.alpha > self.bucket_size:
            raise ConfigError(f"dht.alpha: must be at most dht.bucket_size "
                              f"({self.bucket_size}), not {self.alpha}", "dht.alpha")


# How long an invite lives; common/invite.py applies the same bounds to the CLI's
# --expires and to what a received invite may claim.
INVITE_TTL = (3600.0, 365 * DAY)


@dataclass(frozen=True)
class GossipSettings:
    # Below 0.1 s the heartbeat's own work would take a core.
    heartbeat_s: float = _rule(seconds(0.1, 60))
    room_invite_ttl_s: float = _rule(seconds(*INVITE_TTL))


@dataclass(frozen=True)
class StorageSettings:
    synchronous: str = _rule(choice(*SYNCHRONOUS_MODES))


@dataclass(frozen=True)
class GatewaySettings:
    tcp: str = _rule(tcp_endpoint_or_empty)
    tcp_allow_remote: bool = _rule(boolean)
    invite_ttl_s: float = _rule(seconds(*INVITE_TTL))

    def __post_init__(self) -> None:
        if self.tcp and not self.tcp_allow_remote and not _is_loopback_endpoint(self.tcp):
            raise ConfigError(
                f"gateway.tcp: {self.tcp!r} is not a loopback address; the TCP door is "
                "unencrypted, so listening there needs gateway.tcp_allow_remote = true",
                "gateway.tcp")


def _is_loopback_endpoint(endpoint: str) -> bool:
    return is_loopback(tcp_host(endpoint))


def tcp_host(endpoint: str) -> str:
    """The host part of a `tcp://HOST:PORT` endpoint (brackets of IPv6 removed)."""
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"gateway.tcp must be a tcp:// endpoint, got {endpoint!r}")
    rest = endpoint[len("tcp://"):]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port:
        raise ValueError(f"gateway.tcp must be tcp://HOST:PORT, got {endpoint!r}")
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # "*", an interface name, a host name: not provably loopback


def check_setting(section: str, key: str, value: Any) -> Any:
    """One value through its rule: the value to use, or ConfigError naming the key."""
    kind = _SECTIONS.get(section)
    rule = next((f.metadata["rule"] for f in dataclasses.fields(kind) if f.name == key),
                None) if kind else None
    if rule is None:
        raise ConfigError(f"unknown setting {section}.{key}", f"{section}.{key}")
    try:
        return rule(value)
    except ValueError as exc:
        raise ConfigError(f"{section}.{key}: {exc}", f"{section}.{key}", str(exc)) from None


_SECTIONS: dict[str, type] = {
    "node": NodeSettings, "transport": TransportSettings, "dht": DhtSettings,
    "gossip": GossipSettings, "storage": StorageSettings, "gateway": GatewaySettings}


@dataclass(frozen=True)
class Settings:
    node: NodeSettings
    transport: TransportSettings
    dht: DhtSettings
    gossip: GossipSettings
    storage: StorageSettings
    gateway: GatewaySettings

    @classmethod
    def from_mapping(cls, merged: Mapping[str, Mapping[str, Any]]) -> "Settings":
        """Check a complete configuration (default.toml with the home's file over it,
        types already matching the defaults'); ConfigError names the first bad key."""
        sections = {}
        for section, kind in _SECTIONS.items():
            table = merged.get(section, {})
            values = {}
            for f in dataclasses.fields(kind):
                if f.name not in table:
                    raise ConfigError(f"{section}.{f.name}: missing", f"{section}.{f.name}")
                values[f.name] = check_setting(section, f.name, table[f.name])
            extra = set(table) - set(values)
            if extra:
                raise ConfigError(f"unknown setting {section}.{sorted(extra)[0]}")
            sections[section] = kind(**values)  # __post_init__: rules between keys
        extra = set(merged) - set(_SECTIONS)
        if extra:
            raise ConfigError(f"unknown section [{sorted(extra)[0]}]")
        return cls(**sections)

    def to_mapping(self) -> dict[str, dict[str, Any]]:
        """As TOML tables (tuples as lists), e.g. to write a config file."""
        return {name: {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(getattr(self, name)).items()}
                for name in _SECTIONS}
