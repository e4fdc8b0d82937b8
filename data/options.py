"""How a streaming source is read and what is known of it without decoding (data/streaming.py).

`DataOptions` (the `data.*` reading options, validated), `DatasetInfo` (class
names, per-split counts, image shape, bad files skipped), `BadImagesError`,
and the names every streaming module shares: `SPLITS`, `METADATA_FILE` (the
`dataset.json` beside TFRecord shards) and `CACHE_MODES`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np

from data.images import RESIZE_MODES
from data.sources import DataSourceError

CACHE_MODES = ("auto", "memory", "disk", "none")
METADATA_FILE = "dataset.json"
SPLITS = ("train", "validation", "test")

__all__ = ["DataOptions", "DatasetInfo", "BadImagesError", "SPLITS", "METADATA_FILE", "CACHE_MODES"]


class BadImagesError(DataSourceError):
    """Files under a class folder that are not readable images (corrupt, truncated, not an image).

    `bad` is the list of `(path, reason)`; the message names them (the first 10).
    A `ValueError` (through `DataSourceError`): the jobs end with exit code 2.
    """

    def __init__(self, source: str, bad: list[tuple[str, str]]):
        self.source = source
        self.bad = list(bad)
        shown = "; ".join(f"{p} ({r})" for p, r in self.bad[:10])
        more = f"; and {len(self.bad) - 10} more" if len(self.bad) > 10 else ""
        super().__init__(
            f"{source}: {len(self.bad)} unreadable image file(s): {shown}{more}. "
            f"Remove or fix them, or set data.skip_bad_images: true to skip them"
        )


# ----------------------------------------------------------------------------- options and metadata


@dataclass
class DataOptions:
    """How a source is read. Field names match the planned `data.*` config keys.

    Args:
        seed: seeds the carved splits, shuffling and random crops.
        validation_fraction: carved (stratified) from train when the source has no
            validation split; `folder:` without test/ carves the test split likewise.
        image_size: `[H, W]` every image is brought to, or None (sizes must agree).
        resize: `stretch | crop | pad`, how `image_size` is reached.
        channels: `auto | 1 | 3`.
        random_crop: with `resize: crop`, crop the training split at random places.
        cache: `auto | memory | disk | none`.
        cache_dir: where `disk` caches go (under `<cache_dir>/stream/`); also the
            synthetic digits' cache.
        cache_budget_mb: the largest decoded size `auto` caches in memory.
        skip_bad_images: skip unreadable files (reported in `DatasetInfo.bad_files`)
            instead of raising `BadImagesError`.
        check_images: `header` (the fast pass over headers and file ends) or
            `full` (also decode every file once, with PIL, before training).
        num_processes, process_id: this process's disjoint part of every split.
        shuffle_buffer: buffer of the record shuffle (TFRecord, tfds) and of a disk
            cache; file lists and in-memory caches are shuffled whole.
        scan_workers: threads of the header pass over image files.
        data_dir, download: tfds only.
        synthetic_train_size, synthetic_test_size: source `synthetic` only.
    """

    seed: int = 0
    validation_fraction: float = 0.1
    image_size: tuple[int, int] | None = None
    resize: str = "stretch"
    channels: str | int = "auto"
    random_crop: bool = False
    cache: str = "auto"
    cache_dir: str = ".cache"
    cache_budget_mb: float = 512
    skip_bad_images: bool = False
    check_images: str = "header"
    num_processes: int = 1
    process_id: int = 0
    shuffle_buffer: int = 10_000
    scan_workers: int = 16
    data_dir: str | None = None
    download: bool = False
    synthetic_train_size: int = 12000
    synthetic_test_size: int = 2000

    def __post_init__(self):
        def bad(key, why):
            raise DataSourceError(f"data.{key}: {why} (got {getattr(self, key)!r})")

        if self.image_size is not None:
            size = tuple(int(v) for v in self.image_size)
            if len(size) != 2 or min(size) < 1:
                bad("image_size", "must be [height, width] with both at least 1")
            self.image_size = size
        if self.resize not in RESIZE_MODES:
            bad("resize", f"must be one of {', '.join(RESIZE_MODES)}")
        if str(self.channels) not in ("auto", "1", "3"):
            bad("channels", "must be auto, 1 or 3")
        self.channels = "auto" if str(self.channels) == "auto" else int(self.channels)
        if self.check_images not in ("header", "full"):
            bad("check_images", "must be header or full")
        if self.cache not in CACHE_MODES:
            bad("cache", f"must be one of {', '.join(CACHE_MODES)}")
        if not 0.0 < self.validation_fraction < 1.0:
            bad("validation_fraction", "must be in (0, 1)")
        if self.num_processes < 1:
            bad("num_processes", "must be at least 1")
        if not 0 <= self.process_id < self.num_processes:
            bad("process_id", f"must be in [0, num_processes={self.num_processes})")
        if self.cache_budget_mb < 0:
            bad("cache_budget_mb", "must be at least 0")
        if self.shuffle_buffer < 1:
            bad("shuffle_buffer", "must be at least 1")

    @classmethod
    def from_object(cls, obj, **overrides) -> "DataOptions":
        """Options from any object (a config section) or mapping with some of these field names."""
        names = [f.name for f in dataclasses.fields(cls)]
        get = obj.get if isinstance(obj, dict) else (lambda k, d=None: getattr(obj, k, d))
        values = {k: get(k) for k in names if get(k, None) is not None}
        values.update(overrides)
        return cls(**values)


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
