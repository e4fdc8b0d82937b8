"""Write any source into sharded TFRecords (the `tfrecord:` source reads them back).

Layout of `<dest>/`:
    train-00000-of-00025.tfrecord ...   tf.train.Example records: `image/encoded`
    validation-...  test-...            (bytes: PNG, JPEG, BMP, GIF or WebP) and `image/label` (int64)
    dataset.json                        class names, image shape (null when sizes differ),
                                        channel hint, whether any image is a WebP, per split the shard files, their
                                        record counts and the labels in stored order
    convert-plan.json                   what is being written (for resuming)

Image files are stored as they are (no re-encoding: lossless and fast);
in-memory sources (npz, synthetic) are encoded as PNG; tfds images are
copied encoded. Preprocessing (`image_size`, `channels`, `resize`) happens
when the shards are read, with the same options as any source. The training
split is written in a seeded random order, so shards mix the classes and a
file-level shuffle plus a record buffer shuffles well.

Parallel (one thread per shard being written), resumable (a shard is written
to `<name>.tmp` and renamed when complete; a later run with the same plan
skips finished shards) and with a progress bar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf

from data.options import METADATA_FILE, PLAN_FILE, SHARD_SIZE, SPLITS, DataOptions, DataSourceError
from data.splits import StreamSplits
from data.streaming import open_source

FORMAT = "invariant-nets-tfrecord/1"

__all__ = ["convert", "serialize_example", "shard_name"]


def serialize_example(encoded: bytes, label: int) -> bytes:
    return tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded])),
        "image/label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)])),
    })).SerializeToString()


def shard_name(split: str, index: int, total: int) -> str:
    return f"{split}-{index:05d}-of-{total:05d}.tfrecord"


def _png(image: np.ndarray) -> bytes:
    from PIL import Image

    a = image[..., 0] if image.shape[-1] == 1 else image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(a)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class _Progress:
    """tqdm when it is installed (it comes with tensorflow-datasets), else a plain line on stderr."""

    def __init__(self, total: int, enabled: bool, desc: str):
        self.lock = threading.Lock()
        self.bar = None
        self.done = 0
        self.total = total
        self.enabled = enabled
        if enabled:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="img", desc=desc, file=sys.stderr, smoothing=0.1)
            except ImportError:  # pragma: no cover
                self.bar = None

    def update(self, n: int):
        with self.lock:
            self.done += n
            if self.bar is not None:
                self.bar.update(n)
            elif self.enabled and (self.done == self.total or self.done % 5000 < n):
                print(f"  {self.done}/{self.total} images", file=sys.stderr)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _plan(splits: StreamSplits, source: str, options: DataOptions, shard_size: int) -> dict:
    s = splits.train._stream
    return {
        "format": FORMAT,
        "source": source,
        "source_key": s.key,
        "seed": options.seed,
        "validation_fraction": options.validation_fraction,
        "skip_bad_images": options.skip_bad_images,
        "shard_size": shard_size,
        "counts": {k: splits.split(k).count for k in SPLITS},
    }


def _write_shard(path: str, records) -> int:
    """Write the (encoded, label) pairs of `records` to `path` atomically; the number written."""
    tmp = path + ".tmp"
    n = 0
    with tf.io.TFRecordWriter(tmp) as w:
        for encoded, label in records:
            w.write(serialize_example(encoded, label))
            n += 1
    os.replace(tmp, path)
    return n


def convert(source: str, dest: str, options: DataOptions | None = None, *, shard_size: int = SHARD_SIZE,
            workers: int = 8, overwrite: bool = False, progress: bool = True) -> dict:
    """Write `source` into TFRecord shards under `dest`; returns the metadata written to dataset.json.

    `options`: how the source is opened (seed and validation_fraction decide the
    carved splits, skip_bad_images the bad files; image_size, channels and resize
    are not applied: files are stored as they are). Raises `DataSourceError`
    (or `BadImagesError`) for a bad source or a `dest` that holds another
    conversion (unless `overwrite`).
    """
    if shard_size < 1:
        raise DataSourceError(f"--shard-size: must be at least 1 (got {shard_size})")
    if source.startswith("tfrecord:") and os.path.abspath(dest) in {
            os.path.abspath(p) for p in (source[9:], os.path.dirname(source[9:]))}:
        raise DataSourceError(f"--dest {dest}: is where {source} is read from")
    options = dataclasses.replace(options or DataOptions(), num_processes=1, process_id=0, cache="none",
                                  random_crop=False)
    splits = open_source(source, options, allow_mixed_sizes=True)
    plan = _plan(splits, source, options, shard_size)
    os.makedirs(dest, exist_ok=True)
    plan_path = os.path.join(dest, PLAN_FILE)
    if os.path.isfile(plan_path):
        with open(plan_path) as f:
            old = json.load(f)
        if old != plan:
            if not overwrite and old.get("source") == plan["source"]:
                named = {"source_key": "its files", "counts": "the image counts"}
                changed = ", ".join(named.get(k, k) for k in plan if old.get(k) != plan[k])
                raise DataSourceError(
                    f"--dest {dest}: holds shards of an earlier conversion of {source}, from other files or "
                    f"options (changed since: {changed}); pass --overwrite to convert it again, or choose another "
                    "directory")
            if not overwrite:
                raise DataSourceError(
                    f"--dest {dest}: holds shards of another conversion ({old.get('source')}, "
                    f"seed {old.get('seed')}, shard size {old.get('shard_size')}); choose another directory "
                    f"or pass --overwrite")
            for fn in os.listdir(dest):
                if fn.endswith((".tfrecord", ".tfrecord.tmp")) or fn in (METADATA_FILE, PLAN_FILE):
                    os.remove(os.path.join(dest, fn))
    with open(plan_path + ".tmp", "w") as f:
        json.dump(plan, f, indent=1)
    os.replace(plan_path + ".tmp", plan_path)

    total = sum(plan["counts"].values())
    bar = _Progress(total, progress, f"convert {source}")
    meta_splits = {}
    skipped = 0
    try:
        for k in SPLITS:
            split = splits.split(k)
            n = split.count
            n_shards = max(1, math.ceil(n / shard_size))
            names = [shard_name(k, i, n_shards) for i in range(n_shards)]
            if split.kind in ("files", "arrays"):
                labels = split.labels()
                order = (np.random.default_rng(options.seed).permutation(n) if k == "train"
                         else np.arange(n))
                chunks = [order[i * shard_size:(i + 1) * shard_size] for i in range(n_shards)]

                def one(i, chunks=chunks, names=names, split=split, labels=labels):
                    path = os.path.join(dest, names[i])
                    if os.path.isfile(path):
                        bar.update(len(chunks[i]))
                        return len(chunks[i]), True

                    def records():
                        for j in chunks[i]:
                            if split.kind == "files":
                                with open(split.paths[j], "rb") as f:
                                    yield f.read(), labels[j]
                            else:
                                yield _png(split.images[j]), labels[j]
                            bar.update(1)

                    return _write_shard(path, records()), False

                with ThreadPoolExecutor(max(1, workers)) as pool:
                    results = list(pool.map(one, range(n_shards)))
                skipped += sum(1 for _, was in results if was)
                counts = [c for c, _ in results]
                stored_labels = labels[order]
            else:  # records / tfds: one sequential stream, cut into shards
                it = split._raw(False, 0).as_numpy_iterator()
                counts, stored = [], []
                for i in range(n_shards):
                    m = min(shard_size, n - i * shard_size)
                    path = os.path.join(dest, names[i])
                    batch = [next(it) for _ in range(m)]
                    stored.extend(int(y) for _, y in batch)
                    if os.path.isfile(path):
                        skipped += 1
                    else:
                        _write_shard(path, ((bytes(x), y) for x, y in batch))
                    counts.append(m)
                    bar.update(m)
                stored_labels = np.asarray(stored, np.int64)
            meta_splits[k] = {"files": names, "counts": [int(c) for c in counts],
                              "labels": [int(v) for v in stored_labels]}
    finally:
        bar.close()

    stream = splits.train._stream
    native = stream.native_size
    meta = {
        "format": FORMAT,
        "source": source,
        "class_names": splits.class_names,
        "image_shape": [int(native[0]), int(native[1]), int(stream.native_channels)] if native else None,
        "channels": int(stream.native_channels),
        # whether a record may hold a WebP (the reader's decode then checks each record's header): none where the
        # header pass saw every file, or where this wrote PNGs of arrays; tfds' stored encodings are not looked at
        "webp": bool(stream.webp) if splits.train.kind == "files" else splits.train.kind != "arrays",
        "splits": meta_splits,
        "skipped_bad_images": [list(b) for b in splits.info.bad_files],
        "fingerprint": hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()[:20],
    }
    with open(os.path.join(dest, METADATA_FILE + ".tmp"), "w") as f:
        json.dump(meta, f)
    os.replace(os.path.join(dest, METADATA_FILE + ".tmp"), os.path.join(dest, METADATA_FILE))
    return {**meta, "resumed_shards": skipped}
