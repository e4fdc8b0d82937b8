"""Streaming sources: a source string -> lazily read `tf.data` splits plus their metadata.

The array API of data/sources.py (`load_splits`) holds every image in memory;
this module is the streaming one beside it (issue 13). `open_source` returns a
`StreamSplits`: three `Split`s (train, validation, test) whose `elements()` is
a `tf.data.Dataset` of `(uint8 image [H, W, C], int64 label)` read from disk
and decoded in the graph, in parallel, and a `DatasetInfo` (class names,
per-split counts, image shape, bad files skipped) known without decoding the
images: from the file list and a header pass, from the `dataset.json` beside
TFRecord shards, or from the tfds `DatasetInfo`.

Sources:
    folder:<path>    one subfolder per class, directly under <path> (test and then
                     validation carved off, stratified and seeded, by file list) or
                     under <path>/train and <path>/test (and optionally validation/
                     or val/). PNG, JPEG, BMP and GIF (first frame): what
                     `tf.io.decode_image` reads.
    tfrecord:<glob>  shards written by `make convert` (data/tfrecord.py); the glob may
                     also be the shards' directory. `dataset.json` beside them holds
                     the class names, image shape, splits, per-file counts and labels.
    tfds:<name>      `builder.as_dataset` with the image left encoded
                     (`tfds.decode.SkipDecoding`) and decoded in the pipeline.
    npz:<path>, synthetic
                     loaded into memory by data/sources.py (small by nature) and
                     exposed through the same `Split` interface.

Why not `keras.utils.image_dataset_from_directory`: it fits neither the split
nor the error contract. It splits only by a fraction of a shuffled file list
(not stratified per class, no train/ test/ val/ layout), gives no
three-way split, returns float32 images already batched (so no uint8 cache, no
per-process sharding before decoding, no random crop after caching), and a
corrupt file surfaces as a TensorFlow error in the middle of an epoch instead
of one error naming the file before training. Its decode (`tf.io.decode_image`
+ `tf.image.resize`) is the same as here; bench/bench_streaming.py compares
their speed.

Preprocessing (the same for every source): channels (`auto`: 1 when every
image is grayscale, else 3; or 1, 3), then `image_size` with `resize`:
`stretch` (bilinear, antialiased), `crop` (scale to cover, keeping the aspect
ratio, then a center crop; a random crop on the training split when
`random_crop=True`), `pad` (scale to fit, then zero padding around the
center). Images already at `image_size` pass unchanged.

Caching (`cache`): `memory`, `disk` (a `tf.data` cache file under
`<cache_dir>/stream/<key>/`, key = hash of the source, its file list,
preprocessing, split, seed and shard), `none`, or `auto`: `memory` when the
decoded size of the three splits (count x H x W x C bytes, from metadata) is
at most `cache_budget_mb` (default 512 MiB), else `none`.

Sharding (`num_processes`, `process_id`): every split is cut before decoding
into `num_processes` disjoint parts whose union is the split: element i goes
to process i % num_processes (for TFRecords with at least as many files of a
split as processes, whole files go round-robin instead). Counts in
`DatasetInfo.counts` are this process's; `total_counts` are the whole split's.
"""

from __future__ import annotations

import dataclasses
import glob as globlib
import hashlib
import json
import math
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from data.sources import DataSourceError, load_splits, stratified_split

AUTOTUNE = tf.data.AUTOTUNE
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
RESIZE_MODES = ("stretch", "crop", "pad")
CACHE_MODES = ("auto", "memory", "disk", "none")
METADATA_FILE = "dataset.json"
SPLITS = ("train", "validation", "test")

__all__ = [
    "DataOptions",
    "DatasetInfo",
    "Split",
    "StreamSplits",
    "BadImagesError",
    "open_source",
    "scan_images",
    "preprocess_image",
    "decode_image",
]


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


# ----------------------------------------------------------------------------- header pass

_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def _sniff(head: bytes) -> str | None:
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head.startswith(b"BM"):
        return "bmp"
    return None


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _header_shape(f, kind: str, head: bytes):
    """(height, width, is_gray) from the header bytes, without PIL (about 10x faster); None if unsure."""
    if kind == "png" and len(head) >= 26 and head[12:16] == b"IHDR":
        return int.from_bytes(head[20:24], "big"), int.from_bytes(head[16:20], "big"), head[25] in (0, 4)
    if kind == "gif" and len(head) >= 10:
        return int.from_bytes(head[8:10], "little"), int.from_bytes(head[6:8], "little"), False
    if kind == "bmp" and len(head) >= 30:
        w = int.from_bytes(head[18:22], "little", signed=True)
        h = int.from_bytes(head[22:26], "little", signed=True)
        return abs(h), abs(w), int.from_bytes(head[28:30], "little") == 8
    if kind == "jpeg":
        f.seek(2)
        for _ in range(256):  # segments before the frame header (APPn, DQT, ...)
            marker = f.read(4)
            if len(marker) < 4 or marker[0] != 0xFF:
                return None
            code, length = marker[1], int.from_bytes(marker[2:4], "big")
            if code in _JPEG_SOF:
                sof = f.read(6)
                if len(sof) < 6:
                    return None
                return int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), sof[5] == 1
            if code == 0xFF or length < 2:
                return None
            f.seek(length - 2, 1)
    return None


