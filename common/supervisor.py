"""A node's supervisord: start it for a home, talk to it, stop it.

supervisord runs the six actors from the packaged supervisord.conf, which takes every
path from its environment (P2PM_HOME, P2PM_PYTHON) so nodes with different homes run
side by side. We talk to it only over its XML-RPC interface on the unix socket in
`run/`; supervisorctl's output is for people, not for parsing.

The identity's unlock key is handed to supervisord in its environment and nowhere
else: supervisord passes it on to the keystore only (the conf blanks it for the other
programs), so a keystore that supervisord restarts unlocks itself.
"""

from __future__ import annotations

import errno
import fcntl
import http.client
import importlib.resources
import os
import signal
import socket
import subprocess
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import SupervisorTransport

from .home import ACTORS, Home
from .log import get_logger

log = get_logger("supervisor")

RPC_TIMEOUT = 10.0
START_TIMEOUT = 15.0
STOP_TIMEOUT = 30.0
# Named in supervisord.conf too, which blanks it for every program but the keystore.
UNLOCK_KEY_ENV = "P2PM_KEYSTORE_KEY"


class SupervisorError(RuntimeError):
    """supervisord could not be started, reached or stopped; the message says why."""


def conf_path() -> Path:
    """The packaged supervisord.conf (the repository's top-level file)."""
    return Path(str(importlib.resources.files("p2pm.config").joinpath("supervisord.conf")))


# Secrets the caller's environment may hold that no process of the node should inherit:
# the passphrase (`p2pm up` reads it from there) and a stray unlock key.
_NOT_INHERITED = ("P2PM_PASSPHRASE", UNLOCK_KEY_ENV)


