"""The `data.*` settings, defined once, and what every streaming module shares (data/streaming.py).

`DataSettings` is the `data:` section of an experiment config: every key, its
default, its comment (which `--print-config` prints) and its check.
`pipelines/config.py` uses it as that section (adding the check of `source`
against the registry of data/sources/), and `DataOptions` is the same
settings as `open_source` reads them, with what only code sets: this
process's part of every split and the header pass's threads. A default or a
bound lives here and nowhere else.

Also here: `DatasetInfo` (class names, per-split counts, image shape, bad
files skipped), the errors `DataSourceError` and `BadImagesError`, and the
vocabularies every streaming module shares: `SPLITS`, `METADATA_FILE` (the
`dataset.json` beside TFRecord shards), `CACHE_MODES`, `RESIZE_MODES`.
This module imports nothing heavy (no TensorFlow), so loading a config stays
cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

CACHE_MODES = ("auto", "memory", "disk", "none")
RESIZE_MODES = ("stretch", "crop", "pad")
CHECK_MODES = ("header", "full")
METADATA_FILE = "dataset.json"
PLAN_FILE = "convert-plan.json"  # the settings of the conversion that writes a shard folder (data/tfrecord.py)
SHARD_SIZE = 2048  # `make convert`'s images per shard
SPLITS = ("train", "validation", "test")

__all__ = ["DataSettings", "SyntheticSettings", "DataOptions", "DatasetInfo", "DataSourceError", "BadImagesError",
           "SPLITS", "METADATA_FILE", "CACHE_MODES", "RESIZE_MODES"]


class DataSourceError(ValueError):
    """A data source the user named is missing or malformed; the message says how to fix it."""


class BadImagesError(DataSourceError):
    """Files under a class folder that are not readable images (corrupt, truncated, not an image).

    `bad` is the list of `(path, reason)`; the message names them (the first 10) and `how_to_skip` (the
    config key in the jobs, `make convert`'s option there).
    A `ValueError` (through `DataSourceError`): the jobs end with exit code 2.
    """

    def __init__(self, source: str, bad: list[tuple[str, str]], how_to_skip: str = "set data.skip_bad_images: true"):
        self.source = source
        self.bad = list(bad)
        shown = "; ".join(f"{p} ({r})" for p, r in self.bad[:10])
        more = f"; and {len(self.bad) - 10} more" if len(self.bad) > 10 else ""
        super().__init__(
            f"{source}: {len(self.bad)} unreadable image file(s): {shown}{more}. "
            f"Remove or fix them, or {how_to_skip} to skip them"
        )


def _check(cond: bool, where: str, value, why: str) -> None:
    if not cond:
        raise DataSourceError(f"{where}: {why} (got {value!r})")


def _choice(where: str, value, choices) -> None:
    _check(value in choices, where, value, f"must be one of {list(choices)}")


# ----------------------------------------------------------------------------- settings


@dataclass
class SyntheticSettings:
    """Size of the embedded synthetic digits dataset (source `synthetic`)."""

    train_size: int = 12000
    test_size: int = 2000

    def validate(self, p: str = "data.synthetic") -> None:
        _check(self.train_size >= 10, f"{p}.train_size", self.train_size, "must be at least 10")
        _check(self.test_size >= 10, f"{p}.test_size", self.test_size, "must be at least 10")


@dataclass
class DataSettings:
    """Where images come from, how they are read (data/streaming.py) and how they are batched.

    `source` names a source of the registry in data/sources/ (`synthetic`, `npz:<path>`, ...; each
    module there says what it reads). A failed check raises `DataSourceError` naming the dotted key
    and the value (`data.cache: must be one of [...] (got 'ram')`); the config loader makes it a
    `ConfigError`.
    """

    source: str = "synthetic"
    data_dir: str | None = None  # tfds data_dir
    download: bool = False  # tfds only; off so that no run hangs on the network
    validation_fraction: float = 0.1  # carved from train when the source has no validation split
    image_size: list[int] | None = None  # [H, W] every image is brought to (default: as stored; sizes must agree)
    resize: str = "stretch"  # stretch | crop (cover, then center crop) | pad (fit, then zero padding)
    channels: str | int = "auto"  # auto (1 when every image is gray, else 3) | 1 | 3
    random_crop: bool = False  # with resize: crop, crop training images at random places
    cache: str = "auto"  # auto (memory under cache_budget_mb, else none) | memory | disk (under cache_dir) | none
    cache_budget_mb: float = 512  # the largest decoded size `cache: auto` keeps in memory
    skip_bad_images: bool = False  # skip unreadable images, each named in the log (a folder's: all decoded first)
    # header (fast pass over headers and file ends) | full (decode every file once; tfrecord: read every record)
    check_images: str = "header"
    shuffle_buffer: int = 10_000  # records shuffled at once (tfrecord, tfds, disk cache); file lists shuffle whole
    batch_size: int = 128
    seed: int = 0  # decides the data: the synthetic digits and the carved splits
    cache_dir: str = ".cache"  # the synthetic digits' cache, and `cache: disk`'s (under <cache_dir>/stream/)
    synthetic: SyntheticSettings = field(default_factory=SyntheticSettings)

    def validate(self, p: str = "data") -> None:
        """Check every setting but `source` (which the registry checks: `data.sources.get_source`)."""
        _choice(f"{p}.resize", self.resize, RESIZE_MODES)
        _check(str(self.channels) in ("auto", "1", "3"), f"{p}.channels", self.channels, "must be auto, 1 or 3")
        _choice(f"{p}.cache", self.cache, CACHE_MODES)
        _check(self.cache_budget_mb >= 0, f"{p}.cache_budget_mb", self.cache_budget_mb, "must be >= 0")
        _choice(f"{p}.check_images", self.check_images, CHECK_MODES)
        _check(self.shuffle_buffer >= 1, f"{p}.shuffle_buffer", self.shuffle_buffer, "must be at least 1")
        _check(0.0 < self.validation_fraction < 1.0, f"{p}.validation_fraction", self.validation_fraction,
               "must be in (0, 1)")
        _check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "must be at least 1")
        if self.image_size is not None:
            _check(len(self.image_size) == 2 and min(self.image_size) >= 1, f"{p}.image_size", self.image_size,
                   "must be [height, width]")
        self.synthetic.validate(f"{p}.synthetic")


@dataclass
class DataOptions(DataSettings):
    """How `open_source` reads a source: the `data.*` settings, checked, plus what only code sets.

    `open_source(source, options)` sets `source` to the source it opens.
    `image_size` becomes a tuple and `channels` an int (or `auto`).
    Args (besides `DataSettings`'):
        num_processes, process_id: this process's disjoint part of every split.
        scan_workers: threads of the header pass over image files.
    """

    num_processes: int = 1
    process_id: int = 0
    scan_workers: int = 16

    def __post_init__(self):
        self.validate()
        if self.image_size is not None:
            self.image_size = tuple(int(v) for v in self.image_size)
        self.channels = "auto" if str(self.channels) == "auto" else int(self.channels)

    def validate(self, p: str = "data") -> None:
        super().validate(p)
        _check(self.num_processes >= 1, f"{p}.num_processes", self.num_processes, "must be at least 1")
        _check(0 <= self.process_id < self.num_processes, f"{p}.process_id", self.process_id,
               f"must be in [0, num_processes={self.num_processes})")

    @classmethod
    def from_object(cls, obj, **overrides) -> "DataOptions":
        """Options from any object (a config's `data` section) or mapping with some of these field names."""
        names = [f.name for f in dataclasses.fields(cls)]
        get = obj.get if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
        values = {k: get(k) for k in names if get(k, None) is not None}
        values.update(overrides)
        return cls(**values)


# ----------------------------------------------------------------------------- metadata


@dataclass
class DatasetInfo:
    """What is known of a source without decoding its images."""

    source: str
    class_names: list[str]
    image_shape: tuple[int, int, int]  # after preprocessing
    counts: dict[str, int]  # this process's images per split
    total_counts: dict[str, int]  # the whole split's
    cache: str  # the resolved choice: memory | disk | none
    bad_files: list[tuple[str, str]] = field(default_factory=list)  # skipped (path, reason)
    num_processes: int = 1
    process_id: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def decoded_bytes(self, split: str | None = None) -> int:
        """Bytes of the decoded uint8 images of `split` (all three when None) in this process."""
        n = self.counts[split] if split else sum(self.counts.values())
        return int(n * np.prod(self.image_shape))

    def summary(self) -> str:
        c = self.counts
        s = (f"{self.source}: train {c['train']}, validation {c['validation']}, test {c['test']} images of shape "
             f"{self.image_shape}, {self.num_classes} classes, cache {self.cache}")
        if self.num_processes > 1:
            s += f", process {self.process_id} of {self.num_processes}"
        if self.bad_files:
            s += f"; skipped {len(self.bad_files)} unreadable file(s): " + ", ".join(p for p, _ in self.bad_files[:10])
            s += " ..." if len(self.bad_files) > 10 else ""
        return s

    def params(self) -> dict[str, str | int]:
        """Flat figures to log (e.g. `mlflow.log_params`)."""
        out = {f"data.num_{k}": v for k, v in self.total_counts.items()}
        out.update({"data.num_classes": self.num_classes, "data.image_shape": "x".join(map(str, self.image_shape)),
                    "data.cache_resolved": self.cache, "data.bad_images": len(self.bad_files)})
        return out

    def to_dict(self) -> dict:
        """Everything, JSON-ready (e.g. `mlflow.log_dict(info.to_dict(), "data.json")`)."""
        d = dataclasses.asdict(self)
        d["image_shape"] = list(self.image_shape)
        d["bad_files"] = [list(b) for b in self.bad_files]
        return d
