"""tf.data pipelines: seeded shuffle, batch, parallel map, cache, prefetch.

`make_stream_dataset(s)` take the splits of `data.streaming.open_source` (every
source, streamed or held in memory); `make_dataset` takes arrays.

Images enter as uint8 and leave as float32 in [0, 1]. Augmentation (see
data/augment.py) runs on the training split only, after
batching so that it is vectorised; evaluation splits are never augmented.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from data.augment import augment_dataset

AUTOTUNE = tf.data.AUTOTUNE


def without_autotuning(ds: tf.data.Dataset) -> tf.data.Dataset:
    """`ds` with tf.data's autotuning off: every split, training's too.

    With autotuning on, deleting an iterator can wait for the autotuning thread to end its current sleep,
    which doubles from 10 ms up to 60 s (TensorFlow 2.21): 3 of 12 `model.evaluate` calls of 3.1 s took 5.1 s
    (bench/bench_epoch_iterators.py), none with it off. Off, no such thread exists; a map at AUTOTUNE then
    runs as many calls at once as there are cores, and a pass over EuroSAT's 4,050 validation tiles ran at
    8,742-10,410 images/s against 6,293-9,403 on (docs/results.md, "tf.data's stall between epochs").
    Training's one iterator (`pipelines.experiment.fit_batches`) is deleted as `model.fit` returns: with
    autotuning on, the default `make train` waited there 25-31 s in 4 of 8 runs (fit 83.6 s against 55.8 s),
    with it off in none of 2, at the same training images/s (bench/bench_fit_end.py).
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.with_options(options)


def to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, labels


def make_dataset(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    training: bool = False,
    seed: int = 0,
    augment=None,
) -> tf.data.Dataset:
    """A batched dataset of (float32 images in [0, 1], int64 labels).

    Args:
        training: shuffle (seeded, reshuffled each epoch) and apply `augment`.
        augment: the `data.augment.Augmentation` of `build_augmentation`, or None;
            each batch gets its own stateless seed drawn from `seed`.
    """
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.map(to_float, num_parallel_calls=AUTOTUNE).cache()
    if training:
        ds = ds.shuffle(min(len(x), 50_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    if training and augment is not None:
        ds = augment_dataset(ds, augment, seed=seed)
    return without_autotuning(ds.prefetch(AUTOTUNE))


# ----------------------------------------------------------------------------- streaming splits (issue 13)


def _batch_to_float(images, labels):
    return tf.cast(images, tf.float32) / 255.0, labels


def make_stream_dataset(
    split,
    batch_size: int,
    *,
    training: bool = False,
    seed: int = 0,
    augment=None,
    max_images: int | None = None,
    drop_remainder: bool = False,
) -> tf.data.Dataset:
    """A batched dataset of (float32 images in [0, 1], int64 labels) from a `data.streaming.Split`.

    Read, decode and preprocess run in parallel inside tf.data; caching follows
    the options the source was opened with. Training: shuffled (seeded, a new
    order each epoch), randomly cropped when the options ask for it, then
    `augment` per batch (each batch its own stateless seed drawn from `seed`).
    `max_images` (evaluation only): the seeded subset of
    `pipelines.evaluation.eval_subset`, only those images read.
    """
    if training and max_images is not None:
        raise ValueError("max_images applies to evaluation splits only")
    ds = split.take_subset(max_images, seed) if max_images is not None else split.elements(training=training, seed=seed)
    # A plain batch right after the decoding map lets tf.data fuse the two (map_and_batch_fusion);
    # a parallel batch prevents it: 9,290 against 8,700 images/s on 96x96 JPEGs (2 cores).
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    ds = ds.map(_batch_to_float, num_parallel_calls=AUTOTUNE)
    if training and augment is not None:
        ds = augment_dataset(ds, augment, seed=seed)
    return without_autotuning(ds.prefetch(AUTOTUNE))


def make_stream_datasets(splits, batch_size: int, seed: int = 0, augment=None):
    """(train, validation, test) batched datasets for a `data.streaming.StreamSplits`."""
    return (
        make_stream_dataset(splits.train, batch_size, training=True, seed=seed, augment=augment),
        make_stream_dataset(splits.validation, batch_size),
        make_stream_dataset(splits.test, batch_size),
    )
