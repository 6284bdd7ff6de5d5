"""Run one actor of a node as this process: what supervisord runs for each program,
and how a developer runs a patched actor in a terminal (`p2pm service dht`).

    python -m p2pm.common.service ACTOR [--home DIR]

SIGTERM is a clean stop from the first instant: until the actor's own handler is in
place (after seconds of imports on a busy machine), it exits 0 at once, so a stop
that comes while the actor starts leaves it stopped rather than killed by the signal
(which supervisord takes for a crash, and restarts).
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path
from typing import Any

from . import config as configmod
from .home import Home, default_home


def _stop_while_starting(_signum: int, _frame: Any) -> None:
    raise SystemExit(0)


def run(name: str, home: Home) -> int:
    signal.signal(signal.SIGTERM, _stop_while_starting)
    from p2pm.services import load_actor

    from .actor import run_actor_process
    from .log import setup_logging

    try:
        cfg = configmod.load(home)
        cls = load_actor(name)
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