def _inspect(path: str, full: bool = False):
    """(height, width, is_gray) of an image file, or the reason it is unreadable.

    Reads the header (size and channels from the PNG IHDR, JPEG frame header,
    GIF screen or BMP info header; PIL for anything else) and the last bytes:
    a PNG must end with its IEND chunk, a JPEG with its EOI marker, a GIF with
    its trailer, and a BMP must be as long as its header says and be of a kind
    `tf.io.decode_bmp` reads. That finds truncated files without decoding them.
    A file whose end looks wrong (data appended after the end marker is legal)
    is decoded in full before it is called truncated; `full` decodes every file
    (finds corruption in the middle too, at the cost of a decode per file).
    """
    from PIL import Image

    try:
        size = os.path.getsize(path)
        if size == 0:
            return "empty file"
        with open(path, "rb") as f:
            head = f.read(32)
            kind = _sniff(head)
            if kind is None:
                return "not a PNG, JPEG, BMP or GIF file"
            f.seek(max(0, size - 32))
            tail = f.read()
            shape = _header_shape(f, kind, head)
        suspect = None
        if kind == "png" and b"IEND" not in tail:
            suspect = "truncated PNG (no IEND chunk at the end)"
        elif kind == "jpeg" and b"\xff\xd9" not in tail:
            suspect = "truncated JPEG (no end-of-image marker)"
        elif kind == "gif" and b";" not in tail[-4:]:
            suspect = "truncated GIF (no trailer)"
        elif kind == "bmp":
            if len(head) >= 6 and int.from_bytes(head[2:6], "little") > size:
                return "truncated BMP (shorter than its header says)"
            if len(head) >= 34:
                bpp = int.from_bytes(head[28:30], "little")
                compression = int.from_bytes(head[30:34], "little")
                if bpp not in (8, 24, 32) or compression not in (0, 3):
                    return f"a BMP tf.io.decode_bmp cannot read ({bpp} bits per pixel, compression {compression})"
        if shape is not None and not suspect and not full:
            h, w, gray = shape
        else:
            with Image.open(path) as im:
                w, h = im.size
                gray = im.mode in _GRAY_MODES
                if suspect or full:
                    try:
                        im.load()
                    except Exception as e:
                        why = str(e).splitlines()[0] if str(e) else type(e).__name__
                        return suspect or f"corrupt {kind.upper()} ({why})"
        if w < 1 or h < 1:
            return f"empty image ({w}x{h})"
        return int(h), int(w), bool(gray)
    except Exception as e:  # PIL raises many types for broken headers
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"


def scan_images(paths, workers: int = 16, full: bool = False):
    """The header pass over `paths`, in parallel threads: a list of `(h, w, is_gray)` or reason strings.

    `full`: decode every file too (see `_inspect`)."""
    paths = list(paths)
    if not paths:
        return []
    with ThreadPoolExecutor(max(1, min(workers, len(paths)))) as pool:
        return list(pool.map(lambda p: _inspect(p, full), paths))


# ----------------------------------------------------------------------------- graph ops


def decode_image(encoded, channels: int = 0):
    """Encoded PNG/JPEG/BMP/GIF bytes -> uint8 [H, W, C] (`channels` 0: as stored, 1 to 4; or 3; GIF: first frame)."""
    image = tf.io.decode_image(encoded, channels=channels, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, channels or None])
    return image


def _to_uint8(x):
    return tf.cast(tf.clip_by_value(tf.round(x), 0.0, 255.0), tf.uint8)


def convert_channels(image, channels: int):
    """uint8 [H, W, C] with C in 1-4 -> [H, W, channels] (gray = ITU-R 601 luma, alpha dropped)."""
    static = image.shape[-1]
    if static is not None:  # known when traced (arrays): choose in Python
        if static == channels:
            return image
        if channels == 1:
            return image[..., :1] if static < 3 else _to_uint8(tf.image.rgb_to_grayscale(
                tf.cast(image[..., :3], tf.float32)))
        return image[..., :3] if static >= 3 else tf.tile(image[..., :1], [1, 1, 3])
    c = tf.shape(image)[-1]
    if channels == 1:
        def gray():
            return _to_uint8(tf.image.rgb_to_grayscale(tf.cast(image[..., :3], tf.float32)))

        out = tf.cond(c >= 3, gray, lambda: image[..., :1])
    else:
        out = tf.cond(c >= 3, lambda: image[..., :3], lambda: tf.tile(image[..., :1], [1, 1, 3]))
    out.set_shape([None, None, channels])
    return out


