"""TF Serving's model config file (`--model-config-file`): which models, which of their versions, which labels.

The file is TF Serving's own text format, a `tensorflow.serving.ModelServerConfig`
(`tensorflow_serving/config/model_server_config.proto`), parsed with
protobuf's `text_format` into the official message:

    model_config_list {
      config {
        name: "digits"
        base_path: "exports/digits"        # absolute, or relative to the server's working directory
        model_platform: "tensorflow"        # optional; "tensorflow" is the only platform
        model_version_policy { specific { versions: 3 versions: 4 } }
        version_labels { key: "stable" value: 3 }
        version_labels { key: "canary" value: 4 }
      }
      config { name: "shapes" base_path: "/srv/exports/shapes" model_version_policy { latest { num_versions: 2 } } }
    }

`model_version_policy` is `latest { num_versions: N }` (the N highest versions
on disk; the default, with N = 1), `all {}` or `specific { versions: ... }`.
`read_model_config` turns the file into one `ModelSpec` per model, or raises
`ModelConfigError` (a `UserError`: one line, exit code 2 at start-up) that says
what is wrong and where.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field

from pipelines.errors import UserError

log = logging.getLogger("pipelines.serve")

_NAME = re.compile(r"^[^/:?#\s]+$")  # a model name or label has to fit in a REST path segment


class ModelConfigError(UserError):
    """A model config file that cannot be read, parsed, or names something this server cannot serve."""


@dataclass(frozen=True)
class ModelSpec:
    """One model to serve: where its versions are, which of them to serve, and its version labels."""

    name: str
    base_path: str
    policy: str = "latest"  # "latest", "all" or "specific"
    num_versions: int = 1  # latest: how many of the highest versions
    versions: tuple[int, ...] = ()  # specific: which versions
    labels: dict[str, int] = field(default_factory=dict, compare=True, hash=False)

    def wanted(self, on_disk: list[int] | set[int]) -> set[int]:
        """The versions this policy serves out of `on_disk`."""
        if self.policy == "all":
            return set(on_disk)
        if self.policy == "specific":
            return set(self.versions) & set(on_disk)
        return set(sorted(on_disk)[-self.num_versions:])

    def describe(self) -> str:
        how = {"all": "all versions", "specific": f"versions {list(self.versions)}"}.get(
            self.policy, f"latest {self.num_versions}")
        labels = f", labels {self.labels}" if self.labels else ""
        return f"{self.name} ({how} of {self.base_path}{labels})"


def version_number(folder: str) -> int | None:
    """The version a folder under a model's base path stands for, as TF Serving reads it: ASCII digits whose
    value fits an int64 (`08` is 8); None for any other name, a folder TF Serving leaves alone."""
    if folder.isascii() and folder.isdigit():
        v = int(folder)
        return v if v < 2**63 else None
    return None


def parse_model_config(text: str, source: str = "<model config>") -> dict[str, ModelSpec]:
    """The models of a `ModelServerConfig` in text format, by name; `ModelConfigError` if it is not usable."""
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    cfg = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, cfg)
    except text_format.ParseError as e:
        hint = " (policies: latest, all, specific)" if "ServableVersionPolicy" in str(e) else ""
        msg = re.sub(r"^\d+:\d+ : ", "", str(e))
        at = f" line {e.GetLine()} column {e.GetColumn()}" if e.GetLine() is not None else ""
        raise ModelConfigError(f"model config file {source}{at}: {msg}{hint}") from None
    which = cfg.WhichOneof("config")
    if which != "model_config_list":
        got = "custom_model_config, which this server does not support" if which else "no model"
        raise ModelConfigError(
            f"model config file {source}: {got}; expected model_config_list {{ config {{ name: \"...\" "
            f"base_path: \"...\" }} }}")
    specs: dict[str, ModelSpec] = {}
    for i, c in enumerate(cfg.model_config_list.config):
        where = f"model config file {source}: config #{i + 1}" + (f" ({c.name!r})" if c.name else "")
        spec = _spec(c, where)
        if spec.name in specs:
            raise ModelConfigError(f"{where}: model {spec.name!r} is configured twice")
        specs[spec.name] = spec
    if not specs:
        raise ModelConfigError(f"model config file {source}: model_config_list has no config")
    return specs


def _spec(c, where: str) -> ModelSpec:
    if not _NAME.match(c.name):
        raise ModelConfigError(f"{where}: name must be non-empty, without '/', ':', '?', '#' or spaces; "
                               f"got {c.name!r}")
    if not c.base_path:
        raise ModelConfigError(f"{where}: base_path is missing")
    if c.model_platform not in ("", "tensorflow"):
        raise ModelConfigError(f"{where}: model_platform {c.model_platform!r} is not served (only \"tensorflow\")")
    policy = c.model_version_policy.WhichOneof("policy_choice") if c.HasField("model_version_policy") else None
    num, versions = 1, ()
    if policy == "latest":
        num = c.model_version_policy.latest.num_versions or 1  # unset (0) means 1, as in TF Serving
        if num < 0:
            raise ModelConfigError(f"{where}: latest {{ num_versions: {num} }} must be >= 1")
    elif policy == "specific":
        versions = tuple(sorted(set(c.model_version_policy.specific.versions)))
        if not versions:
            raise ModelConfigError(f"{where}: specific {{}} names no versions; add versions: N")
        if versions[0] < 0:
            raise ModelConfigError(f"{where}: specific versions must be >= 0, got {list(versions)}")
    labels = dict(sorted(c.version_labels.items()))
    for label, v in labels.items():
        if not _NAME.match(label):
            raise ModelConfigError(f"{where}: version label {label!r} must be non-empty, without '/', ':', '?', "
                                   "'#' or spaces")
        if policy == "specific" and v not in versions:
            raise ModelConfigError(f"{where}: version label {label!r} names version {v}, which its "
                                   f"model_version_policy does not serve (specific versions {list(versions)})")
    return ModelSpec(c.name, c.base_path, policy or "latest", num, versions, labels)


def read_model_config(path: str) -> dict[str, ModelSpec]:
    """`parse_model_config` of the file at `path`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise ModelConfigError(f"cannot read model config file {path}: {getattr(e, 'strerror', None) or e}") from None
    return parse_model_config(text, path)


