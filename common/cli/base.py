"""The root command group and what every command shares: --home, --json, --version,
and how a command fails.

`--json` is accepted both before the command (`p2pm --json status`) and after it
(`p2pm status --json`): every command registered on `main` gets the option from
`Command`, so a module adding commands does nothing special for it.

Every failure is one line on stderr, `p2pm: ...`, and one of the exit codes below (the
README's table): a bad argument or option is 2 as click has it, but without click's
usage banner; an OS error no command expected (a home folder that cannot be made, a
file that cannot be read) is 1 with the OS's reason, never a traceback.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, NoReturn

import click
import orjson

from ..home import Home, default_home
from .safe import inert_json

# Exit codes shared by the commands (click itself uses 2 for a usage error).
EXIT_OK = 0
EXIT_ERROR = 1  # refused: an error reply, an unknown contact, a tampered invite
EXIT_USAGE = 2  # bad input: arguments, options, settings
EXIT_TIMEOUT = 3  # no answer: the node or the actor is down, or did not answer in time

class _Seconds(click.FloatRange):
    """Every --timeout: a positive number of seconds, at most a day (0 or less would
    give up at once, nan or inf make the bus wait forever)."""

    name = "seconds"

    def __init__(self) -> None:
        super().__init__(min=0, min_open=True, max=86400)

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


SECONDS = _Seconds()


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


class RootGroup(Group):
    """The `p2pm` group: runs a command and turns what escapes it into one line."""

    def main(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "p2pm"
            fail(f"{exc.format_message()} (see {where} --help)", exc.exit_code)
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)
        except click.Abort as exc:
            # click turns Ctrl-C into Abort; 130 is what a shell expects of it.
            if isinstance(exc.__cause__, KeyboardInterrupt):
                fail("interrupted", 130)
            fail("aborted", EXIT_ERROR)
        except OSError as exc:
            fail(_os_error(exc), EXIT_ERROR)
        sys.exit(code if isinstance(code, int) else EXIT_OK)


def _os_error(exc: OSError) -> str:
    """"cannot use /proc/x: Permission denied" rather than a traceback."""
    names = [n for n in (exc.filename, exc.filename2) if n is not None]
    what = f"cannot use {' -> '.join(map(str, names))}: " if names else ""
    return f"{what}{exc.strerror or exc}"


def _check_home(_ctx: click.Context, _param: click.Parameter,
                value: Path | None) -> Path | None:
    """A home must be a folder, or not exist yet (`init` makes it)."""
    if value is not None:
        path = value.expanduser()
        if path.exists() and not path.is_dir():
            raise click.BadParameter(f"{str(value)!r} exists and is not a folder")
        if str(value) == "":
            raise click.BadParameter("is empty")
    return value


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("p2pm")
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


def _show_version(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        click.echo(f"p2pm {_version()}")
        ctx.exit(0)


@click.group(cls=RootGroup)
@click.option("--home", type=click.Path(path_type=Path), envvar="P2PM_HOME", default=None,
              callback=_check_home,
              help="The node's home folder (env P2PM_HOME, default ~/.p2pm).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
@click.option("--version", is_flag=True, expose_value=False, is_eager=True,
              callback=_show_version, help="Print p2pm's version and exit.")
@click.pass_context
def main(ctx: click.Context, home: Path | None, as_json: bool) -> None:
    """p2pm: a serverless peer-to-peer messenger node."""
    ctx.obj = Ctx(home or default_home(), as_json)
