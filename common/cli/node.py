"""Node lifecycle commands: init, up, down, status, service.

`up` derives the identity's unlock key from the passphrase here, in the CLI, and hands
it to supervisord in its environment only; nothing secret is written to the home
beyond the encrypted identity and the actors' keystore tokens (run/tokens/, 0600,
renewed by each `up`), each of which lets a process of the same user ask the keystore
only what that actor may (README: key custody).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from .. import config as configmod
from ..settings import ConfigError, check_setting
from .. import actor_tokens, errors
from .. import supervisor as supmod
from ..home import ACTORS, Home
from . import bus
from . import startup
from .base import EXIT_ERROR, EXIT_USAGE, SECONDS, Ctx, fail, main

PASSPHRASE_ENV = "P2PM_PASSPHRASE"
UP_TIMEOUT = 60.0


# -- passphrases ---------------------------------------------------------------------


def _read_passphrase_file(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read passphrase file {path}: {getattr(exc, 'strerror', None) or exc}",
             EXIT_USAGE)
    # Editors add a final newline; the passphrase is the first line, as typed.
    passphrase = text.split("\n", 1)[0].rstrip("\r")
    if not passphrase:
        fail(f"passphrase file {path} is empty", EXIT_USAGE)
    return passphrase


def _passphrase(path: Path | None, confirm: bool) -> str:
    """From --passphrase-file, else $P2PM_PASSPHRASE, else a hidden prompt."""
    if path is not None:
        return _read_passphrase_file(path)
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if not sys.stdin.isatty():
        fail("no passphrase: give --passphrase-file, set P2PM_PASSPHRASE, or run in a "
             "terminal", EXIT_USAGE)
    passphrase = click.prompt("Passphrase", hide_input=True, confirmation_prompt=confirm,
                              err=True)
    if not passphrase:
        fail("empty passphrase; use --no-passphrase for an unprotected identity", EXIT_USAGE)
    return passphrase


# -- init ----------------------------------------------------------------------------


def _check_multiaddrs(option: str, values: tuple[str, ...], key: str) -> list[str]:
    """The addresses of a repeatable option, by the rule of the setting it fills
    (settings.py), so init refuses exactly what the node would."""
    try:
        return list(check_setting("transport", key, list(values)))
    except ConfigError as exc:
        fail(f"{option}: {exc.reason}; nothing written", EXIT_USAGE)


@main.command()
@click.option("--no-passphrase", is_flag=True,
              help="Store the identity unprotected (anyone who reads the file has the key).")
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the passphrase from the first line of this file.")
@click.option("--listen", multiple=True, metavar="MULTIADDR",
              help="Listen address (repeatable); default from config/default.toml.")
@click.option("--bootstrap", multiple=True, metavar="MULTIADDR",
              help="Peer to dial at start, ending in /p2p/<peer id> (repeatable).")
@click.pass_obj
def init(obj: Ctx, no_passphrase: bool, passphrase_file: Path | None,
         listen: tuple[str, ...], bootstrap: tuple[str, ...]) -> None:
    """Create a node: its home, config.toml and identity. Prints the peer ID."""
    from .. import identity

    home = obj.home
    # Everything is checked before anything is written: bad input changes nothing.
    if home.identity_file.exists() or home.config_file.exists():
        fail(f"{home.root} already holds a node; refusing to re-initialise it")
    if no_passphrase and passphrase_file is not None:
        fail("--no-passphrase and --passphrase-file exclude each other", EXIT_USAGE)
    overrides: dict[str, Any] = {}
    transport: dict[str, Any] = {}
    if listen:
        transport["listen"] = _check_multiaddrs("--listen", listen, "listen")
    if bootstrap:
        transport["bootstrap"] = _check_multiaddrs("--bootstrap", bootstrap, "bootstrap")
    if transport:
        overrides["transport"] = transport
    try:
        for actor in ACTORS:
            home.endpoints().events(actor)
    except ValueError as exc:  # too long for a unix socket path
        fail(str(exc), EXIT_USAGE)
    passphrase = None if no_passphrase else _passphrase(passphrase_file, confirm=True)

    try:
        home.ensure()
    except OSError as exc:
        fail(f"cannot make the home folder {home.root}: {exc.strerror}", EXIT_USAGE)
    try:
        peer_id = identity.create_identity(home.identity_file, passphrase)
    except identity.IdentityError as exc:
        fail(str(exc))
    fd = os.open(home.config_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("# This node's settings; anything not set here comes from p2pm's "
                "default.toml.\n" + configmod.dump(overrides))
    if no_passphrase:
        click.secho(f"warning: the identity in {home.identity_file} is NOT protected by a "
                    "passphrase; anyone who can read it can impersonate this node",
                    fg="yellow", err=True)
    obj.out({"peer_id": peer_id, "home": str(home.root)},
            f"initialised {home.root}\npeer ID {peer_id}")


# -- up ------------------------------------------------------------------------------


def _actor_rows(home: Home, sup: supmod.Supervisor | None,
               answers: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Each actor: supervisord's view combined with its own sys.status (asked now,
    unless the answers are given). Without a supervisord (actors started by honcho
    or by hand), the state is RUNNING for an actor whose process holds its lock."""
    procs = sup.processes() if sup is not None else {}
    if answers is None:
        answers = bus.statuses(home)
    # Locks after answers: an actor takes its lock before it binds, so one that answered
    # holds it now. Probed first, a starting actor could be seen without its lock and
    # then answer healthy a moment later: "STOPPED" next to healthy in one status.
    unsupervised = supmod.actor_pids(home) if sup is None else {}
    rows: dict[str, dict[str, Any]] = {}
    for name in ACTORS:
        info = procs.get(name)
        if info is not None:
            state, pid = info.state, info.pid
        else:
            state = "RUNNING" if name in unsupervised else "STOPPED"
            pid = unsupervised.get(name, 0)
        answer = answers[name]
        row: dict[str, Any] = {"state": state, "pid": pid}
        if isinstance(answer, dict):
            # The answering process may be one run by hand (`p2pm service`) while
            # supervisord's copy is stopped: its pid is the one that matters.
            row.update({k: v for k, v in answer.items() if k != "actor"})
            row["state"] = state
            row["supervised"] = bool(info and info.pid == answer.get("pid"))
        else:
            row["healthy"] = False
            row["supervised"] = bool(info and info.pid)
            row["error"] = answer.message
        rows[name] = row
    return rows


