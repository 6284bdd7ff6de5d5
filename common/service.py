"""Run one actor of a node as this process: what supervisord runs for each program,
and how a developer runs a patched actor in a terminal (`p2pm service dht`).

    python -m p2pm.common.service ACTOR [--home DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import config as configmod
from .actor import run_actor_process
from .home import Home, default_home
from .log import setup_logging


def run(name: str, home: Home) -> int:
    from p2pm.services import load_actor

    try:
        cls = load_actor(name)
        cfg = configmod.load(home)
    except (ValueError, configmod.ConfigError) as exc:
        print(f"p2pm: {exc}", file=sys.stderr)
        return 2
    try:
        home.ensure()
    except OSError as exc:
        print(f"p2pm: cannot make the home folder {home.root}: {exc.strerror}", file=sys.stderr)
        return 2
    setup_logging(cfg.node.log_level)
    actor = cls(home, cfg)
    return run_actor_process(actor, home.endpoints())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="p2pm-service")
    parser.add_argument("actor")
    parser.add_argument("--home", type=Path, default=None)
    args = parser.parse_args(argv)
    return run(args.actor, Home((args.home or default_home()).expanduser().resolve()))


if __name__ == "__main__":
    sys.exit(main())
