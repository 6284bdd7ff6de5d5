"""A program in a pseudo-terminal, read through a terminal emulator (pyte): what a
user's terminal would show, row by row, and keys typed as the terminal sends them.

    with Terminal(p2pm_argv("--home", home, "attach"), cols=80, rows=24) as term:
        term.wait_for(lambda s: "connected" in s.text(), "the screen")
        term.type("/help\\r")

The program gets the pty as its controlling terminal (its own session), so it sees a
real tty of the given size; a thread feeds everything it writes into the emulator.
On exit the program gets SIGTERM, then SIGKILL, with its process group.
"""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import termios
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import pyte

T = TypeVar("T")

KEYS = {"pageup": "\x1b[5~", "pagedown": "\x1b[6~", "end": "\x1b[F", "up": "\x1b[A",
        "down": "\x1b[B", "esc": "\x1b", "ctrl-u": "\x15", "ctrl-e": "\x05",
        "ctrl-home": "\x1b[1;5H"}


class Terminal:
    def __init__(self, argv: Sequence[str], cols: int = 80, rows: int = 24,
                 env: dict[str, str] | None = None) -> None:
        self.cols, self.rows = cols, rows
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        self.lock = threading.Lock()
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.master = master
        full_env = dict(env if env is not None else os.environ)
        full_env.update({"TERM": "xterm", "COLUMNS": str(cols), "LINES": str(rows)})
        self.proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave,
                                     env=full_env, start_new_session=True,
                                     preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
        os.close(slave)
        self.raw = bytearray()  # everything written, for a failure's explanation
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return  # the program is gone (EIO on Linux)
            if not data:
                return
            with self.lock:
                self.raw += data
                del self.raw[:-262144]  # bounded: the last 256 KiB explain enough
                self.stream.feed(data)

    # -- what is on the screen ---------------------------------------------------------
    def lines(self) -> list[str]:
        with self.lock:
            return [line.rstrip() for line in self.screen.display]

    def text(self) -> str:
        return "\n".join(self.lines())

    @property
    def title(self) -> str:
        with self.lock:
            return str(self.screen.title)

    def wait_for(self, condition: Callable[["Terminal"], T], what: str,
                 timeout: float = 20.0) -> T:
        deadline = time.monotonic() + timeout
        while True:
            value = condition(self)
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"the program exited {self.proc.returncode} while "
                                     f"waiting for {what}; its screen:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; "
                                     f"the screen:\n{self.text()}")
            time.sleep(0.05)

    # -- typing ------------------------------------------------------------------------
    def type(self, text: str) -> None:
        data = memoryview(text.encode())
        while data:  # a tty's input queue holds about 4 KiB: a write may take less
            data = data[os.write(self.master, data[:1024]):]
            time.sleep(0.01)

    def paste(self, text: str) -> None:
        """`text` pasted, as a terminal in bracketed-paste mode sends it (one insert,
        not a key press per character)."""
        self.type(f"\x1b[200~{text}\x1b[201~")

    def key(self, name: str) -> None:
        self.type(KEYS[name])

    def wheel(self, up: bool, col: int, row: int) -> None:
        """The mouse wheel over (col, row), 1-based, as xterm reports it (SGR)."""
        self.type(f"\x1b[<{64 if up else 65};{col};{row}M")

    # -- lifetime ----------------------------------------------------------------------
    def close(self) -> None:
        for sig, wait in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass
        os.close(self.master)
        self._reader.join(2)

    def __enter__(self) -> "Terminal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
