"""tf.data pipelines over in-memory splits: seeded shuffle, batch, parallel map, cache, prefetch.

Images enter as uint8 and leave as float32 in [0, 1]. Augmentation (see
data/augment.py) runs on the training split only, after
batching so that it is vectorised; evaluation splits are never augmented.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from data.augment import augment_dataset

AUTOTUNE = tf.data.AUTOTUNE


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
    return ds.prefetch(AUTOTUNE)


def make_datasets(splits, batch_size: int, seed: int = 0, augment=None):
    """(train, validation, test) datasets for a `data.sources.Splits`."""
    return (
        make_dataset(*splits.train, batch_size, training=True, seed=seed, augment=augment),
        make_dataset(*splits.validation, batch_size),
        make_dataset(*splits.test, batch_size),
    )
