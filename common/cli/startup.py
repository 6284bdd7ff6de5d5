"""Watching a node come up under supervisord, for `p2pm up`.

Success is every actor answering `sys.status` with healthy=true. Failure is known as
soon as one actor's process ends while the node starts (supervisord's BACKOFF, EXITED
or FATAL, or a new pid: it was restarted), not only at the deadline: a crash-looping
actor would otherwise hold `up` for its whole timeout while supervisord retries it.
The reason shown is the actor's last error line, from what its log gained since `up`
began.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from .. import supervisor as supmod
from ..home import ACTORS, Home
from . import bus

# supervisord states that mean the process is not running, and will not be soon.
_ENDED = frozenset({"BACKOFF", "EXITED", "FATAL", "STOPPED", "STOPPING", "UNKNOWN"})
# How much of a log's new output is searched for the last error (a traceback of an
# exception group runs to a few hundred lines; the reason is near its end).
_TAIL_BYTES = 64 * 1024
# "ValueError: ...", "sqlite3.DatabaseError: ...": the line a traceback ends with.
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Group|Interrupt|Exit)\b.*: ")


@dataclass
class Outcome:
    healthy: bool
    answers: dict[str, Any] = field(default_factory=dict)
    failed: str | None = None  # the actor that ended or was not healthy in time
    how: str = ""  # "exited while starting", "not healthy after 60s"
    detail: str = ""  # what supervisord or the actor itself said


def wait_started(home: Home, sup: supmod.Supervisor, timeout: float) -> Outcome:
    deadline = time.monotonic() + timeout
    first_pid: dict[str, int] = {}
    while True:
        try:
            procs = sup.processes()
        except (supmod.SupervisorError, OSError) as exc:
            return Outcome(False, failed="supervisord", how="stopped answering",
                           detail=str(exc))
        for name in ACTORS:
            info = procs.get(name)
            if info is None:
                continue
            seen = first_pid.setdefault(name, info.pid) if info.pid else first_pid.get(name)
            # A program not yet spawned is STOPPED too: it only counts once it ran.
            ended = info.state in _ENDED and (seen is not None or info.state != "STOPPED")
            if ended or (seen and info.pid and info.pid != seen):
                detail = f"supervisord: {info.state} {info.description}".strip()
                return Outcome(False, failed=name, how="exited while starting",
                               detail=detail)
        left = deadline - time.monotonic()
        answers = bus.statuses(home, timeout=min(0.5, max(0.05, left)))
        if all(isinstance(a, dict) and a.get("healthy") for a in answers.values()):
            return Outcome(True, answers)
        if time.monotonic() >= deadline:
            sick = next(n for n, a in answers.items()
                        if not (isinstance(a, dict) and a.get("healthy")))
            answer = answers[sick]
            detail = (answer.get("problem") or "it says it is not healthy") \
                if isinstance(answer, dict) else f"no answer ({answer.message})"
            return Outcome(False, answers, sick, f"not healthy after {timeout:g}s",
                           str(detail))
        time.sleep(0.1)


class LogTails:
    """Where each actor's log ends now, to read only what it writes from here on."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.offsets: dict[str, int] = {}
        for name in ACTORS:
            try:
                self.offsets[name] = (home.logs / f"{name}.log").stat().st_size
            except OSError:
                self.offsets[name] = 0

    def last_error(self, actor: str) -> str | None:
        """The last line of `actor`'s new output that reads as an error: an exception
        line, an ERROR log line or a `p2pm: ` message; else its last line."""
        try:
            with open(self.home.logs / f"{actor}.log", "rb") as f:
                start = self.offsets.get(actor, 0)
                size = f.seek(0, 2)
                f.seek(max(start, size - _TAIL_BYTES) if size >= start else 0)
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return None
        lines = [_unframe(line) for line in text.splitlines()]
        lines = [line for line in lines if line]
        for line in reversed(lines):
            if line.startswith("p2pm: ") or " ERROR " in line \
                    or _EXCEPTION_LINE.match(line):
                return line
        return lines[-1] if lines else None


def _unframe(line: str) -> str:
    """A traceback line without the `  | ` and `+---` framing of exception groups."""
    line = line.strip().lstrip("|").strip()
    return "" if not line.strip("+-") else line
