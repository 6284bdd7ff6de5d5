"""`p2pm demo`: a small local network that shows the whole messenger working.

In a temporary folder it starts four full nodes, each under its own supervisord with
the default configuration: a bootstrap node, and alice, bob and carol, who know only
the bootstrap node's address. Then it plays a scripted conversation through each node's
gateway (exactly what the chat commands call) and checks every step:

  alice finds bob through the DHT by his peer ID alone; bob adds alice from her invite;
  their safety numbers match; they exchange direct messages with delivery receipts;
  alice opens a room that bob and carol join, and all three chat; bob's node goes down
  and misses messages; it comes back and catches up.

Each step prints its time; the first that fails ends the demo with exit 1, and
nothing is faked: a step whose actor cannot do it
yet fails. Every node is stopped and the folder removed on every exit path, Ctrl-C
included, unless --keep leaves them running (and says how to attach to each).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import click
import orjson

from .. import errors
from .. import supervisor as supmod
from ..home import Home
from .base import Ctx, main
from .chat import format_message, gateway

T = TypeVar("T")
LISTEN = "/ip4/127.0.0.1/tcp/0"  # the demo network stays on this machine
UP_TIMEOUT = 60.0
STEP_TIMEOUT = 30.0  # a step that has not happened by then has failed
NAMES = ("alice", "bob", "carol")
ROOM = "demo-room"


class StepFailed(Exception):
    pass


@dataclass
class DemoNode:
    name: str
    home: Home
    peer_id: str = ""

    def call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        try:
            return gateway(self.home, method, params, retries=9)
        except errors.BusError as exc:
            raise StepFailed(f"{self.name}: {method} failed: {exc.message} ({exc.code})") \
                from None


@dataclass
class Step:
    name: str
    ok: bool | None = None  # None: not run
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Demo:
    root: Path
    as_json: bool
    started: float = field(default_factory=time.monotonic)
    steps: list[Step] = field(default_factory=list)
    transcript: list[str] = field(default_factory=list)
    nodes: dict[str, DemoNode] = field(default_factory=dict)

    def say(self, text: str) -> None:
        if not self.as_json:
            click.echo(text)

    @contextmanager
    def step(self, name: str) -> Iterator[Step]:
        step = Step(name)
        self.steps.append(step)
        t0 = time.monotonic()
        self.say(f"[{t0 - self.started:6.1f}s] {name} ...")
        try:
            yield step
        except StepFailed as exc:
            step.ok, step.detail = False, str(exc)
            raise
        finally:
            step.seconds = round(time.monotonic() - t0, 3)
        step.ok = True
        self.say(f"         ok in {step.seconds:.2f}s" + (f": {step.detail}" if step.detail
                                                           else ""))

    def wait(self, condition: Callable[[], T], what: str,
             timeout: float = STEP_TIMEOUT) -> T:
        deadline = time.monotonic() + timeout
        last_error = ""
        while True:
            try:
                value = condition()
                if value:
                    return value
            except StepFailed as exc:
                last_error = f" (last error: {exc})"
            if time.monotonic() > deadline:
                raise StepFailed(f"{what}: not within {timeout:g}s{last_error}")
            time.sleep(0.1)

    def note(self, who: str, text: str) -> None:
        line = f"{time.monotonic() - self.started:6.1f}s  {who}: {text}"
        self.transcript.append(line)
        self.say(f"   {line}")

    def names(self) -> dict[str, str]:
        return {n.peer_id: n.name for n in self.nodes.values() if n.peer_id}


# -- running nodes -------------------------------------------------------------------


def _p2pm(home: Home, *args: str, timeout: float = UP_TIMEOUT + 30) -> Any:
    proc = subprocess.run([sys.executable, "-m", "p2pm.common.cli", "--home", str(home.root),
                           "--json", *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL,
                          env=supmod.supervisord_env(home))
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise StepFailed(f"p2pm {args[0]} in {home.root.name}: {why}")
    return orjson.loads(proc.stdout)


def _init_up(node: DemoNode, bootstrap: list[str]) -> None:
    args = ["init", "--no-passphrase", "--listen", LISTEN]
    for addr in bootstrap:
        args += ["--bootstrap", addr]
    node.peer_id = _p2pm(node.home, *args)["peer_id"]
    _p2pm(node.home, "up", "--timeout", str(UP_TIMEOUT))


def _stop_all(homes: list[Home]) -> None:
    def stop(home: Home) -> None:
        try:
            supmod.stop(home, timeout=10)
        except supmod.SupervisorError:
            pass
        leftovers = list(supmod.actor_pids(home).values())
        for pid in leftovers:
            supmod.kill_tree(pid)
        supmod.wait_gone(leftovers, 5)

    with ThreadPoolExecutor(max(1, len(homes))) as pool:
        list(pool.map(stop, homes))


# -- the script ----------------------------------------------------------------------


def _delivered(node: DemoNode, message_id: str) -> bool:
    return node.call("message_state", {"id": message_id})["state"] == "delivered"


def _has(node: DemoNode, conversation: str, message_ids: list[str]) -> bool:
    seen = {m["id"] for m in node.call("history", {"conversation": conversation,
                                                   "limit": 200})}
    return all(mid in seen for mid in message_ids)


def _send(demo: Demo, node: DemoNode, method: str, where: str, text: str) -> str:
    key = "contact" if method == "send" else "conversation"
    got = node.call(method, {key: where, "text": text})
    demo.note(f"{node.name} -> {where}", text)
    return str(got["id"])


def play(demo: Demo) -> None:
    boot = DemoNode("bootstrap", Home(demo.root / "boot"))
    demo.nodes = {n: DemoNode(n, Home(demo.root / n)) for n in NAMES}
    alice, bob, carol = (demo.nodes[n] for n in NAMES)

    with demo.step("start the bootstrap node"):
        _init_up(boot, [])
        boot_addrs = _p2pm(boot.home, "id")["addrs"]
        if not boot_addrs:
            raise StepFailed("the bootstrap node has no address")
        demo.nodes["bootstrap"] = boot
    with demo.step("start alice, bob and carol, who know only the bootstrap node"):
        with ThreadPoolExecutor(len(NAMES)) as pool:
            list(pool.map(lambda n: _init_up(n, boot_addrs[:1]), (alice, bob, carol)))
        for n in (alice, bob, carol):
            demo.say(f"           {n.name:<6} {n.peer_id}")

    with demo.step("alice finds bob through the DHT by his peer ID alone"):
        found = demo.wait(lambda: alice.call("find_peer", {"peer_id": bob.peer_id}),
                          "alice's DHT lookup of bob")
        alice.call("contact_add", {"name": "bob", "invite": bob.peer_id})
        found_addrs = found.get("addrs") or []
        step_detail = f"{len(found_addrs)} address(es), e.g. {found_addrs[0]}" \
            if found_addrs else "no addresses"
        demo.steps[-1].detail = step_detail
    with demo.step("bob adds alice from her invite; their safety numbers match"):
        inv = alice.call("invite", {"name": "alice"})["invite"]
        bob.call("contact_add", {"name": "alice", "invite": inv})
        a = alice.call("contact_verify", {"name": "bob"})["safety_number"]
        b = bob.call("contact_verify", {"name": "alice"})["safety_number"]
        if a != b:
            raise StepFailed(f"safety numbers differ: {a} / {b}")
        demo.steps[-1].detail = a

    with demo.step("direct messages, each delivered with a receipt"):
        bob.call("history", {"conversation": "alice"})  # bob opens the chat too
        first = _send(demo, alice, "send", "bob", "Hi Bob! I found you by your peer ID.")
        demo.wait(lambda: _has(bob, "alice", [first]), "bob receiving alice's message")
        demo.wait(lambda: _delivered(alice, first), "alice's delivery receipt")
        reply = _send(demo, bob, "send", "alice", "Hi Alice, got it. Receipts work!")
        demo.wait(lambda: _has(alice, "bob", [reply]), "alice receiving bob's reply")
        demo.wait(lambda: _delivered(bob, reply), "bob's delivery receipt")

    with demo.step("alice opens a room; bob and carol join it from its invite"):
        room = alice.call("room_create", {"name": ROOM})
        for node in (bob, carol):
            node.call("room_join", {"invite": room["invite"]})
        rid = room["id"]
        demo.steps[-1].detail = f"room {rid}"
    with demo.step("all three chat in the room"):
        posts = [_send(demo, alice, "post", ROOM, "Welcome to the room!"),
                 _send(demo, bob, "post", ROOM, "Hello from bob."),
                 _send(demo, carol, "post", ROOM, "Carol here, hi both.")]
        for node in (alice, bob, carol):
            demo.wait(lambda node=node: _has(node, rid, posts),
                      f"{node.name} seeing every room message")

    with demo.step("bob's node goes down"):
        _p2pm(bob.home, "down")
    with demo.step("alice and carol post while bob is away"):
        missed = [_send(demo, alice, "post", ROOM, "Bob is offline, he'll miss this..."),
                  _send(demo, carol, "post", ROOM, "...and this.")]
        for node in (alice, carol):
            demo.wait(lambda node=node: _has(node, rid, missed),
                      f"{node.name} seeing the room messages")
    with demo.step("bob's node comes back and catches up on what he missed"):
        _p2pm(bob.home, "up", "--timeout", str(UP_TIMEOUT))
        demo.wait(lambda: _has(bob, rid, missed), "bob catching up")
        for mid in missed[:1]:
            demo.wait(lambda mid=mid: _delivered(alice, mid),
                      "alice's receipt for the message bob missed")

    demo.say("\nthe room as bob sees it now:")
    names = demo.names()
    for m in bob.call("history", {"conversation": ROOM, "limit": 50}):
        demo.say("  " + format_message({**m, "author_name": names.get(m["author"], "")}))


# -- the command ---------------------------------------------------------------------


@main.command()
@click.option("--keep", is_flag=True,
              help="Leave the nodes running at the end and print how to attach to each.")
@click.option("--dir", "parent", type=click.Path(path_type=Path, file_okay=False,
                                                exists=True), default=Path("/tmp"),
              show_default=True,
              help="Where to make the demo's folder (a short path: unix socket paths are "
                   "limited to 107 bytes).")
@click.pass_obj
def demo(obj: Ctx, keep: bool, parent: Path) -> None:
    """Start a local network of four nodes and play a checked conversation on it."""
    root = Path(tempfile.mkdtemp(prefix="p2pm-demo-", dir=parent.resolve()))
    run = Demo(root, obj.json)
    run.say(f"p2pm demo in {root}")
    failed: Step | None = None
    interrupted = False
    # Ctrl-C stops the demo cleanly, unless this process was started with SIGINT
    # ignored (a background job of a non-interactive shell, nohup): that is the
    # starter saying keyboard interrupts are not for it, and the demo keeps to it.
    # SIGTERM always stops it as Ctrl-C does.
    previous_int = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        play(run)
    except StepFailed:
        failed = run.steps[-1]
    except KeyboardInterrupt:
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # cleanup must not be interrupted
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if not keep or interrupted:
            _stop_all([Home(p) for p in root.iterdir() if p.is_dir()])
            shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous)
    total = round(time.monotonic() - run.started, 3)
    ok = failed is None and not interrupted
    if obj.json:
        click.echo(orjson.dumps({
            "ok": ok, "seconds": total, "root": str(root), "kept": keep and not interrupted,
            "steps": [s.__dict__ for s in run.steps], "transcript": run.transcript}).decode())
    else:
        if failed is not None:
            click.echo(f"\nFAILED: {failed.name}\n  {failed.detail}", err=True)
        if interrupted:
            click.echo("\ninterrupted; every node stopped and the folder removed", err=True)
        click.echo(f"\n{sum(1 for s in run.steps if s.ok)} steps passed"
                   + (", 1 failed" if failed else "") + f" in {total:.1f}s")
        if keep and not interrupted:
            p2pm = _p2pm_command()
            click.echo("the nodes keep running; attach to one with:")
            for node in run.nodes.values():
                click.echo(f"  {p2pm} --home {node.home.root} attach")
            click.echo(f"stop them all with: for h in {root}/*; do {p2pm} --home $h down; "
                       f"done; rm -rf {root}")
    if not ok:
        sys.exit(130 if interrupted else 1)


def _p2pm_command() -> str:
    """How to run p2pm again from any folder: `make demo` does not put it on PATH."""
    argv0 = Path(sys.argv[0])
    if argv0.name == "p2pm":
        return str(argv0.resolve()) if not shutil.which("p2pm") else "p2pm"
    return f"{sys.executable} -m p2pm.common.cli"


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
