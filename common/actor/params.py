"""Binding a request's params to a handler's signature, type-checked at the boundary:
each param is coerced to its annotation (bytes from base64, int to float) or refused
with BAD_PARAMS naming it."""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any

from p2pm.common import errors, wire

_SIMPLE = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
           bytes: "a base64 string", dict: "an object", list: "a list"}


def coerce(value: Any, hint: Any, where: str) -> Any:
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        last: errors.BusError | None = None
        for opt in options:
            if opt is type(None):
                continue
            try:
                return coerce(value, opt, where)
            except errors.BusError as exc:
                last = exc
        assert last is not None
        raise last
    if origin is list:
        if not isinstance(value, list):
            raise errors.bad_params(f"{where} must be a list")
        (item,) = typing.get_args(hint) or (Any,)
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise errors.bad_params(f"{where} must be an object")
        _, item = typing.get_args(hint) or (str, Any)
        return {k: coerce(v, item, f"{where}[{k!r}]") for k, v in value.items()}
    if hint is bytes:
        return wire.b64d(value, where)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint in _SIMPLE:
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise errors.bad_params(f"{where} must be {_SIMPLE[hint]}")
        return value
    return value


class Method:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        self.params = {
            n: (p, hints.get(n, Any)) for n, p in sig.parameters.items() if n != "self"
        }

    def bind(self, params: dict[str, Any]) -> dict[str, Any]:
        unknown = set(params) - set(self.params)
        if unknown:
            raise errors.bad_params(f"unknown params: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for n, (p, hint) in self.params.items():
            if n in params:
                kwargs[n] = coerce(params[n], hint, n)
            elif p.default is inspect.Parameter.empty:
                raise errors.bad_params(f"missing param: {n}")
        return kwargs
