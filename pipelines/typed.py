"""The typed-YAML walker behind pipelines/config.py: nested dicts -> dataclasses, errors naming the key.

`build(cls, data, path)` checks `data` against the annotations of dataclass
`cls` (recursively), refuses unknown keys and wrong types with a
`ConfigError` that names the dotted key and echoes the value, then calls each
section's `validate(path)`; a `ValueError` raised there (the data/ settings
raise plain ones) becomes a `ConfigError` too.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config the user wrote is wrong; the message names the key and value."""


def _fail(path: str, value, why: str):
    raise ConfigError(f"{path}: {why} (got {value!r})")


def _check(cond: bool, path: str, value, why: str):
    if not cond:
        _fail(path, value, why)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------- loading


def _coerce(tp, value, path):
    """Check `value` against annotation `tp`; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            _fail(path, value, "must not be empty")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return build(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        _check(isinstance(value, list), path, value, "must be a list")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        _check(isinstance(value, dict), path, value, "must be a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        _check(isinstance(value, bool), path, value, "must be true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), path, value, "must be an integer")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), path, value, "must be a number")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and path.endswith("verbose"):
            return str(value)
        _check(isinstance(value, str), path, value, "must be a string")
        return value
    raise TypeError(f"unsupported annotation {tp} at {path}")


def build(cls, data, path):
    if data is None:
        data = {}
    _check(isinstance(data, dict), path or "config", data, "must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{path}.{k}" if path else str(k)
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.6)
            hint = f"did you mean {(path + '.') if path else ''}{close[0]}? " if close else ""
            raise ConfigError(f"{where}: unknown key ({hint}known keys here: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate(path)
        except ConfigError:
            raise
        except ValueError as e:  # the data/ settings raise ValueError("<key>: why (got value)")
            raise ConfigError(str(e)) from None
    return obj


def _set_dotted(d: dict, dotted: str, value):
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected key=value, for example train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        # A source such as npz:path parses as a string either way; keep the raw text for strings.
        if isinstance(value, dict):
            value = raw
        out.append((key.strip(), value))
    return out