def exports_specs(exports: str) -> dict[str, ModelSpec] | None:
    """Without a config file: every sub-folder of `exports`, latest version; None if it cannot be listed."""
    try:
        names = sorted(
            d for d in os.listdir(exports) if not d.startswith(".") and os.path.isdir(os.path.join(exports, d))
        )
    except OSError as e:
        log.warning("cannot list %s: %s", exports, e)
        return None
    return {n: ModelSpec(n, os.path.join(exports, n)) for n in names}


def _stamp(path: str) -> tuple:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino


class ConfigWatcher:
    """The models of the config file at `path`, read again when the file changes (mtime, size, inode).

    The first read raises `ModelConfigError`; a later change that cannot be read or parsed is logged
    (once) and the previous models kept."""

    def __init__(self, path: str):
        self.path = path
        try:
            self._stamp = _stamp(path)  # before reading: a write meanwhile counts as a change
        except OSError as e:
            raise ModelConfigError(f"cannot read model config file {path}: {e.strerror or e}") from None
        self.specs = read_model_config(path)

    def current(self) -> dict[str, ModelSpec]:
        try:
            stamp = _stamp(self.path)
        except OSError as e:
            stamp = ("unreadable", e.strerror or str(e))
        if stamp == self._stamp:
            return self.specs
        self._stamp = stamp
        try:
            if stamp[0] == "unreadable":
                raise ModelConfigError(f"cannot read model config file {self.path}: {stamp[1]}")
            specs = read_model_config(self.path)
        except ModelConfigError as e:
            log.error("%s; keeping the previous config", e)
            return self.specs
        if specs != self.specs:
            log.info("model config %s: %s", self.path, "; ".join(s.describe() for s in specs.values()))
        self.specs = specs
        return specs
