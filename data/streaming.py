"""Streaming sources: a source string -> lazily read `tf.data` splits plus their metadata.

`open_source` (issue 13), the one entry the jobs use to read data, returns a
`StreamSplits`: three `Split`s (train, validation, test) whose `elements()` is
a `tf.data.Dataset` of `(uint8 image [H, W, C], int64 label)` read from disk
and decoded in the graph, in parallel, and a `DatasetInfo` (class names,
per-split counts, image shape, bad files skipped) known without decoding the
images: from the file list and a header pass, from the `dataset.json` beside
TFRecord shards, or from the tfds `DatasetInfo`.

Sources: the registry of data/sources/, one module per source, each of which
opens its source into the three `Split`s without decoding an image (files
stream from disk; `synthetic` and `npz:` are held in memory, small by nature,
and exposed through the same `Split` interface).

Why not `keras.utils.image_dataset_from_directory`: it fits neither the split
nor the error contract. It splits only by a fraction of a shuffled file list
(not stratified per class, no train/ test/ val/ layout), gives no
three-way split, returns float32 images already batched (so no uint8 cache, no
per-process sharding before decoding, no random crop after caching), and a
corrupt file surfaces as a TensorFlow error in the middle of an epoch instead
of one error naming the file before training. Its decode (`tf.io.decode_image`
+ `tf.image.resize`) is the same as here; bench/bench_streaming.py compares
their speed.

Modules: this one resolves the options and hands the source to its opener
(`open_source`); data/sources/ holds the openers (file lists, metadata,
carved splits, sharding); data/options.py `DataOptions`, `DatasetInfo` and
`BadImagesError`; data/images.py the header pass and the graph ops that
decode and preprocess (channels, `resize` to `image_size`: stretch, crop,
pad); data/splits.py `Split` (reading, caching, shuffling, random crops) and
`StreamSplits`. Every public name of those modules is importable from here too.

Sharding (`num_processes`, `process_id`): every split is cut before decoding
into `num_processes` disjoint parts whose union is the split: element i goes
to process i % num_processes (for TFRecords with at least as many files of a
split as processes, whole files go round-robin instead). Counts in
`DatasetInfo.counts` are this process's; `total_counts` are the whole split's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re

import numpy as np

from data.images import scan_images
from data.options import SPLITS, BadImagesError, DataOptions, DatasetInfo, DataSourceError
from data.sources import get_source
from data.splits import Split, StreamSplits, _StreamConfig

# Re-exported: callers import these from data.streaming as before the split into modules.
from data.images import IMAGE_SUFFIXES, RESIZE_MODES, convert_channels, decode_image, preprocess_image  # noqa: F401
from data.options import CACHE_MODES  # noqa: F401
from data.splits import AUTOTUNE, clear_disk_cache, steps_per_epoch  # noqa: F401

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
    "name_read_error",
    "naming_bad_data",
]


def open_source(source: str, options: DataOptions | None = None, *, allow_mixed_sizes: bool = False,
                **kwargs) -> StreamSplits:
    """Open `source` for streaming: the three splits and their metadata. Decodes no image.

    `source`: a registered source string (data/sources/); `options` (a `DataOptions`) or its
    fields as keyword arguments (`options.source` becomes `source`).
    `allow_mixed_sizes` (for `make convert`, which stores the files as they are):
    images of different sizes without `image_size` are not an error; the
    info's image shape then has None for height and width. Raises
    `DataSourceError` (a `ValueError`) for a missing or malformed source and its
    subclass `BadImagesError` for unreadable files (unless `skip_bad_images`).
    """
    kind, argument = get_source(source)  # DataSourceError naming every registered source
    o = options if options is not None else DataOptions(**kwargs)
    if options is not None and kwargs:
        o = dataclasses.replace(options, **kwargs)
    if o.source != source:
        o = dataclasses.replace(o, source=source)
    stream = _StreamConfig(options=o, key=source)
    splits, class_names, shape, channels, bad = kind.open(argument, o, stream)
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


def name_read_error(exc: BaseException, splits: StreamSplits) -> DataSourceError | None:
    """When `exc` is tf.data failing on the data itself, a `DataSourceError` naming every file at fault, found by
    reading the splits' files once; else None (and `exc` is raised as it is). Three cases: an image file that does
    not decode though its header passed (e.g. a JPEG corrupt inside: `BadImagesError`), a TFRecord shard that is
    damaged or cut short, and a record whose image does not decode (data/sources/tfrecord.py `scan_shards`). A
    failure of that reading (a file removed meanwhile) is None too; Ctrl-C during it is raised."""
    try:
        return _name_read_error(exc, splits)
    except Exception:  # noqa: BLE001 - the scan's own failure (a file removed meanwhile): `exc` is raised as it is
        return None


def _name_read_error(exc: BaseException, splits: StreamSplits) -> DataSourceError | None:
    import tensorflow as tf  # tf.data feeds every backend, so its error types are the ones raised

    from data.sources.tfrecord import damaged_shards_error, scan_shards

    parts = (splits.train, splits.validation, splits.test)
    source = splits.info.source
    shards = {f: c for s in parts if s.kind == "records" for f, c in zip(s.files, s.file_counts)}
    paths = [str(p) for s in parts if s.kind == "files" for p in s.paths]
    decode = isinstance(exc, tf.errors.InvalidArgumentError) and re.search(
        r"decode|jpeg|png|gif|bmp|image file", str(exc), re.IGNORECASE)  # else another op's error
    damaged = isinstance(exc, tf.errors.DataLossError) and " record at " in str(exc)  # not a checkpoint's
    if shards and (decode or damaged):
        print(f"Reading each of the {len(shards)} TFRecord shards once to name what failed ...", flush=True)
        bad = scan_shards(shards, decode=bool(decode))
        return damaged_shards_error(source.split(":", 1)[1], bad) if bad else None
    if not paths or not decode:
        return None
    print(f"A file failed to decode; decoding each of the {len(paths)} files once to name it ...", flush=True)
    bad = [(p, r) for p, r in zip(paths, scan_images(paths, full=True)) if isinstance(r, str)]
    return BadImagesError(source, bad) if bad else None


@contextlib.contextmanager
def naming_bad_data(splits: StreamSplits):
    """Reads of `splits` inside it that fail on the data itself end in the `DataSourceError` of `name_read_error`
    (one line naming the files) instead of TensorFlow's traceback."""
    try:
        yield
    except Exception as exc:
        named = name_read_error(exc, splits)
        if named is None:
            raise
        raise named from None
