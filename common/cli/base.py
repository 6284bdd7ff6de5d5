"""The root command group and what every command shares: --home and --json."""

from __future__ import annotations

from pathlib import Path

import click

from ..home import Home, default_home


class Ctx:
    def __init__(self, home: Path, as_json: bool) -> None:
        self.home = Home(home.expanduser().resolve())
        self.json = as_json


@click.group()
@click.option("--home", type=click.Path(path_type=Path), envvar="P2PM_HOME", default=None,
              help="The node's home folder (env P2PM_HOME, default ~/.p2pm).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, as_json: bool) -> None:
    """p2pm: a serverless peer-to-peer messenger node."""
    ctx.obj = Ctx(home or default_home(), as_json)
