"""Node configuration files: config/default.toml overlaid with the home's config.toml.

Loaded and checked once at start (`p2pm up`, `p2pm service`): an unknown key, a value
of the wrong type or one its rule in settings.py refuses is an error naming the key,
and nothing starts on it. The result is a `Settings` (settings.py), which is what every
actor reads.
"""

from __future__ import annotations

import copy
import difflib
import importlib.resources
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .home import Home
from .settings import ConfigError, Settings

__all__ = ["ConfigError", "Settings", "defaults", "dump", "load", "load_file", "settings_of"]


def defaults() -> dict[str, Any]:
    text = importlib.resources.files("p2pm.config").joinpath("default.toml").read_text()
    return tomllib.loads(text)


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "a table"}


def _merge(base: dict[str, Any], over: dict[str, Any], path: str = "") -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        where = f"{path}{key}"
        if key not in base:
            near = difflib.get_close_matches(str(key), list(base), n=1)
            raise ConfigError(f"unknown {'setting' if path else 'section'} {where}"
                              + (f" (did you mean {path}{near[0]}?)" if near else ""), where)
        if isinstance(base[key], dict):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: must be a table [{where}]", where)
            out[key] = _merge(base[key], value, where + ".")
        else:
            want = type(base[key])
            if want is list and isinstance(value, tuple):
                value = list(value)
            ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                raise ConfigError(f"{where}: must be {_TYPE_NAMES[want]}, not "
                                  f"{_TYPE_NAMES.get(type(value), type(value).__name__)} "
                                  f"{value!r}", where)
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


def load(home: Home) -> Settings:
    """The checked settings of the node at `home`."""
    tables = load_file(home.config_file)  # its errors name the file already
    try:
        return settings_of(tables)
    except ConfigError as exc:
        raise ConfigError(f"{home.config_file}: {exc}", exc.key, exc.reason) from None


def settings_of(config: Settings | Mapping[str, Any] | None) -> Settings:
    """What an actor is given, as Settings: a Settings as it is; tables (a parsed
    config file, or the few keys a test sets) over default.toml, checked."""
    if isinstance(config, Settings):
        return config
    return Settings.from_mapping(_merge(defaults(), dict(config or {})))


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
