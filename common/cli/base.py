"""The root command group and what every command shares: --home and --json.

`--json` is accepted both before the command (`p2pm --json status`) and after it
(`p2pm status --json`): every command registered on `main` gets the option from
`Command`, so a module adding commands does nothing special for it.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from ..home import Home, default_home
from .safe import inert_json

# Exit codes shared by the commands (click itself uses 2 for a usage error).
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3


class Ctx:
    def __init__(self, home: Path, as_json: bool) -> None:
        self.home = Home(home.expanduser().resolve())
        self.json = as_json

    def out(self, data: Any, text: str) -> None:
        """Print `data` as one JSON document with --json, else the human `text` (in
        which the caller made peer-supplied strings inert)."""
        if self.json:
            click.echo(inert_json(orjson.dumps(data, default=_jsonable).decode()))
        else:
            click.echo(text)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """One clear line on stderr and a non-zero exit."""
    click.echo(f"p2pm: {message}", err=True)
    sys.exit(code)


def _late_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        obj = ctx.find_object(Ctx)
        if obj is not None:
            obj.json = True


class Command(click.Command):
    """A command that also takes `--json` after its name."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.params.append(click.Option(
            ["--json"], is_flag=True, expose_value=False, is_eager=True,
            callback=_late_json, help="Machine-readable JSON output."))


class Group(click.Group):
    command_class = Command
    group_class = type  # sub-groups are Groups too, so their commands get --json


@click.group(cls=Group)
@click.option("--home", type=click.Path(path_type=Path), envvar="P2PM_HOME", default=None,
              help="The node's home folder (env P2PM_HOME, default ~/.p2pm).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, as_json: bool) -> None:
    """p2pm: a serverless peer-to-peer messenger node."""
    ctx.obj = Ctx(home or default_home(), as_json)
