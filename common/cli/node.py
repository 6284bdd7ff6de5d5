"""Node lifecycle commands."""

from __future__ import annotations

import sys

import click

from .base import Ctx, main


@main.command()
@click.argument("actor")
@click.pass_obj
def service(obj: Ctx, actor: str) -> None:
    """Run one ACTOR of the node in the foreground (what supervisord runs)."""
    from ..service import run

    sys.exit(run(actor, obj.home))
