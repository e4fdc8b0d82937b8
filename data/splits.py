"""The splits of an opened streaming source (data/streaming.py): lazily read `tf.data` datasets.

A `Split` holds what reading its part of a source needs, without decoding
anything: paths (`files`), uint8 images in memory (`arrays`), TFRecord shards
with per-file counts (`records`) or a tfds builder split (`tfds`), maybe an
index mask (a carved split, an element-level shard), and the `_StreamConfig`
every split of the source shares (options, resolved channels, image shape and
cache). `elements()` reads, decodes and preprocesses (data/images.py),
caches, shuffles and randomly crops. `StreamSplits` is the three splits and
their `DatasetInfo`.

Caching (`cache`): `memory`, `disk` (a `tf.data` cache file under
`<cache_dir>/stream/<key>/`, key = hash of the source, its file list,
preprocessing, split, seed and shard), `none`, or `auto`: `memory` when the
decoded size of the three splits (count x H x W x C bytes, from metadata) is
at most `cache_budget_mb` (default 512 MiB), else `none` (`auto` is resolved
by `open_source`).
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from data.images import decode_image, preprocess_image
from data.options import DataOptions, DatasetInfo

AUTOTUNE = tf.data.AUTOTUNE

__all__ = ["Split", "StreamSplits", "clear_disk_cache", "steps_per_epoch"]


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

    def _raw(self, shuffle: bool, seed: int, indices=None, then=None) -> tf.data.Dataset:
        """(path, encoded bytes or uint8 image; int64 label), unpreprocessed; `indices`: a sorted subset.

        `then`: a function of (item, label) run in the same parallel map as the lookup (files,
        arrays) or the record parsing (records, after the shuffle of the serialized records);
        one map per element instead of two measured 15% faster on 96x96 JPEGs."""
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

            if then is None:
                return ds.map(lookup)  # files: paths, read in the decoding map
            return ds.map(lambda i: then(*lookup(i)), num_parallel_calls=AUTOTUNE, deterministic=True)
        if then is not None and self.kind == "tfds":
            raise ValueError("`then` applies to files, arrays and records splits")
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
            if then is None:
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
        if then is not None:  # records: parse, then `then`, in one map
            ds = ds.map(lambda r: then(*_parse_record(r)), num_parallel_calls=AUTOTUNE, deterministic=True)
        return ds

    def _preprocessed(self, shuffle, seed, cover_only, indices=None):
        s = self._stream
        opts = s.options
        encoded = self.kind != "arrays"
        is_path = self.kind == "files"
        # When every stored image already has the target size and the decode gives the target channels
        # (known from the header pass or the metadata), preprocessing is the identity: skip its
        # per-image conditionals (measured 7% of the folder pipeline's time on 96x96 JPEGs).
        stored_channels = 3 if encoded and s.channels == 3 else (
            None if encoded else int(self.images.shape[-1]))
        native_fits = (s.native_size is not None and stored_channels == s.channels
                       and (opts.image_size is None or tuple(map(int, opts.image_size)) == tuple(s.native_size)))

        def prep(x, y):
            if is_path:
                x = tf.io.read_file(x)
            # Decoding straight to 3 channels (gray replicated, alpha dropped) is what
            # convert_channels does, without a second pass over the pixels.
            image = decode_image(x, 3 if s.channels == 3 else 0, webp=s.webp) if encoded else x
            if native_fits:
                return tf.ensure_shape(image, s.image_shape), y
            out = preprocess_image(image, opts.image_size, opts.resize, s.channels, cover_only=cover_only)
            if opts.image_size is None and None not in s.image_shape:
                out = tf.ensure_shape(out, s.image_shape)
            return out, y

        if self.kind in ("files", "arrays", "records"):
            ds = self._raw(shuffle, seed, indices, then=prep)
        else:
            ds = self._raw(shuffle, seed, indices).map(prep, num_parallel_calls=AUTOTUNE, deterministic=True)
        if s.skip_errors:  # a file that passed the header pass but does not decode: dropped, not a traceback
            ds = ds.ignore_errors(log_warning=True)
        elif self.kind in ("records", "tfds"):  # known from metadata: Keras then knows the epoch's length
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
        # A disk cache is read back in the order it was written and shuffled only within `shuffle_buffer`:
        # written in the file list's order (sorted by class), its batches held one class at a time. Training
        # writes it in one seeded permutation instead (the memory cache is shuffled whole).
        order = None
        if cached and training and s.cache == "disk" and self.kind in ("files", "arrays"):
            order = np.random.default_rng(seed).permutation(self.count)
        ds = self._preprocessed(training and not cached, seed, cover_only=random_crop, indices=order)
        if cached:
            if s.cache == "memory":
                ds = ds.cache()
            else:
                name = self.name if order is None else f"{self.name}-permuted-{seed}"
                ds = ds.cache(s.disk_cache_path(name, random_crop))
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
    webp: bool = True  # a stored image may be a WebP (decode_image's checks); False where the header pass saw none
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

    @property
    def content_key(self) -> str:
        """Identifies the source's content (files with their sizes and times, or arrays' bytes)."""
        return self.train._stream.key

    def split(self, name: str) -> Split:
        return {"train": self.train, "validation": self.validation, "val": self.validation, "test": self.test}[name]


def clear_disk_cache(cache_dir: str = ".cache") -> None:
    """Remove every streaming disk cache under `cache_dir`."""
    shutil.rmtree(os.path.join(cache_dir, "stream"), ignore_errors=True)


def steps_per_epoch(split: Split, batch_size: int) -> int:
    return max(1, math.ceil(split.count / batch_size))
