"""Node configuration: config/default.toml overlaid with the home's config.toml.

Loaded and validated once at start; a bad file is a clear error naming the key, and
the actor does not start on it.
"""

from __future__ import annotations

import copy
import importlib.resources
import tomllib
from pathlib import Path
from typing import Any

from .home import Home


class ConfigError(ValueError):
    pass


def defaults() -> dict[str, Any]:
    text = importlib.resources.files("p2pm.config").joinpath("default.toml").read_text()
    return tomllib.loads(text)


def _merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        where = f"{path}{key}"
        if key not in base:
            raise ConfigError(f"unknown setting {where!r}")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"{where!r} must be a table")
            out[key] = _merge(base[key], value, where + ".")
        else:
            want = type(base[key])
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise ConfigError(
                    f"{where!r} must be {want.__name__}, got {type(value).__name__}")
            out[key] = value
    return out


def load_file(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc.reason} at byte {exc.start}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    return data


def load(home: Home) -> dict[str, Any]:
    """The effective configuration of the node at `home`."""
    try:
        return _merge(defaults(), load_file(home.config_file))
    except ConfigError as exc:
        raise ConfigError(f"{home.config_file}: {exc}") from None


def dump(config: dict[str, Any]) -> str:
    """Write a config as TOML (only the shapes our config uses: tables of scalars/lists)."""
    lines: list[str] = []
    for section, table in config.items():
        lines.append(f"[{section}]")
        for key, value in table.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"cannot write {type(value).__name__} to TOML")
