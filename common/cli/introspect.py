"""Looking into a running node: call any actor's method, show the node's identity and
addresses, and tap the events every actor publishes.

`call` exit codes: 0 result, 1 error reply, 2 malformed input, 3 no answer.
"""

from __future__ import annotations

import time
from typing import Any

import click
import orjson
import zmq

from .. import errors, wire
from ..home import ACTORS
from . import bus
from .base import EXIT_ERROR, EXIT_TIMEOUT, EXIT_USAGE, SECONDS, Ctx, fail, main
from .safe import inert, inert_json


def _bus_call(obj: Ctx, actor: str, method: str, params: dict[str, Any] | None = None,
              timeout: float = bus.CALL_TIMEOUT) -> Any:
    """A call whose failures end the command with the documented exit codes."""
    try:
        return bus.call(obj.home, actor, method, params, timeout=timeout)
    except errors.BusError as exc:
        code = EXIT_TIMEOUT if exc.code == errors.TIMEOUT else EXIT_ERROR
        fail(f"error {exc.code}: {exc.message}", code)
    except ValueError as exc:  # an endpoint path too long for a unix socket
        fail(str(exc), EXIT_USAGE)


@main.command()
@click.argument("actor", type=click.Choice(ACTORS))
@click.argument("method")
@click.argument("params_json", required=False, default="{}")
@click.option("--timeout", type=SECONDS, default=bus.CALL_TIMEOUT, show_default=True,
              help="Seconds per attempt (a few attempts are made).")
@click.pass_obj
def call(obj: Ctx, actor: str, method: str, params_json: str, timeout: float) -> None:
    """Call METHOD of ACTOR with PARAMS_JSON (an object) and print the result as JSON."""
    try:
        params = orjson.loads(params_json)
    except orjson.JSONDecodeError as exc:
        fail(f"PARAMS_JSON is not valid JSON: {exc}", EXIT_USAGE)
    if not isinstance(params, dict):
        fail("PARAMS_JSON must be a JSON object, like '{\"key\": 1}'", EXIT_USAGE)
    result = _bus_call(obj, actor, method, params, timeout)
    text = wire.dumps(result)  # bytes in the result become base64, as on the bus
    if not obj.json:
        text = orjson.dumps(orjson.loads(text), option=orjson.OPT_INDENT_2)
    click.echo(inert_json(text.decode()))


@main.command(name="id")
@click.pass_obj
def id_(obj: Ctx) -> None:
    """The node's peer ID and the addresses other peers reach it at."""
    peer_id = _bus_call(obj, "keystore", "identity")["peer_id"]
    try:
        addrs = bus.call(obj.home, "transport", "addrs")["addrs"]
    except errors.BusError as exc:
        # A transport without an address book yet has none to show.
        if exc.code != errors.UNKNOWN_METHOD:
            fail(f"error {exc.code}: {exc.message}",
                 EXIT_TIMEOUT if exc.code == errors.TIMEOUT else EXIT_ERROR)
        addrs = []
    obj.out({"peer_id": peer_id, "addrs": addrs},
            "\n".join([f"peer ID {peer_id}", *(f"  {a}" for a in addrs)]))


def _wants_heartbeats(prefix: str) -> bool:
    """Heartbeats (one a second from every actor) drown everything else, so they are
    shown only to a prefix that names them: `gossip.sys` or `gossip.sys.heartbeat`."""
    parts = prefix.split(".")
    return len(parts) >= 2 and parts[1] == "sys"


def _format_event(topic: str, event: dict[str, Any], as_json: bool) -> str:
    if as_json:
        return inert_json(wire.dumps({"topic": topic, **event}).decode())
    return inert(f"{topic}  {event.get('epoch')}:{event.get('seq')}  "
                 f"{wire.dumps(event.get('data')).decode()}")


@main.command()
@click.argument("topic_prefix", required=False, default="")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="Exit after this many events.")
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Exit after this long, whatever arrived.")
@click.pass_obj
def tap(obj: Ctx, topic_prefix: str, count: int | None, seconds: float | None) -> None:
    """Print the events of every actor live, optionally only those under TOPIC_PREFIX
    (dotted, like `transport.peer`). Heartbeats are hidden unless the prefix names them
    (`keystore.sys`)."""
    endpoints = obj.home.endpoints()
    heartbeats = _wants_heartbeats(topic_prefix)
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    try:
        for actor in ACTORS:
            sub.connect(endpoints.events(actor))
    except ValueError as exc:
        sub.close()
        fail(str(exc), EXIT_USAGE)
    sub.setsockopt(zmq.SUBSCRIBE, topic_prefix.encode())
    deadline = time.monotonic() + seconds if seconds is not None else None
    shown = 0
    try:
        while count is None or shown < count:
            wait_ms = 200
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                wait_ms = min(wait_ms, int(left * 1000) + 1)
            if not sub.poll(wait_ms):
                continue
            frames = sub.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                topic = frames[0].decode()
                event = wire.loads(frames[1])
            except (UnicodeDecodeError, orjson.JSONDecodeError):
                continue
            if not isinstance(event, dict):
                continue
            if topic.endswith(".sys.heartbeat") and not heartbeats:
                continue
            click.echo(_format_event(topic, event, obj.json))
            shown += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.close()
