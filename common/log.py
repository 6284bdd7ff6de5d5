"""Structured logging: one line an event, `key=value` pairs after the event name."""

from __future__ import annotations

import logging
import sys
from typing import Any


def _fmt(value: Any) -> str:
    text = str(value)
    if not text or any(c in text for c in ' ="'):
        return '"' + text.replace('"', '\\"') + '"'
    return text


class Logger:
    def __init__(self, name: str) -> None:
        self._log = logging.getLogger(f"p2pm.{name}")

    def _emit(self, level: int, event: str, fields: dict[str, Any], exc: bool = False) -> None:
        if self._log.isEnabledFor(level):
            tail = " ".join(f"{k}={_fmt(v)}" for k, v in fields.items())
            self._log.log(level, f"{event} {tail}" if tail else event, exc_info=exc)

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(logging.DEBUG, event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(logging.INFO, event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(logging.WARNING, event, fields)

    def error(self, event: str, exc: bool = False, **fields: Any) -> None:
        self._emit(logging.ERROR, event, fields, exc)


def get_logger(name: str) -> Logger:
    return Logger(name)


def setup_logging(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # py-libp2p is chatty at INFO and logs expected shutdown noise at WARNING.
    logging.getLogger("libp2p").setLevel(logging.ERROR)
