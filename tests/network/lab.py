"""A NAT lab in network namespaces: an internet, a public relay and two home networks.

    internet (ns "p2pm-nat-<tag>-inet": bridge br0, 198.18.0.0/24)
      |-- relay     198.18.0.2            public node: relay service, AutoNAT server
      |-- router r1 198.18.0.11 | 198.19.1.1 -- h1 198.19.1.2
      `-- router r2 198.18.0.12 | 198.19.2.1 -- h2 198.19.2.2

Only the benchmark-test ranges are used (198.18.0.0/24 for the internet, 198.19.N.0/24
for LANs), every veth is created inside the namespaces (nothing appears in the host's
namespace), and nothing routes out of the lab. A router behaves like a home router:
MASQUERADE (port preserving, endpoint-independent mapping: hole-punchable) or
MASQUERADE --random-fully (a new port per destination: symmetric), FORWARD dropping
what is not a reply, and INPUT on the WAN side dropping unsolicited packets (else the
router answers early punch packets with RST). A port forward is DNAT plus a FORWARD
accept for DNAT'ed connections.

Nodes are real p2pm nodes (`p2pm init` + `p2pm up`, all actors under supervisord) run
with `ip netns exec`; their homes are short folders under /tmp, and the test process
talks to them over their ipc sockets, which are files and so reachable from any
namespace. `Lab.close()` stops the nodes, kills whatever still runs in the lab's
namespaces, and deletes the namespaces; `remove_leftovers()` does that for namespaces
a crashed run left behind. A namespace's name carries the pid of the test process that
made it, so that labs of test runs going on at the same time are left alone.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from p2pm.common import config as configmod
from p2pm.common.home import Home
from tests.helpers import Node, clean_env, destroy_home, make_home

# Namespaces of this lab; leftovers are cleared by this prefix only, so that a run
# never touches the namespaces (or processes) of another lab running on the machine.
PREFIX = "p2pm-nat-"
PORT = 4001
INET = "198.18.0"
RELAY_IP = f"{INET}.2"


def lab_missing() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "network lab tests need root with CAP_NET_ADMIN (they build namespaces)"
    for tool in ("ip", "iptables"):
        if shutil.which(tool) is None:
            return f"network lab tests need {tool} (apt-get install iproute2 iptables)"
    probe = f"{PREFIX}probe-{uuid.uuid4().hex[:6]}"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot create network namespaces here: {made.stderr.strip()}"
    return None


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")
    return proc


def _kill_ns_processes(ns: str) -> None:
    pids = sh("ip", "netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def remove_leftovers() -> None:
    """Delete namespaces an earlier run left behind (and what still runs in them)."""
    listing = sh("ip", "netns", "list", check=False).stdout
    for line in listing.splitlines():
        ns = line.split()[0] if line.split() else ""
        if ns.startswith(PREFIX) and not _owner_alive(ns):
            _kill_ns_processes(ns)
            sh("ip", "netns", "del", ns, check=False)


def _owner_alive(ns: str) -> bool:
    """Whether the test process named in `ns` (PREFIX<pid>-<tag>-<role>) still runs."""
    try:
        pid = int(ns[len(PREFIX):].split("-")[0])
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


@dataclass
class LabNode:
    """A p2pm node running inside a namespace."""

    name: str
    ns: str
    ip: str
    node: Node

    @property
    def peer_id(self) -> str:
        return self.node.peer_id

    @property
    def addr(self) -> str:
        return f"/ip4/{self.ip}/tcp/{PORT}/p2p/{self.peer_id}"

    def call(self, method: str, params: dict[str, Any] | None = None, actor: str = "transport",
             timeout: float = 5.0) -> Any:
        return self.node.call(actor, method, params, timeout=timeout, retries=1)

    def status(self) -> dict[str, Any]:
        return self.call("sys.status")

    def peer(self, peer_id: str) -> dict[str, Any] | None:
        for entry in self.call("peers"):
            if entry["peer_id"] == peer_id:
                return entry
        return None


@dataclass
class Lab:
    nat1: str = "easy"  # easy | symmetric
    nat2: str = "easy"
    forward1: bool = False  # a port forward to h1 on r1
    tag: str = field(default_factory=lambda: f"{os.getpid()}-{uuid.uuid4().hex[:5]}")
    namespaces: list[str] = field(default_factory=list)
    homes: list[Home] = field(default_factory=list)
    nodes: dict[str, LabNode] = field(default_factory=dict)

    def ns(self, role: str) -> str:
        return f"{PREFIX}{self.tag}-{role}"

    def ns_exec(self, role: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return sh("ip", "netns", "exec", self.ns(role), *argv)

    # -- the network -------------------------------------------------------------------
    def build(self) -> Lab:
        for role in ("inet", "relay", "r1", "h1", "r2", "h2"):
            sh("ip", "netns", "add", self.ns(role))
            self.namespaces.append(self.ns(role))
            sh("ip", "-n", self.ns(role), "link", "set", "lo", "up")
        inet = self.ns("inet")
        sh("ip", "-n", inet, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", inet, "link", "set", "br0", "up")
        self._wire("relay", "eth0", RELAY_IP, 24)
        for n in (1, 2):
            router, host = f"r{n}", f"h{n}"
            self._wire(router, "wan", f"{INET}.1{n}", 24)
            lan_net = f"198.19.{n}"
            sh("ip", "-n", self.ns(router), "link", "add", "lan", "type", "veth", "peer",
               "name", "eth0", "netns", self.ns(host))
            sh("ip", "-n", self.ns(router), "addr", "add", f"{lan_net}.1/24", "dev", "lan")
            sh("ip", "-n", self.ns(router), "link", "set", "lan", "up")
            sh("ip", "-n", self.ns(host), "addr", "add", f"{lan_net}.2/24", "dev", "eth0")
            sh("ip", "-n", self.ns(host), "link", "set", "eth0", "up")
            sh("ip", "-n", self.ns(host), "route", "add", "default", "via", f"{lan_net}.1")
            self.ns_exec(router, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            nat = self.nat1 if n == 1 else self.nat2
            self._home_router(router, nat, f"{lan_net}.2" if n == 1 and self.forward1 else None)
        return self

    def _wire(self, role: str, dev: str, ip: str, prefix: int) -> None:
        """A veth from `role`'s namespace to the internet bridge."""
        port = f"p-{role}"
        sh("ip", "-n", self.ns(role), "link", "add", dev, "type", "veth", "peer", "name",
           port, "netns", self.ns("inet"))
        sh("ip", "-n", self.ns("inet"), "link", "set", port, "master", "br0")
        sh("ip", "-n", self.ns("inet"), "link", "set", port, "up")
        sh("ip", "-n", self.ns(role), "addr", "add", f"{ip}/{prefix}", "dev", dev)
        sh("ip", "-n", self.ns(role), "link", "set", dev, "up")

    def _home_router(self, router: str, nat: str, forward_to: str | None) -> None:
        ipt = ["iptables", "-w"]
        masq = ["-t", "nat", "-A", "POSTROUTING", "-o", "wan", "-j", "MASQUERADE"]
        if nat == "symmetric":
            masq.append("--random-fully")
        elif nat != "easy":
            raise ValueError(f"unknown NAT kind {nat!r}")
        self.ns_exec(router, *ipt, *masq)
        self.ns_exec(router, *ipt, "-P", "FORWARD", "DROP")
        self.ns_exec(router, *ipt, "-A", "FORWARD", "-i", "lan", "-o", "wan", "-j", "ACCEPT")
        self.ns_exec(router, *ipt, "-A", "FORWARD", "-i", "wan", "-o", "lan", "-m",
                     "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        if forward_to is not None:
            self.ns_exec(router, *ipt, "-t", "nat", "-A", "PREROUTING", "-i", "wan", "-p",
                         "tcp", "--dport", str(PORT), "-j", "DNAT", "--to-destination",
                         f"{forward_to}:{PORT}")
            self.ns_exec(router, *ipt, "-A", "FORWARD", "-i", "wan", "-o", "lan", "-m",
                         "conntrack", "--ctstate", "DNAT", "-j", "ACCEPT")
        self.ns_exec(router, *ipt, "-A", "INPUT", "-i", "wan", "-m", "conntrack",
                     "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
        self.ns_exec(router, *ipt, "-A", "INPUT", "-i", "wan", "-j", "DROP")

    # -- nodes -------------------------------------------------------------------------
    def p2pm(self, role: str, home: Home, *args: str,
             timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
        argv = ["ip", "netns", "exec", self.ns(role), sys.executable, "-m", "p2pm.common.cli",
                "--home", str(home.root), *args]
        proc = subprocess.run(argv, env=clean_env(), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"p2pm {' '.join(args)} in {role} exited {proc.returncode}: "
                               f"{proc.stderr.strip()[-2000:]}")
        return proc

    def init_node(self, role: str, ip: str, transport: dict[str, Any]) -> LabNode:
        home = make_home()
        self.homes.append(home)
        args = ["--json", "init", "--no-passphrase", "--listen", f"/ip4/0.0.0.0/tcp/{PORT}"]
        peer_id = orjson.loads(self.p2pm(role, home, *args).stdout)["peer_id"]
        cfg = configmod.load_file(home.config_file)
        cfg.setdefault("transport", {}).update(transport)
        home.config_file.write_text(configmod.dump(cfg))
        node = LabNode(role, self.ns(role), ip, Node(home=home, peer_id=peer_id, up_output={}))
        self.nodes[role] = node
        return node

    def up(self, *roles: str) -> None:
        from concurrent.futures import ThreadPoolExecutor

        def one(role: str) -> None:
            node = self.nodes[role]
            out = self.p2pm(role, node.node.home, "--json", "up", "--timeout", "60")
            node.node.up_output = orjson.loads(out.stdout)

        with ThreadPoolExecutor(len(roles)) as pool:
            list(pool.map(one, roles))

    def start_standard(self, **node_settings: Any) -> tuple[LabNode, LabNode, LabNode]:
        """The relay and both home nodes, configured for quick verdicts, all up."""
        fast = {"autonat_dial_timeout_s": 2.0, "autonat_retry_s": 1.0, **node_settings}
        relay = self.init_node("relay", RELAY_IP, {"relay_service": True, **fast})
        homes = []
        for n in (1, 2):
            homes.append(self.init_node(f"h{n}", f"198.19.{n}.2", {
                "bootstrap": [relay.addr], "relays": [relay.addr], **fast}))
        self.up("relay", "h1", "h2")
        return relay, homes[0], homes[1]

    def log_lines(self, role: str, *words: str) -> str:
        """The transport log lines of a node that mention any of `words` (for failure
        messages: the lab is gone once the test ends)."""
        path = self.nodes[role].node.home.root / "logs" / "transport.log"
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines if any(w in line for w in words))[-4000:]

    def stop_node(self, role: str) -> None:
        node = self.nodes[role]
        self.p2pm(role, node.node.home, "down", "--timeout", "10")

    def start_node(self, role: str) -> None:
        self.up(role)

    # -- teardown ----------------------------------------------------------------------
    def close(self) -> None:
        for home in self.homes:
            try:
                destroy_home(home)
            except Exception:
                shutil.rmtree(home.root, ignore_errors=True)
        for ns in reversed(self.namespaces):
            _kill_ns_processes(ns)
            sh("ip", "netns", "del", ns, check=False)
        self.namespaces.clear()


def home_of(node: LabNode) -> Path:
    return node.node.home.root
