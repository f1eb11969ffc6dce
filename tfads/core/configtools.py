"""Load YAML into typed dataclasses, rejecting unknown keys and wrong types with the key's path."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file is missing, unreadable or does not match its schema; the message names the place."""


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; raise ConfigError naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_dataclass(cls: type[T], path: str | Path) -> T:
    """Read ``path`` and build ``cls`` from it, validating every key."""
    return from_dict(cls, read_yaml(path), where=str(path))


def from_dict(cls: type[T], data: Any, where: str, key: str = "") -> T:
    """Build dataclass ``cls`` from ``data``.

    Raises:
      ConfigError: on an unknown key, a missing required key or a value of the wrong type; the
        message gives ``where`` (usually the file) and the dotted key path.
    """
    return _convert(cls, data, where, key)


def _fail(where: str, key: str, msg: str) -> ConfigError:
    return ConfigError(f"{where}: {key or '<top level>'}: {msg}")


def _convert(tp: Any, value: Any, where: str, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _convert(arg, value, where, key)
            except ConfigError as e:
                errors.append(str(e))
        raise _fail(where, key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise _fail(where, key, f"expected one of {list(args)}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(tp, value, where, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(where, key, f"expected a list, got {value!r}")
        item_type = args[0] if args else Any
        items = [_convert(item_type, v, where, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(where, key, f"expected a mapping, got {value!r}")
        k_type, v_type = args if args else (Any, Any)
        return {
            _convert(k_type, k, where, f"{key}.{k}"): _convert(v_type, v, where, f"{key}.{k}") for k, v in value.items()
        }
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(where, key, f"expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _fail(where, key, f"expected an integer, got {value!r}")
        return value
    if tp in (str, bool):
        if not isinstance(value, tp):
            raise _fail(where, key, f"expected {tp.__name__}, got {value!r}")
        return value
    raise TypeError(f"configtools cannot convert to {tp!r}")


def _convert_dataclass(cls: Any, value: Any, where: str, key: str) -> Any:
    if not isinstance(value, dict):
        raise _fail(where, key, f"expected a mapping, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise _fail(where, _join(key, unknown[0]), f"unknown key (allowed: {', '.join(sorted(fields))})")
    kwargs = {}
    for name, f in fields.items():
        sub = _join(key, name)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], where, sub)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise _fail(where, sub, "missing required key")
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise _fail(where, key, str(e)) from e


def _join(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
