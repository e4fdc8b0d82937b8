"""The typed-YAML walker behind pipelines/config.py: nested dicts -> dataclasses, errors naming the key.

`build(cls, data, path)` checks `data` against the annotations of dataclass
`cls` (recursively), refuses unknown keys and wrong types with a
`ConfigError` that names the dotted key and echoes the value, then calls each
section's `validate(path)`; a `ValueError` raised there (the data/ settings
raise plain ones) becomes a `ConfigError` too.

`commented_yaml(obj)` is the way back (`--print-config`): every field of the
dataclass `obj` as YAML that `build` reads again, each with the comment its
source gives it and its default where the value differs.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import math
import re
import textwrap
import tokenize
import types
import typing
from collections.abc import Hashable
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
        return _plain(value)
    if tp is Any:
        return _plain(value)
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
        if isinstance(value, _WrittenMapping):  # `description={draft}` on the command line: the text given
            return value.text
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


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`, refusing a key given twice in one mapping (YAML keeps the last one without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: SafeLoader merges it
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):  # SafeLoader names it ("found unhashable key")
                break
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"the key {key!r} is given twice",
                                                        key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


class Dumper(yaml.SafeDumper):
    """`yaml.safe_dump` that quotes a string the loader would read as something else (`"1e3"`, below)."""


def dump(value, **kwargs) -> str:
    return yaml.dump(value, Dumper=Dumper, **kwargs)


# YAML 1.2's floats: PyYAML reads YAML 1.1, where `1e-4` (no dot) is a string, so `learning_rate: 1e-4` was refused as
# "must be a number". The 1.1 forms stay floats; the resolver comes after the int one, which never matches these.
# The dumper knows it too, so that a string such as a name "1e3" is written quoted and reads back as that string.
for _cls in (UniqueKeyLoader, Dumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789."))


class _WrittenMapping(dict):
    """A mapping given on the command line as `{...}`, with the text it was written as (for a string field)."""

    def __init__(self, value: dict, text: str):
        super().__init__(value)
        self.text = text


def _plain(value):
    """`value` with every mapping a plain dict (YAML and MLflow write those, not `_WrittenMapping`)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return [_plain(v) for v in value] if isinstance(value, list) else value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected key=value, for example train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=UniqueKeyLoader) if raw != "" else None  # noqa: S506 - a SafeLoader
        except yaml.constructor.ConstructorError as e:
            if "is given twice" in str(e):
                raise ConfigError(f"override {item!r}: {e.problem}") from None
            value = raw
        except yaml.YAMLError:
            value = raw
        # A mapping only where it is written as one: `model.params={}` or `model.params.invariant={group: D4}`
        # (and a string field given one keeps its text). Text that YAML reads as a mapping by its ": " (a path or
        # a name such as `a: b`) stays the raw text.
        if isinstance(value, dict):
            value = _WrittenMapping(value, raw) if raw.lstrip().startswith("{") else raw
        out.append((key.strip(), value))
    return out


# ----------------------------------------------------------------------------- printing (--print-config)


@functools.lru_cache(maxsize=None)
def source_notes(cls) -> tuple[str, dict[str, str]]:
    """The first paragraph of dataclass `cls`'s docstring and each field's comment, read from its source.

    A field's comment is the comment lines right above it plus the comment after it (`x: int = 1  # ...`),
    joined on one line; a field without either has none. Comments are found by `tokenize`, so a `#` in a
    string or a docstring is not one. Fields a dataclass inherits keep their base class's comment (and a
    class without a docstring its base's).
    """
    doc, notes = _own_notes(cls)
    for base in cls.__mro__[1:]:
        if dataclasses.is_dataclass(base):
            base_doc, base_notes = _own_notes(base)
            doc, notes = doc or base_doc, {**base_notes, **notes}
    return doc, notes


def _own_notes(cls) -> tuple[str, dict[str, str]]:
    """`source_notes` of the fields `cls` declares itself."""
    try:
        src = textwrap.dedent(inspect.getsource(cls))
        tree = ast.parse(src)
        tokens = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        return "", {}
    comments, whole_line = {}, set()
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string.lstrip("#").strip()
            if tok.line.lstrip().startswith("#"):
                whole_line.add(tok.start[0])
    node = next((n for n in tree.body if isinstance(n, ast.ClassDef)), None)
    if node is None:
        return "", {}
    doc = " ".join((ast.get_docstring(node) or "").split("\n\n")[0].split())
    notes = {}
    for stmt in node.body:
        if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
            continue
        line, above = stmt.lineno - 1, []
        while line in whole_line:
            above.insert(0, comments[line])
            line -= 1
        after = [comments[n] for n in range(stmt.lineno, stmt.end_lineno + 1) if n in comments and n not in whole_line]
        text = " ".join(c for c in above + after if c)
        if text:
            notes[stmt.target.id] = text
    return doc, notes


def flow(value) -> str:
    """`value` as a one-line YAML node (quoted where plain text would read back as something else)."""
    text = dump(value, default_flow_style=True, width=math.inf, allow_unicode=True, sort_keys=False)
    text = text.removesuffix("\n").removesuffix("\n...")
    if "\n" in text:  # a multi-line string: double quotes with \n escapes keep it on one line
        text = dump(value, default_flow_style=True, default_style='"', width=math.inf,
                    allow_unicode=True, sort_keys=False).removesuffix("\n").removesuffix("\n...")
    return text


def _default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def commented_yaml(obj, indent: int = 0, defaults=None) -> list[str]:
    """The lines of YAML giving every field of dataclass `obj` (recursively): `key: value  # comment`, and
    `[default: ...]` after the comment where the value is not the default (that of `defaults`, an
    instance of the same class, when given; else the field's own)."""
    pad, lines = "  " * indent, []
    _, notes = source_notes(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        default = _default(f) if defaults is None else getattr(defaults, f.name)
        note = notes.get(f.name, "")
        if dataclasses.is_dataclass(value):
            note = note or source_notes(type(value))[0]
            lines.append(f"{pad}{f.name}:" + (f"  # {note}" if note else ""))
            lines += commented_yaml(value, indent + 1, default if type(default) is type(value) else None)
            continue
        if default is not dataclasses.MISSING and value != default:
            note = f"{note} [default: {flow(default)}]".strip()
        lines.append(f"{pad}{f.name}: {flow(value)}" + (f"  # {note}" if note else ""))
    return lines