def _peer_id(home: Home) -> str | None:
    from .. import identity

    try:
        return str(bus.call(home, "keystore", "identity", timeout=0.5, retries=0)["peer_id"])
    except (errors.BusError, KeyError, TypeError):
        pass
    try:
        return identity.read_peer_id(home.identity_file)
    except identity.IdentityError:
        return None


def _unlock_key(home: Home, passphrase_file: Path | None) -> str | None:
    """The hex unlock key for a protected identity; None for an unprotected one."""
    from .. import identity

    try:
        if not identity.is_protected(home.identity_file):
            return None
        key = identity.derive_unlock_key(home.identity_file,
                                         _passphrase(passphrase_file, confirm=False))
    except identity.WrongPassphrase:
        fail(f"wrong passphrase for {home.identity_file}; nothing started")
    except identity.IdentityError as exc:
        fail(f"{exc}; nothing started")
    return key.hex()


@main.command()
@click.option("--passphrase-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Read the passphrase from the first line of this file.")
@click.option("--timeout", type=SECONDS, default=UP_TIMEOUT,
              show_default=True, help="Seconds to wait for every actor to be healthy.")
@click.pass_obj
def up(obj: Ctx, passphrase_file: Path | None, timeout: float) -> None:
    """Start the node under supervisord and wait until every actor is healthy.

    Either every actor ends up healthy, or nothing is left running: a bad setting
    starts nothing, and an actor that exits while starting (or one not healthy by
    the deadline) stops the whole node, with that actor's last error line."""
    home = obj.home
    if not home.identity_file.exists():
        fail(f"no node in {home.root}: run p2pm init first")
    sup = supmod.Supervisor(home)
    if sup.is_running():
        rows = _actor_rows(home, sup)
        sick = [f"{n} {r['state']}" for n, r in rows.items() if not r.get("healthy")]
        if sick:
            fail(f"node in {home.root} is already running, but not every actor is healthy "
                 f"({', '.join(sick)}); p2pm status shows why, p2pm down stops it")
        obj.out({"peer_id": _peer_id(home), "already_running": True, "actors": rows},
                f"node in {home.root} is already running")
        return
    strays = supmod.actor_pids(home)
    if strays:
        listed = ", ".join(f"{n} (pid {p})" for n, p in strays.items())
        fail(f"actors already run in {home.root} outside supervisord: {listed}; "
             "stop them or run p2pm down")
    try:
        configmod.load(home)
    except configmod.ConfigError as exc:
        fail(f"{exc}; nothing started", EXIT_USAGE)
    key = _unlock_key(home, passphrase_file)
    # Nothing of this node runs (checked above): the actors' keystore tokens of an
    # earlier run are dropped, and each actor and the keystore agree on fresh ones.
    actor_tokens.renew(home.endpoints())

    started = time.monotonic()
    logs = startup.LogTails(home)
    try:
        sup = supmod.start(home, key)
    except supmod.SupervisorError as exc:
        _stop_quietly(home)
        fail(f"{exc}; nothing left running")
    outcome = startup.wait_started(home, sup, timeout)
    elapsed = round(time.monotonic() - started, 3)
    if outcome.failed is not None:
        why = logs.last_error(outcome.failed) or outcome.detail
        _stop_quietly(home)
        fail(f"{outcome.failed} {outcome.how}: {why} (see {home.logs}/{outcome.failed}.log); "
             "the node was stopped")
    rows = _actor_rows(home, sup, outcome.answers)
    peer_id = _peer_id(home)
    obj.out({"peer_id": peer_id, "healthy_after_s": elapsed, "actors": rows},
            f"node {peer_id} up in {home.root}\nall {len(rows)} actors healthy after "
            f"{elapsed:.2f}s")


