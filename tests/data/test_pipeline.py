"""tf.data pipelines: value range, seeded shuffling, augmentation on the training split only."""

import numpy as np
import tensorflow as tf

from data.pipeline import make_dataset


def _data(n=40):
    x = (np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 1), np.uint8))
    return x, np.arange(n, dtype=np.int64)


def _labels(ds):
    return np.concatenate([y.numpy() for _, y in ds])


def test_scales_to_unit_range_and_keeps_order_for_evaluation():
    x, y = _data()
    ds = make_dataset(x, y, 16)
    images = np.concatenate([im.numpy() for im, _ in ds])
    assert images.dtype == np.float32
    np.testing.assert_allclose(images, x / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(_labels(ds), y)


def test_training_split_is_shuffled_reproducibly_per_seed():
    x, y = _data()
    a = _labels(make_dataset(x, y, 8, training=True, seed=1))
    b = _labels(make_dataset(x, y, 8, training=True, seed=1))
    c = _labels(make_dataset(x, y, 8, training=True, seed=2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, y)
    assert sorted(a.tolist()) == y.tolist()


def test_augmentation_applies_to_training_batches_only():
    from data.augment import build_augmentation

    x = np.zeros((8, 9, 9, 1), np.uint8)
    x[:, 1:4, 1:8] = 255  # a bar off the centre: every rotation moves it
    y = np.arange(8, dtype=np.int64)
    augment = build_augmentation(rotation={"max_degrees": 180.0}, seed=0)
    train = np.concatenate([im.numpy() for im, _ in make_dataset(x, y, 4, training=True, augment=augment)])
    assert np.abs(train - x / 255.0).max(axis=(1, 2, 3)).min() > 0.1  # every training image changed
    evaluation = np.concatenate([im.numpy() for im, _ in make_dataset(x, y, 4, augment=augment)])
    np.testing.assert_allclose(evaluation, x / 255.0)
    again = np.concatenate([im.numpy() for im, _ in make_dataset(x, y, 4, training=True, augment=augment)])
    np.testing.assert_allclose(again, train)  # same seed, same augmented epoch
    assert isinstance(make_dataset(x, y, 4), tf.data.Dataset)


def test_every_dataset_runs_without_autotuning():
    # without_autotuning: no autotuning thread for an evaluation pass, or the end of `model.fit`, to wait for
    # when its iterator is deleted (with it on, the default `make train` waited 25-31 s there in 4 of 8 runs)
    x, y = np.zeros((10, 4, 4, 1), np.uint8), np.arange(10) % 3
    assert make_dataset(x, y, 4).options().autotune.enabled is False
    assert make_dataset(x, y, 4, training=True).options().autotune.enabled is False
    labels = np.concatenate([b.numpy() for _, b in make_dataset(x, y, 4)])
    np.testing.assert_array_equal(labels, y)  # every element, in order
