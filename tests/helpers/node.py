"""Real nodes for tests: a short home under /tmp, `p2pm init` + `p2pm up`, and a
cleanup that leaves no process and no folder behind on any exit path.

    def test_two_nodes(node_factory):
        a = node_factory()
        b = node_factory(bootstrap=[...])
        assert a.call("keystore", "identity")["peer_id"] == a.peer_id

Homes live in /tmp with a short name because ipc socket paths are limited to 107
bytes (pytest's tmp_path is far too deep).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import orjson
import trio
import zmq

from p2pm.common import supervisor as supmod
from p2pm.common.cli import bus
from p2pm.common.client import open_client
from p2pm.common.home import ACTORS, Home

# Variables a developer's shell may carry that would change what a test node does.
_ISOLATE = ("P2PM_HOME", "P2PM_PASSPHRASE", "P2PM_KEYSTORE_KEY")
UP_TIMEOUT = 60.0

T = TypeVar("T")


def p2pm_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "p2pm.common.cli", *args]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ISOLATE}
    env.update(extra)
    return env


def run_p2pm(home: Path | Home, *args: str, timeout: float = 90.0, check: bool = False,
             env: dict[str, str] | None = None,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `p2pm --home HOME ARGS...` to completion; text output captured."""
    root = home.root if isinstance(home, Home) else home
    proc = subprocess.run(p2pm_argv("--home", str(root), *args), env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout,
                          input=input, stdin=None if input is not None else subprocess.DEVNULL)
    if check and proc.returncode != 0:
        raise AssertionError(f"p2pm {' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
    return proc


def wait_for(condition: Callable[[], T], timeout: float, what: str,
             interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)


async def await_for(condition: Callable[[], Awaitable[T]], what: str, timeout: float = 20.0,
                    explain: Callable[[], Awaitable[str]] | None = None) -> T:
    """`wait_for` in a trio test, for an async `condition`: its first truthy value;
    after `timeout`, an AssertionError naming `what` and showing what `explain()`
    returns (the state worth seeing when a wait fails)."""
    with trio.move_on_after(timeout):
        while True:
            value = await condition()
            if value:
                return value
            await trio.sleep(0.05)
    detail = f"\n{await explain()}" if explain is not None else ""
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what}{detail}")


def make_home() -> Home:
    return Home(Path(tempfile.mkdtemp(prefix="p2pm-", dir="/tmp")))