def _cover_size(h, w, th, tw):
    """The smallest size with the aspect ratio of (h, w) that covers (th, tw)."""
    hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
    scale = tf.maximum(th / hf, tw / wf)
    nh = tf.maximum(tf.cast(tf.math.round(hf * scale), tf.int32), th)
    nw = tf.maximum(tf.cast(tf.math.round(wf * scale), tf.int32), tw)
    return nh, nw


def _resize_to(image, nh, nw):
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    return tf.cond(tf.logical_and(tf.equal(h, nh), tf.equal(w, nw)), lambda: image,
                   lambda: _to_uint8(tf.image.resize(image, tf.stack([nh, nw]), antialias=True)))


def preprocess_image(image, image_size, resize: str = "stretch", channels: int = 3, *, cover_only: bool = False):
    """Channels, then `image_size` by `resize` (deterministic: center crop and pad).

    `cover_only` (resize `crop`): only scale to cover `image_size`; the crop is
    left to `random_crop` (training).
    """
    image = convert_channels(image, channels)
    if image_size is None:
        return image
    th, tw = int(image_size[0]), int(image_size[1])
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    if resize == "stretch":
        out = _resize_to(image, th, tw)
    elif resize == "crop":
        nh, nw = _cover_size(h, w, th, tw)
        out = _resize_to(image, nh, nw)
        if cover_only:
            out.set_shape([None, None, channels])
            return out
        out = tf.image.crop_to_bounding_box(out, (nh - th) // 2, (nw - tw) // 2, th, tw)
    elif resize == "pad":
        hf, wf = tf.cast(h, tf.float64), tf.cast(w, tf.float64)
        scale = tf.minimum(th / hf, tw / wf)
        nh = tf.clip_by_value(tf.cast(tf.math.round(hf * scale), tf.int32), 1, th)
        nw = tf.clip_by_value(tf.cast(tf.math.round(wf * scale), tf.int32), 1, tw)
        out = tf.image.pad_to_bounding_box(_resize_to(image, nh, nw), (th - nh) // 2, (tw - nw) // 2, th, tw)
    else:
        raise ValueError(f"resize must be one of {RESIZE_MODES}, got {resize!r}")
    out.set_shape([th, tw, channels])
    return out


# ----------------------------------------------------------------------------- splits


class Split:
    """One split of a source. `elements()` is the lazily read `tf.data.Dataset`.

    Kinds: `files` (paths + labels), `arrays` (uint8 images in memory + labels),
    `records` (TFRecord files of `image/encoded` + `image/label`, with per-file
    counts) and `tfds` (a tfds builder split, images left encoded). Records and
    tfds may carry an index mask (a carved split, an element-level shard).
    """

    def __init__(self, name, kind, labels, *, stream, paths=None, images=None, files=None, file_counts=None,
                 tfds_args=None, mask=None, total=None):
        self.name = name
        self.kind = kind
        self._labels = None if labels is None else np.asarray(labels, np.int64)
        self._stream = stream  # the shared _StreamConfig of the source
        self.paths = paths
        self.images = images
        self.files = files
        self.file_counts = file_counts
        self.tfds_args = tfds_args
        self.mask = mask
        self.count = int(mask.sum()) if mask is not None else (
            int(sum(file_counts)) if file_counts is not None else len(self._labels))
        self.total_count = self.count if total is None else int(total)

    def __len__(self):
        return self.count

    # -- what is known without decoding

    def labels(self) -> np.ndarray:
        """int64 labels in the split's (unshuffled) order; tfds without a carve reads them (images stay encoded)."""
        if self._labels is None:
            self._labels = np.concatenate(
                [y for y in self._raw(False, 0).map(lambda raw, y: y).batch(4096).as_numpy_iterator()]
                or [np.zeros(0, np.int64)])
        return self._labels

    # -- reading

    def _raw(self, shuffle: bool, seed: int, indices=None) -> tf.data.Dataset:
        """(path, encoded bytes or uint8 image; int64 label), unpreprocessed; `indices`: a sorted subset."""
        s = self._stream
        if self.kind in ("files", "arrays"):
            idx = np.arange(self.count) if indices is None else np.asarray(indices)
            ds = tf.data.Dataset.from_tensor_slices(idx)
            if shuffle:  # a permutation of indices: no image is held in a shuffle buffer
                ds = ds.shuffle(max(1, len(idx)), seed=seed, reshuffle_each_iteration=True)
            items = tf.constant(self.paths if self.kind == "files" else self.images)
            labels = tf.constant(self._labels)

            def lookup(i):
                return tf.gather(items, i), tf.gather(labels, i)

            return ds.map(lookup)  # files: paths, read in the decoding map
        if self.kind == "records":
            files = list(self.files)
            ordered = self.mask is not None or indices is not None  # masks index the stored order
            if shuffle and not ordered and len(files) > 1:
                names = tf.data.Dataset.from_tensor_slices(files).shuffle(len(files), seed=seed,
                                                                          reshuffle_each_iteration=True)
                ds = names.interleave(tf.data.TFRecordDataset, cycle_length=min(8, len(files)), block_length=1,
                                      num_parallel_calls=AUTOTUNE, deterministic=True)
            else:
                ds = tf.data.TFRecordDataset(files)
            ds = ds.map(_parse_record, num_parallel_calls=AUTOTUNE)
        else:  # tfds
            import tensorflow_datasets as tfds

            builder, split, ikey, lkey = self.tfds_args
            ds = builder.as_dataset(split=split, shuffle_files=False, decoders={ikey: tfds.decode.SkipDecoding()},
                                    read_config=tfds.ReadConfig(try_autocache=False))
            ds = ds.map(lambda ex: (ex[ikey], tf.cast(ex[lkey], tf.int64)), num_parallel_calls=AUTOTUNE)
        keep = self.mask
        if indices is not None:
            sel = np.zeros(len(keep) if keep is not None else self.count, bool)
            where = np.flatnonzero(keep) if keep is not None else np.arange(self.count)
            sel[where[indices]] = True
            keep = sel
        if keep is not None:
            mask = tf.constant(keep)

            def kept(i, element):
                return tf.gather(mask, i)

            def drop_index(i, element):
                return element

            ds = ds.enumerate().filter(kept).map(drop_index)
        if shuffle:
            ds = ds.shuffle(max(1, min(self.count, s.options.shuffle_buffer)), seed=seed,
                            reshuffle_each_iteration=True)
        return ds

    def _preprocessed(self, shuffle, seed, cover_only, indices=None):
        s = self._stream
        opts = s.options
        encoded = self.kind != "arrays"
        is_path = self.kind == "files"

        def prep(x, y):
            if is_path:
                x = tf.io.read_file(x)
            # Decoding straight to 3 channels (gray replicated, alpha dropped) is what
            # convert_channels does, without a second pass over the pixels.
            image = decode_image(x, 3 if s.channels == 3 else 0) if encoded else x
            out = preprocess_image(image, opts.image_size, opts.resize, s.channels, cover_only=cover_only)
            if opts.image_size is None and None not in s.image_shape:
                out = tf.ensure_shape(out, s.image_shape)
            return out, y

        ds = self._raw(shuffle, seed, indices)
        if s.skip_errors:  # a file that passed the header pass but does not decode: dropped, not a traceback
            ds = ds.map(prep, num_parallel_calls=AUTOTUNE, deterministic=True).ignore_errors(log_warning=True)
        else:
            ds = ds.map(prep, num_parallel_calls=AUTOTUNE, deterministic=True)
            if self.kind in ("records", "tfds"):  # known from metadata: Keras then knows the epoch's length
                n = self.count if indices is None else len(indices)
                ds = ds.apply(tf.data.experimental.assert_cardinality(n))
        return ds

    def elements(self, *, training: bool = False, seed: int | None = None) -> tf.data.Dataset:
        """`(uint8 image [H, W, C], int64 label)` of this process's part of the split, unbatched.

        Evaluation (`training=False`): the split's order, center crop/pad.
        Training: shuffled (seeded; a new order each epoch) and randomly cropped
        when `random_crop` and `resize: crop`; cached according to the options.
        """
        s = self._stream
        opts = s.options
        seed = opts.seed if seed is None else int(seed)
        random_crop = training and opts.random_crop and opts.resize == "crop" and opts.image_size is not None
        cached = s.cache != "none"
        ds = self._preprocessed(training and not cached, seed, cover_only=random_crop)
        if cached:
            if s.cache == "memory":
                ds = ds.cache()
            else:
                ds = ds.cache(s.disk_cache_path(self.name, random_crop))
            if training:
                buffer = self.count if s.cache == "memory" else min(self.count, opts.shuffle_buffer)
                ds = ds.shuffle(max(1, buffer), seed=seed, reshuffle_each_iteration=True)
        if random_crop:
            th, tw = opts.image_size
            c = s.channels
            seeds = tf.data.Dataset.random(seed=seed + 7919, rerandomize_each_iteration=True).batch(2)
            ds = tf.data.Dataset.zip((ds, seeds)).map(
                lambda e, k: (tf.image.stateless_random_crop(e[0], [th, tw, c], k), e[1]),
                num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds

    def take_subset(self, max_images: int, seed: int = 0) -> tf.data.Dataset:
        """At most `max_images` elements: the seeded subset of `pipelines.evaluation.eval_subset`
        (`np.sort(default_rng(seed).choice(n, max_images, replace=False))`), in the split's order.
        Only those images are decoded."""
        if self.count <= max_images:
            return self.elements()
        idx = np.sort(np.random.default_rng(seed).choice(self.count, max_images, replace=False))
        return self._preprocessed(False, 0, cover_only=False, indices=idx)

    def arrays(self, max_images: int | None = None, seed: int = 0):
        """(uint8 images [n, H, W, C], int64 labels [n]) as NumPy; at most `max_images` (a seeded subset)."""
        ds = self.elements() if max_images is None else self.take_subset(max_images, seed)
        xs, ys = [], []
        for x, y in ds.batch(256).as_numpy_iterator():
            xs.append(x)
            ys.append(y)
        shape = self._stream.image_shape
        if not xs:
            return np.zeros((0, *shape), np.uint8), np.zeros(0, np.int64)
        return np.concatenate(xs), np.concatenate(ys)


def _parse_record(serialized):
    ex = tf.io.parse_single_example(serialized, {"image/encoded": tf.io.FixedLenFeature([], tf.string),
                                                 "image/label": tf.io.FixedLenFeature([], tf.int64)})
    return ex["image/encoded"], ex["image/label"]


@dataclass
class _StreamConfig:
    """What every split of one opened source shares."""

    options: DataOptions
    key: str  # identifies the source's content and preprocessing, for disk caches
    channels: int = 3
    image_shape: tuple[int, int, int] = (0, 0, 0)
    cache: str = "none"
    skip_errors: bool = False
    native_size: tuple[int, int] | None = None  # the stored images' size when they all agree
    native_channels: int = 3  # 1 when every stored image is grayscale
    mixed_sizes_hint: str = ""

    def disk_cache_path(self, split: str, cover_only: bool) -> str:
        o = self.options
        key = hashlib.sha256(json.dumps([self.key, split, list(self.image_shape), o.resize, cover_only,
                                         o.num_processes, o.process_id, o.seed, o.validation_fraction]).encode())
        d = os.path.join(o.cache_dir, "stream", key.hexdigest()[:20])
        os.makedirs(d, exist_ok=True)
        prefix = os.path.join(d, split)
        # A run killed while writing leaves a lockfile without an index; tf.data would refuse it.
        if not os.path.exists(prefix + ".index"):
            for stale in globlib.glob(prefix + "*.lockfile") + globlib.glob(prefix + ".data-*"):
                os.remove(stale)
        return prefix


@dataclass
class StreamSplits:
    """The three splits of a source and what is known of them (drop-in for `Splits`' metadata)."""

    train: Split
    validation: Split
    test: Split
    info: DatasetInfo

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    @property
    def num_classes(self) -> int:
        return self.info.num_classes

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.info.image_shape

    @property
    def source(self) -> str:
        return self.info.source

    def split(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation, "val": self.validation, "test": self.test}[name]


# ----------------------------------------------------------------------------- sources


def _shard_indices(n: int, o: DataOptions) -> np.ndarray:
    return np.arange(o.process_id, n, o.num_processes)


def _class_dirs(root: str) -> list[str]:
    return sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith("."))


def _list_split(root: str, class_names: list[str]):
    paths, labels = [], []
    for c, name in enumerate(class_names):
        d = os.path.join(root, name)
        if not os.path.isdir(d):
            continue
        for fn in sorted(os.listdir(d)):
            p = os.path.join(d, fn)
            if fn.startswith(".") or not os.path.isfile(p):
                continue
            paths.append(p)
            labels.append(c)
    return np.asarray(paths, dtype=object), np.asarray(labels, np.int64)


def list_folder(root: str, options: DataOptions):
    """The file lists of `folder:<root>` (before the header pass): ({split: (paths, labels)}, class names)."""
    if not os.path.isdir(root):
        raise DataSourceError(f"folder:{root}: no such directory")
    top = _class_dirs(root)
    if "train" in top and "test" in top:
        class_names = _class_dirs(os.path.join(root, "train"))
        if not class_names:
            raise DataSourceError(f"folder:{root}/train: no class subfolders")
        out = {"train": _list_split(os.path.join(root, "train"), class_names),
               "test": _list_split(os.path.join(root, "test"), class_names)}
        for vname in ("validation", "val"):
            if vname in top:
                out["validation"] = _list_split(os.path.join(root, vname), class_names)
                break
        return out, class_names, True
    if not top:
        raise DataSourceError(f"folder:{root}: expected one subfolder per class (or train/ and test/)")
    return {"all": _list_split(root, top)}, top, False


def _open_folder(root: str, o: DataOptions, stream: _StreamConfig):
    lists, class_names, has_test = list_folder(root, o)
    every = np.concatenate([p for p, _ in lists.values()])
    if len(every) == 0:
        raise DataSourceError(f"folder:{root}: no image files in its class subfolders")
    found = scan_images(every, o.scan_workers, full=o.check_images == "full")
    bad = [(p, r) for p, r in zip(every, found) if isinstance(r, str)]
    if bad and not o.skip_bad_images:
        raise BadImagesError(f"folder:{root}", bad)
    badset = {p for p, _ in bad}
    good = [r for r in found if not isinstance(r, str)]
    if not good:
        raise DataSourceError(f"folder:{root}: none of its {len(every)} files is a readable image")
    lists = {k: (p[[x not in badset for x in p]], y[[x not in badset for x in p]]) for k, (p, y) in lists.items()}
    if not has_test:  # the same carve as data.sources.load_splits: test with seed + 1, then validation with seed
        (p, y), test = stratified_split(*lists.pop("all"), o.validation_fraction, o.seed + 1)
        lists = {"train": (p, y), "test": test}
    if "validation" not in lists:
        if len(lists["train"][0]) < 2:
            raise DataSourceError(f"folder:{root}: the training split needs at least 2 images")
        lists["train"], lists["validation"] = stratified_split(*lists["train"], o.validation_fraction, o.seed)
    channels = o.channels if o.channels != "auto" else (1 if all(g for _, _, g in good) else 3)
    sizes = sorted({(h, w) for h, w, _ in good})
    stream.native_size = sizes[0] if len(sizes) == 1 else None
    stream.native_channels = 1 if all(g for _, _, g in good) else 3
    stream.mixed_sizes_hint = f"({len(sizes)} sizes, e.g. {sizes[0]} and {sizes[-1]})"
    shape = (*(o.image_size or stream.native_size or (None, None)), channels)
    fingerprint = hashlib.sha256()
    for k in SPLITS:
        for p in lists[k][0]:
            st = os.stat(p)
            fingerprint.update(f"{k}|{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    stream.key = f"folder:{os.path.abspath(root)}:{fingerprint.hexdigest()}"
    splits = {}
    for k in SPLITS:
        paths, labels = lists[k]
        idx = _shard_indices(len(paths), o)
        splits[k] = Split(k, "files", labels[idx], stream=stream, paths=paths[idx].astype(str), total=len(paths))
    return splits, class_names, shape, channels, bad


def _open_arrays(source: str, o: DataOptions, stream: _StreamConfig):
    s = load_splits(source, seed=o.seed, validation_fraction=o.validation_fraction, data_dir=o.data_dir,
                    download=o.download, image_size=None, cache_dir=o.cache_dir,
                    synthetic_train_size=o.synthetic_train_size, synthetic_test_size=o.synthetic_test_size)
    c_in = s.image_shape[-1]
    channels = o.channels if o.channels != "auto" else (1 if c_in == 1 else 3)
    shape = (*(o.image_size or s.image_shape[:2]), channels)
    stream.native_size = tuple(s.image_shape[:2])
    stream.native_channels = 1 if c_in == 1 else 3
    splits = {}
    digest = hashlib.sha256()
    for k in SPLITS:
        x, y = getattr(s, k)
        digest.update(np.ascontiguousarray(y).tobytes())
        digest.update(np.ascontiguousarray(x[:64]).tobytes())
        idx = _shard_indices(len(x), o)
        splits[k] = Split(k, "arrays", y[idx], stream=stream, images=x[idx], total=len(x))
    stream.key = f"{source}:{o.synthetic_train_size}:{o.synthetic_test_size}:{digest.hexdigest()}"
    return splits, s.class_names, shape, channels, []


def _split_masks(total_len: int, masks_or_none, o: DataOptions):
    """Combine a carve mask with the element-level shard of this process."""
    base = np.ones(total_len, bool) if masks_or_none is None else masks_or_none
    where = np.flatnonzero(base)
    keep = np.zeros(total_len, bool)
    keep[where[o.process_id::o.num_processes]] = True
    return keep


def read_metadata(pattern: str):
    """The shard files matched by `tfrecord:<pattern>` and the `dataset.json` beside them."""
    if os.path.isdir(pattern):
        pattern = os.path.join(pattern, "*.tfrecord")
    files = sorted(globlib.glob(os.path.expanduser(pattern)))
    if not files:
        raise DataSourceError(f"tfrecord:{pattern}: no files match")
    meta_path = os.path.join(os.path.dirname(files[0]), METADATA_FILE)
    if not os.path.isfile(meta_path):
        raise DataSourceError(f"tfrecord:{pattern}: no {METADATA_FILE} beside the shards; write them with "
                              f"`make convert SRC=<source> DEST=<dir>`")
    with open(meta_path) as f:
        meta = json.load(f)
    return files, meta, os.path.dirname(files[0])


def _open_tfrecord(pattern: str, o: DataOptions, stream: _StreamConfig):
    files, meta, root = read_metadata(pattern)
    matched = {os.path.abspath(f) for f in files}
    splits = {}
    for k in SPLITS:
        sm = meta["splits"].get(k)
        if sm is None:
            continue
        names = [os.path.abspath(os.path.join(root, f)) for f in sm["files"]]
        counts = list(sm["counts"])
        labels = np.asarray(sm["labels"], np.int64) if sm.get("labels") is not None else None
        picked = [i for i, f in enumerate(names) if f in matched]
        if not picked:
            continue
        missing = [f for i, f in enumerate(names) if i in picked and not os.path.isfile(f)]
        if missing:
            raise DataSourceError(f"tfrecord:{pattern}: {k} shard {missing[0]} is missing")
        starts = np.concatenate([[0], np.cumsum(counts)])
        if labels is not None:
            labels = np.concatenate([labels[starts[i]:starts[i + 1]] for i in picked])
        names = [names[i] for i in picked]
        counts = [counts[i] for i in picked]
        splits[k] = (names, counts, labels)
    if "train" not in splits or "test" not in splits:
        raise DataSourceError(f"tfrecord:{pattern}: needs train and test shards, has {sorted(splits)}")
    if "validation" not in splits:
        names, counts, labels = splits["train"]
        if labels is None:
            raise DataSourceError(f"tfrecord:{pattern}: no validation shards and no labels in {METADATA_FILE} to carve one")
        idx = np.arange(len(labels))
        (rest, _), (held, _) = stratified_split(idx, labels, o.validation_fraction, o.seed)
        train_mask = np.zeros(len(labels), bool)
        train_mask[rest] = True
        splits["train"] = (names, counts, labels, train_mask)
        splits["validation"] = (names, counts, labels, ~train_mask)
    out = {}
    for k in SPLITS:
        names, counts, labels, *carve = splits[k]
        carve = carve[0] if carve else None
        total = int(carve.sum()) if carve is not None else int(sum(counts))
        if carve is None and len(names) >= o.num_processes:  # whole files round-robin
            pick = list(range(o.process_id, len(names), o.num_processes))
            starts = np.concatenate([[0], np.cumsum(counts)])
            lab = None if labels is None else np.concatenate(
                [labels[starts[i]:starts[i + 1]] for i in pick] or [np.zeros(0, np.int64)])
            out[k] = Split(k, "records", lab, stream=stream, files=[names[i] for i in pick],
                           file_counts=[counts[i] for i in pick], total=total)
        else:
            mask = _split_masks(int(sum(counts)), carve, o)
            out[k] = Split(k, "records", None if labels is None else labels[mask], stream=stream, files=names,
                           file_counts=counts, mask=mask, total=total)
    class_names = list(meta["class_names"])
    hint = meta.get("channels") or 3
    channels = o.channels if o.channels != "auto" else int(hint)
    stream.native_size = tuple(meta["image_shape"][:2]) if meta.get("image_shape") else None
    stream.native_channels = int(hint)
    shape = (*(o.image_size or stream.native_size or (None, None)), channels)
    stream.key = f"tfrecord:{os.path.abspath(root)}:{meta.get('fingerprint', '')}:{sorted(matched)}"
    return out, class_names, shape, channels, []


def _open_tfds(name: str, o: DataOptions, stream: _StreamConfig):
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - it is in requirements.txt
        raise DataSourceError(f"tfds:{name}: tensorflow-datasets is not importable ({e})") from None
    # Reuse the array loader's checks (not prepared, unknown name) without reading any image.
    try:
        builder = tfds.builder(name, data_dir=o.data_dir)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataSourceError(f"tfds:{name}: unknown dataset or unreadable data_dir {o.data_dir!r} ({first})") from None
    if not builder.is_prepared():
        if not o.download:
            where = o.data_dir or "~/tensorflow_datasets"
            raise DataSourceError(
                f"tfds:{name}: not prepared in {where}. Prepare it on a machine with network access with "
                f"`python -c \"import tensorflow_datasets as tfds; tfds.builder('{name}', data_dir='{where}')"
                f".download_and_prepare()\"` and copy the directory here (or set data.download=true)")
        builder.download_and_prepare()
    info = builder.info
    features = info.features
    keys = info.supervised_keys or (
        ("image", "label") if {"image", "label"} <= set(getattr(features, "keys", lambda: [])()) else None)
    if not keys:
        raise DataSourceError(f"tfds:{name}: the dataset has no (image, label) supervised keys")
    ikey, lkey = keys
    found = {}
    for k, names in {"train": ("train",), "test": ("test",), "validation": ("validation", "val")}.items():
        hit = next((s for s in names if s in info.splits), None)
        if hit is not None:
            found[k] = hit
    if "train" not in found or "test" not in found:
        raise DataSourceError(f"tfds:{name}: needs 'train' and 'test' splits, has {sorted(info.splits)}")
    out = {}
    carve = None
    if "validation" not in found:
        train_labels = Split("train", "tfds", None, stream=stream, tfds_args=(builder, found["train"], ikey, lkey),
                             mask=np.ones(info.splits[found["train"]].num_examples, bool)).labels()
        idx = np.arange(len(train_labels))
        (rest, _), _ = stratified_split(idx, train_labels, o.validation_fraction, o.seed)
        carve = np.zeros(len(idx), bool)
        carve[rest] = True
    for k in SPLITS:
        split_name = found.get(k, found["train"])
        n = info.splits[split_name].num_examples
        base = None
        if carve is not None and k in ("train", "validation") and "validation" not in found:
            base = carve if k == "train" else ~carve
        mask = _split_masks(n, base, o)
        out[k] = Split(k, "tfds", None, stream=stream, tfds_args=(builder, split_name, ikey, lkey), mask=mask,
                       total=int(base.sum()) if base is not None else n)
    label = features[lkey]
    class_names = list(getattr(label, "names", None) or [str(i) for i in range(getattr(label, "num_classes", 0))])
    shape_in = tuple(getattr(features[ikey], "shape", (None, None, None)))
    c_in = shape_in[-1] if len(shape_in) == 3 else None
    channels = o.channels if o.channels != "auto" else (1 if c_in == 1 else 3)
    stream.native_size = None if None in shape_in[:2] or len(shape_in) != 3 else tuple(shape_in[:2])
    stream.native_channels = 1 if c_in == 1 else 3
    shape = (*(o.image_size or stream.native_size or (None, None)), channels)
    stream.key = f"tfds:{name}:{info.version}:{os.path.abspath(o.data_dir or '~')}"
    return out, class_names, shape, channels, []


def open_source(source: str, options: DataOptions | None = None, *, allow_mixed_sizes: bool = False,
                **kwargs) -> StreamSplits:
    """Open `source` for streaming: the three splits and their metadata. Decodes no image.

    `options` (a `DataOptions`) or its fields as keyword arguments.
    `allow_mixed_sizes` (for `make convert`, which stores the files as they are):
    images of different sizes without `image_size` are not an error; the
    info's image shape then has None for height and width. Raises
    `DataSourceError` (a `ValueError`) for a missing or malformed source and its
    subclass `BadImagesError` for unreadable files (unless `skip_bad_images`).
    """
    o = options if options is not None else DataOptions(**kwargs)
    if options is not None and kwargs:
        o = dataclasses.replace(options, **kwargs)
    stream = _StreamConfig(options=o, key=source)
    if source == "synthetic" or source.startswith("npz:"):
        splits, class_names, shape, channels, bad = _open_arrays(source, o, stream)
    elif source.startswith("folder:") and len(source) > 7:
        splits, class_names, shape, channels, bad = _open_folder(os.path.expanduser(source[7:]), o, stream)
    elif source.startswith("tfrecord:") and len(source) > 9:
        splits, class_names, shape, channels, bad = _open_tfrecord(source[9:], o, stream)
    elif source.startswith("tfds:") and len(source) > 5:
        splits, class_names, shape, channels, bad = _open_tfds(source[5:], o, stream)
    else:
        raise DataSourceError(f"unknown data source {source!r}; use synthetic, npz:<path>, folder:<path>, "
                              f"tfrecord:<glob> or tfds:<name>")
    if splits["train"].total_count < 1:
        raise DataSourceError(f"{source}: the training split is empty")
    if None in shape[:2] and not allow_mixed_sizes:
        raise DataSourceError(f"{source}: images differ in size {stream.mixed_sizes_hint}; "
                              f"set data.image_size: [H, W] (and data.resize: stretch, crop or pad)")
    stream.channels = int(channels)
    stream.image_shape = tuple(None if v is None else int(v) for v in shape)
    stream.skip_errors = bool(o.skip_bad_images)
    counts = {k: splits[k].count for k in SPLITS}
    if o.cache == "auto":
        decoded = sum(counts.values()) * int(np.prod([v or 0 for v in stream.image_shape]))
        stream.cache = "memory" if decoded <= o.cache_budget_mb * 2**20 else "none"
    else:
        stream.cache = o.cache
    info = DatasetInfo(source=source, class_names=list(class_names), image_shape=stream.image_shape, counts=counts,
                       total_counts={k: splits[k].total_count for k in SPLITS}, cache=stream.cache,
                       bad_files=[(str(p), r) for p, r in bad], num_processes=o.num_processes,
                       process_id=o.process_id)
    n_classes = len(class_names)
    for k in SPLITS:
        lab = splits[k]._labels
        if lab is not None and lab.size and lab.max() >= n_classes:
            raise DataSourceError(f"{source}: {k} label {int(lab.max())} is outside the {n_classes} classes")
    return StreamSplits(splits["train"], splits["validation"], splits["test"], info)


def clear_disk_cache(cache_dir: str = ".cache") -> None:
    """Remove every streaming disk cache under `cache_dir`."""
    shutil.rmtree(os.path.join(cache_dir, "stream"), ignore_errors=True)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    return max(1, math.ceil(split.count / batch_size))
