"""The registry of data sources: a source string, `name` or `name:<argument>`, -> the function that opens it.

A source module (one per source, in data/sources/) decorates its opener with
`@register_source(name, ...)`; importing the module registers it, and
data/sources/__init__.py imports every one. Everything that names the
sources reads them from here: `open_source`'s error for an unknown source,
the config's check of `data.source`, `make convert --help`, run names and
MLflow's dataset input (`local_path`), and the test that the manual's
"Datasets" table names each of them.

An opener is `open(argument, options, stream)`: `argument` is what follows
`name:` (empty for a source that takes none), `options` the
`data.options.DataOptions` (with `options.source` the whole source string)
and `stream` the `data.splits._StreamConfig` its splits share. It decodes no
image and returns `(splits, class_names, shape, channels, bad)`: a
`data.splits.Split` for each of `SPLITS` (this process's part: see
`data.sources.common.shard_indices`), the class names, the image shape after
preprocessing (None for height and width when stored sizes differ and
`image_size` is unset), the channels and the `(path, reason)` of unreadable
files skipped. It sets `stream.key` (what identifies the content, for disk
caches), `stream.native_size` and `stream.native_channels`. A missing or
malformed source is a `DataSourceError` that starts with the source.

Nothing heavy is imported here or at the top of a source module (TensorFlow,
PIL, tensorflow-datasets are imported inside the openers): the config and
every job's `--help` read the registry.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Callable

from data.options import DataSourceError

__all__ = ["Source", "register_source", "available_sources", "get_source", "source_usage", "local_path"]


@dataclass(frozen=True)
class Source:
    """A registered data source."""

    name: str
    open: Callable  # open(argument, options, stream) -> (splits, class_names, shape, channels, bad)
    argument: str | None  # what follows `name:` in a source string, e.g. "<path>"; None: the name alone
    help: str  # one line: what the source reads
    files: str | None = None  # "path": the argument is a local file or folder; "glob": files or their folder

    @property
    def usage(self) -> str:
        """How a source string of this kind is written: `synthetic`, `npz:<path>`."""
        return self.name if self.argument is None else f"{self.name}:{self.argument}"


_SOURCES: dict[str, Source] = {}


def register_source(name: str, *, help: str, argument: str | None = None, files: str | None = None):
    """Decorator: register `open(argument, options, stream)` as the opener of source `name`.

    `argument`: what follows `name:` in the source string (`"<path>"`), or None when the
    name stands alone; `help`: one line; `files`: `"path"` or `"glob"` when the argument
    names local files (run names and MLflow's dataset input use it), else None.
    """
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"data source name {name!r}: lower-case letters, digits and '_', starting with a letter")
    if files not in (None, "path", "glob"):
        raise ValueError(f"data source {name!r}: files must be None, 'path' or 'glob' (got {files!r})")

    def wrap(opener):
        if name in _SOURCES and _SOURCES[name].open is not opener:
            raise ValueError(f"data source name {name!r} is registered twice")
        _SOURCES[name] = Source(name, opener, argument, help, files)
        return opener

    return wrap


def available_sources() -> list[Source]:
    """The registered sources, in the order they were registered."""
    return list(_SOURCES.values())


def source_usage(quote: str = "") -> str:
    """The registered sources as a user reads them: `synthetic, npz:<path>, ... or tfds:<name>`."""
    shown = [f"{quote}{s.usage}{quote}" for s in _SOURCES.values()]
    return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"


def get_source(source: str) -> tuple[Source, str]:
    """The registered `Source` that reads `source` and its argument; `DataSourceError` if none does.

    `name` alone for a source that takes no argument; `name:<argument>`, the argument not empty,
    for one that does.
    """
    name, colon, argument = source.partition(":") if isinstance(source, str) else ("", "", "")
    found = _SOURCES.get(name)
    if found is None or (found.argument is None) == bool(colon) or (colon and not argument):
        raise DataSourceError(f"unknown data source {source!r}; use {source_usage()}")
    return found, argument


def local_path(source: str) -> str | None:
    """The local file or folder `source` reads (a glob's folder), `~` expanded; None when it reads
    none (`synthetic`, `tfds:<name>`) or is not a registered source."""
    try:
        found, argument = get_source(source)
    except DataSourceError:
        return None
    if found.files is None:
        return None
    path = argument.rstrip("/") or argument
    if found.files == "glob" and any(c in os.path.basename(path) for c in "*?["):
        path = os.path.dirname(path)
    return os.path.expanduser(path)