def processes_under(root: Path) -> list[int]:
    """Processes whose command line names a path under `root`, or whose environment
    has P2PM_HOME there (a node's supervisord and actors, whoever started them)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if str(root).encode() in cmdline or f"P2PM_HOME={root}".encode() in environ:
            found.append(int(entry.name))
    return found


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL a process started with start_new_session=True, and its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


class ActorProcesses:
    """Runs single actors of one home as processes (`p2pm.common.service`), each in its
    own process group with its output in logs/<actor>.test.log, and kills what is left."""

    def __init__(self, home: Home, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.env = env
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, actor: str) -> subprocess.Popen[bytes]:
        with open(self.home.logs / f"{actor}.test.log", "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "p2pm.common.service", actor,
                 "--home", str(self.home.root)],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.started.append(proc)
        return proc

    def kill_all(self) -> None:
        for proc in self.started:
            kill_group(proc)


def destroy_home(home: Home) -> None:
    """Stop whatever runs in `home` (politely, then by force) and delete it."""
    try:
        run_p2pm(home, "down", "--timeout", "10", timeout=30)
    except subprocess.TimeoutExpired:
        pass
    try:
        supmod.stop(home, timeout=5)
    except supmod.SupervisorError:
        pass
    # Anything still holding a lock or the pidfile gets SIGKILL, group and all.
    pids = list(supmod.actor_pids(home).values())
    sup_pid = supmod.supervisord_pid(home)
    if sup_pid is not None:
        pids.append(sup_pid)
    for pid in pids:
        supmod.kill_tree(pid)
    supmod.wait_gone(pids, 5)
    shutil.rmtree(home.root, ignore_errors=True)


@dataclass
class Node:
    """A node running under supervisord in its own home."""

    home: Home
    peer_id: str
    up_output: dict[str, Any]
    _spawned: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def root(self) -> Path:
        return self.home.root

    def p2pm(self, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return run_p2pm(self.home, *args, **kw)

    def call(self, actor: str, method: str, params: dict[str, Any] | None = None,
             timeout: float = 2.0, retries: int = 2) -> Any:
        """Call an actor from a sync test; raises BusError on an error reply."""
        return bus.call(self.home, actor, method, params, timeout=timeout, retries=retries)

    async def acall(self, actor: str, method: str, params: dict[str, Any] | None = None,
                    timeout: float = 2.0, retries: int = 2) -> Any:
        """The same from a trio test."""
        async with open_client(zmq.Context.instance(), self.home.endpoints().rpc(actor),
                               actor) as client:
            return await client.call(method, params, timeout=timeout, retries=retries)

    def supervisor(self) -> supmod.Supervisor:
        return supmod.Supervisor(self.home)

    def pids(self) -> dict[str, int]:
        """Each program's pid according to supervisord (0 when not running)."""
        return {n: p.pid for n, p in self.supervisor().processes().items()}

    def states(self) -> dict[str, str]:
        return {n: p.state for n, p in self.supervisor().processes().items()}

    def healthy(self, actors: tuple[str, ...] = ACTORS) -> bool:
        """Whether each of the actors answers sys.status now with healthy=true."""
        return all(isinstance(s, dict) and s.get("healthy")
                   for s in bus.statuses(self.home, actors).values())

    def wait_healthy(self, timeout: float = 30.0, actors: tuple[str, ...] = ACTORS) -> float:
        """Wait until the actors answer healthy; returns how long it took."""
        started = time.monotonic()
        ok, last = bus.wait_healthy(self.home, timeout, actors)
        if not ok:
            raise AssertionError(f"not healthy within {timeout:g}s: {last}")
        return time.monotonic() - started

    def spawn(self, *args: str) -> subprocess.Popen[str]:
        """Start `p2pm --home HOME ARGS...` in the background (e.g. a replacement actor);
        killed with its process group when the node is destroyed."""
        proc = subprocess.Popen(p2pm_argv("--home", str(self.root), *args), env=clean_env(),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._spawned.append(proc)
        return proc

    def destroy(self) -> None:
        for proc in self._spawned:
            kill_group(proc)
            for stream in (proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        destroy_home(self.home)


def start_node(home: Home, *, passphrase: str | None = None, listen: Iterable[str] = (),
               bootstrap: Iterable[str] = (), up: bool = True,
               up_timeout: float = UP_TIMEOUT) -> Node:
    """`p2pm init` (+ `p2pm up`) in an existing empty home. With a passphrase it goes in
    through P2PM_PASSPHRASE, as a script would do it."""
    init_args = ["--json", "init"]
    env = clean_env()
    if passphrase is None:
        init_args.append("--no-passphrase")
    else:
        env["P2PM_PASSPHRASE"] = passphrase
    for addr in listen:
        init_args += ["--listen", addr]
    for addr in bootstrap:
        init_args += ["--bootstrap", addr]
    init = run_p2pm(home, *init_args, env=env, check=True)
    peer_id = orjson.loads(init.stdout)["peer_id"]
    up_output: dict[str, Any] = {}
    if up:
        proc = run_p2pm(home, "--json", "up", "--timeout", str(up_timeout), env=env,
                        check=True, timeout=up_timeout + 30)
        up_output = orjson.loads(proc.stdout)
    return Node(home=home, peer_id=peer_id, up_output=up_output)


@contextmanager
def running_node(**kw: Any) -> Iterator[Node]:
    """A node for the duration of the block; everything is torn down on every exit."""
    home = make_home()
    node: Node | None = None
    try:
        node = start_node(home, **kw)
        yield node
    finally:
        if node is not None:
            node.destroy()
        else:
            destroy_home(home)