def supervisord_env(home: Home, unlock_key: str | None = None) -> dict[str, str]:
    """supervisord's environment: ours, plus where the node lives and which Python
    runs its actors, less any secret; the unlock key only when given."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["P2PM_HOME"] = str(home.root)
    env["P2PM_PYTHON"] = sys.executable
    env["PYTHONUNBUFFERED"] = "1"
    if unlock_key:
        env[UNLOCK_KEY_ENV] = unlock_key
    return env


@dataclass(frozen=True)
class ProcessInfo:
    """One program as supervisord sees it."""

    name: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...
    pid: int  # 0 when not running
    exitstatus: int
    description: str

    @classmethod
    def from_rpc(cls, info: dict[str, Any]) -> "ProcessInfo":
        return cls(name=str(info["name"]), state=str(info["statename"]),
                   pid=int(info.get("pid") or 0), exitstatus=int(info.get("exitstatus") or 0),
                   description=str(info.get("description", "")))


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over supervisord's unix socket, with a timeout (supervisor's own
    connection has none, and a wedged supervisord must not hang the CLI)."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class _Transport(SupervisorTransport):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__(None, None, f"unix://{path}")
        self._get_connection = lambda: _UnixConnection(str(path), timeout)


class Supervisor:
    """supervisord of one home, over XML-RPC. Methods raise SupervisorError when it
    cannot be reached, and xmlrpc.client.Fault for a refused operation."""

    def __init__(self, home: Home, timeout: float = RPC_TIMEOUT) -> None:
        self.home = home
        self._proxy = xmlrpc.client.ServerProxy(
            "http://localhost", transport=_Transport(home.supervisor_sock, timeout))

    def _call(self, method: str, *args: Any) -> Any:
        try:
            return getattr(self._proxy.supervisor, method)(*args)
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError) as exc:
            raise SupervisorError(
                f"supervisord of {self.home.root} is not reachable ({exc})") from None

    def is_running(self) -> bool:
        """True when supervisord answers and is in its RUNNING state."""
        try:
            return self._call("getState").get("statename") == "RUNNING"
        except SupervisorError:
            return False

    def pid(self) -> int:
        return int(self._call("getPID"))

    def processes(self) -> dict[str, ProcessInfo]:
        return {i["name"]: ProcessInfo.from_rpc(i) for i in self._call("getAllProcessInfo")}

    def process(self, name: str) -> ProcessInfo:
        return ProcessInfo.from_rpc(self._call("getProcessInfo", name))

    def stop_process(self, name: str, wait: bool = True) -> bool:
        """Stop one program (SIGTERM, then SIGKILL after the conf's stopwaitsecs)."""
        return bool(self._call("stopProcess", name, wait))

    def start_process(self, name: str, wait: bool = True) -> bool:
        return bool(self._call("startProcess", name, wait))

    def stop_all_nowait(self) -> None:
        """Send every running (or starting, or backing-off) program its stop signal at
        once; supervisord then restarts none of them, however they exit."""
        self._call("stopAllProcesses", False)

    def shutdown(self) -> None:
        """Ask supervisord to stop every program and exit (returns at once)."""
        self._call("shutdown")


def start(home: Home, unlock_key: str | None = None,
          timeout: float = START_TIMEOUT) -> Supervisor:
    """Start supervisord for `home` (daemonised) and return once it answers.

    Raises SupervisorError when it refuses to start (its own message is passed on) or
    does not answer in time.
    """
    home.ensure()
    proc = subprocess.run(
        [sys.executable, "-m", "supervisor.supervisord", "-c", str(conf_path())],
        env=supervisord_env(home, unlock_key), cwd=home.root,
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
    # supervisord forks into the background and its first process exits 0; a non-zero
    # exit means it never started (bad conf, socket in use).
    if proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise SupervisorError(
            f"supervisord did not start: {why[-1] if why else f'exit {proc.returncode}'}")
    sup = Supervisor(home)
    deadline = time.monotonic() + timeout
    while not sup.is_running():
        if time.monotonic() > deadline:
            raise SupervisorError(
                f"supervisord did not answer within {timeout:g}s; see {home.logs}/supervisord.log")
        time.sleep(0.05)
    log.info("supervisord.started", home=home.root, pid=sup.pid())
    return sup


def supervisord_pid(home: Home) -> int | None:
    """The pid in supervisord's pidfile, if that process is alive."""
    try:
        pid = int((home.run / "supervisord.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def actor_pids(home: Home) -> dict[str, int]:
    """Actors alive in this home, found by their locks rather than by supervisord:
    this also finds an actor run by hand and one that outlived its supervisord.
    A lock that we can take is free: nobody holds it."""
    found: dict[str, int] = {}
    for name in ACTORS:
        path = home.run / f"{name}.lock"
        try:
            f = open(path)
        except OSError:
            continue
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                try:
                    pid = int(f.read().strip())
                except ValueError:
                    continue
                if pid_alive(pid):
                    found[name] = pid
            else:
                fcntl.flock(f, fcntl.LOCK_UN)
    return found


def actor_lock_held(home: Home, name: str) -> bool | None:
    """Whether a process holds `name`'s lock in this home; None when the lock file
    does not exist (the actor never ran here as its own process: no verdict)."""
    try:
        f = open(home.run / f"{name}.lock")
    except FileNotFoundError:
        return None
    except OSError:
        return None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
        return False


# supervisord states in which a program that is not up now will be soon.
COMING_BACK = frozenset({"STARTING", "BACKOFF", "RUNNING"})
# A program that died is EXITED until supervisord's next tick (up to a second later)
# moves it to STARTING, when the exit was unexpected (a crash, a kill): EXITED says
# "down" only once it has lasted.
SETTLING = frozenset({"EXITED"})


def program_state(home: Home, name: str, timeout: float = 1.0) -> str | None:
    """supervisord's state of one program; None without a supervisord to ask."""
    try:
        return Supervisor(home, timeout=timeout).process(name).state
    except (SupervisorError, xmlrpc.client.Fault, OSError):
        return None


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes; it only waits for its parent to reap it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def wait_gone(pids: list[int], timeout: float) -> list[int]:
    """Wait until every pid has exited; return the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def kill_tree(pid: int) -> None:
    """SIGKILL a process and its process group (supervisord puts each program in its
    own group, so a program's children go with it)."""
    for kill, target in ((os.killpg, pid), (os.kill, pid)):
        try:
            kill(target, signal.SIGKILL)
        except OSError as exc:
            if exc.errno not in (errno.ESRCH, errno.EPERM):
                raise


def stop(home: Home, timeout: float = STOP_TIMEOUT) -> list[int]:
    """Stop the node: supervisord stops every actor (SIGTERM, in reverse priority) and
    exits. Whatever is left (an actor run by hand, or one that outlived a crashed
    supervisord) gets SIGTERM, then SIGKILL. Returns the pids that had to be killed."""
    sup_pid = supervisord_pid(home)
    sup = Supervisor(home)
    if sup_pid is not None or sup.is_running():
        try:
            sup_pid = sup.pid()
            # supervisord's own shutdown stops programs one priority at a time, about
            # a second each; the actors need no order, so they all get SIGTERM at once
            # and supervisord exits after. Stopped through supervisord (not signalled
            # behind its back), an actor killed by SIGTERM before its handler was in
            # place (a node stopped while starting) is not restarted.
            running = [p.pid for p in sup.processes().values() if p.pid]
            sup.stop_all_nowait()
            wait_gone(running, timeout)
            sup.shutdown()
        except (SupervisorError, xmlrpc.client.Fault):
            pass  # already going away; the pid wait below settles it
    if sup_pid is not None:
        wait_gone([sup_pid], timeout)
    leftovers = list(actor_pids(home).values())
    if sup_pid is not None and pid_alive(sup_pid):
        leftovers.append(sup_pid)
    for pid in leftovers:
        _signal(pid, signal.SIGTERM)
    killed = wait_gone(leftovers, 5.0 if leftovers else 0)
    for pid in killed:
        log.warning("stop.killing", pid=pid, home=home.root)
        kill_tree(pid)
    still = wait_gone(killed, 5.0)
    if still:
        raise SupervisorError(f"processes would not die: {still}")
    return killed


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