def _stop_quietly(home: Home) -> None:
    """Stop whatever a failed start left; a failure to stop is reported too."""
    try:
        supmod.stop(home, timeout=15)
    except supmod.SupervisorError as exc:
        click.echo(f"p2pm: {exc}", err=True)


# -- down ----------------------------------------------------------------------------


@main.command()
@click.option("--timeout", type=SECONDS, default=supmod.STOP_TIMEOUT, show_default=True,
              help="Seconds to wait for a clean stop before killing what is left.")
@click.pass_obj
def down(obj: Ctx, timeout: float) -> None:
    """Stop every actor and supervisord; returns once the processes are gone."""
    home = obj.home
    if supmod.supervisord_pid(home) is None and not supmod.actor_pids(home) \
            and not supmod.Supervisor(home).is_running():
        obj.out({"stopped": False, "killed": []}, f"node in {home.root} is not running")
        return
    try:
        killed = supmod.stop(home, timeout)
    except supmod.SupervisorError as exc:
        fail(str(exc))
    note = f" (killed {len(killed)} that did not stop)" if killed else ""
    obj.out({"stopped": True, "killed": killed}, f"node in {home.root} stopped{note}")


# -- status --------------------------------------------------------------------------


@main.command()
@click.pass_obj
def status(obj: Ctx) -> None:
    """Each actor's state under supervisord and its own health. Exits 0 only when
    every actor runs and is healthy; 1 otherwise (the table is shown all the same)."""
    home = obj.home
    sup: supmod.Supervisor | None = supmod.Supervisor(home, timeout=2.0)
    assert sup is not None
    if not sup.is_running():
        sup = None
        if not supmod.actor_pids(home):
            fail(f"node in {home.root} is not running (p2pm up starts it)")
    try:
        rows = _actor_rows(home, sup)
    except supmod.SupervisorError as exc:
        fail(str(exc))
    peer_id = _peer_id(home)
    lines = [f"node {peer_id}  home {home.root}"]
    if sup is None:
        lines.append("supervisord is not running in this home: these actors run without it "
                     "(honcho, p2pm service), and nothing restarts one that stops")
    lines.append(f"{'actor':<10} {'state':<16} {'pid':>7}  {'healthy':<7}  uptime")
    for name, row in rows.items():
        uptime = f"{row['uptime_s']:.1f}s" if "uptime_s" in row else "-"
        lines.append(f"{name:<10} {row['state']:<16} {row['pid'] or '-':>7}  "
                     f"{'yes' if row.get('healthy') else 'no':<7}  {uptime}")
    for name, row in rows.items():
        if row.get("problem"):
            lines.append(f"{name}: {row['problem']}")
    if "reachability" in rows.get("transport", {}):
        lines.append(f"reachability {rows['transport']['reachability']} (AutoNAT)")
    obj.out({"peer_id": peer_id, "home": str(home.root), "supervisord": sup is not None,
             "actors": rows}, "\n".join(lines))
    if not all(row.get("healthy") for row in rows.values()):
        sys.exit(EXIT_ERROR)


# -- service -------------------------------------------------------------------------


@main.command()
@click.argument("actor")
@click.pass_obj
def service(obj: Ctx, actor: str) -> None:
    """Run one ACTOR of the node in the foreground (what supervisord runs)."""
    from ..service import run

    sys.exit(run(actor, obj.home))
