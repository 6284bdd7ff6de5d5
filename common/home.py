"""A node's home folder and the bus endpoints inside it.

    $P2PM_HOME/
      config.toml        node configuration (written by `p2pm init`)
      identity.key       the encrypted identity (0600, keystore only)
      run/               0700: ipc sockets, locks, supervisord socket and pid
      logs/              one log per actor, plus supervisord's
      data/              SQLite database and other state

Several nodes run side by side on one machine because everything lives under the home.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

ACTORS = ("keystore", "storage", "transport", "dht", "gossip", "gateway")

# sun_path is 108 bytes on Linux; ipc endpoints longer than this cannot bind.
MAX_IPC_PATH = 107


def default_home() -> Path:
    return Path(os.environ.get("P2PM_HOME") or Path.home() / ".p2pm").expanduser()


@dataclass(frozen=True)
class Home:
    root: Path

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def config_file(self) -> Path:
        return self.root / "config.toml"

    @property
    def identity_file(self) -> Path:
        return self.root / "identity.key"

    @property
    def supervisor_sock(self) -> Path:
        return self.run / "supervisor.sock"

    def ensure(self) -> "Home":
        """Create the folders with their modes; tighten `run/` if it is too open."""
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        for sub, mode in ((self.run, 0o700), (self.logs, 0o700), (self.data, 0o700)):
            sub.mkdir(exist_ok=True, mode=mode)
            if sub.stat().st_mode & 0o077:
                os.chmod(sub, mode)
        return self

    def endpoints(self) -> "Endpoints":
        return Endpoints(f"ipc://{self.run}")


@dataclass(frozen=True)
class Endpoints:
    """Where each actor's ROUTER and PUB sockets live.

    `ipc://<home>/run` for real nodes; `inproc://<name>` to run several actors in one
    process (tests, simulations) with exactly the same code.
    """

    base: str

    @classmethod
    def inproc(cls, name: str) -> "Endpoints":
        return cls(f"inproc://{name}")

    def rpc(self, actor: str) -> str:
        return self._check(f"{self.base}/{actor}.rpc")

    def events(self, actor: str) -> str:
        return self._check(f"{self.base}/{actor}.events")

    def extra(self, actor: str, what: str) -> str:
        return self._check(f"{self.base}/{actor}.{what}")

    @property
    def run_dir(self) -> Path | None:
        return Path(self.base[len("ipc://"):]) if self.base.startswith("ipc://") else None

    def _check(self, ep: str) -> str:
        if ep.startswith("ipc://") and len(ep) - len("ipc://") > MAX_IPC_PATH:
            raise ValueError(
                f"home path too long for a unix socket ({ep}); choose a shorter --home"
            )
        return ep
