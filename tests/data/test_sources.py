"""Data sources: synthetic, npz, folder and tfds (offline), and their errors."""

import numpy as np
import pytest
from PIL import Image

from data import synthetic
from data.sources import DataSourceError, load_splits, stratified_split


def test_synthetic_is_deterministic_balanced_and_cached(tmp_path):
    a = synthetic.load(60, 30, seed=3, cache_dir=str(tmp_path))
    assert len(list(tmp_path.glob("synthetic-*.npz"))) == 1
    b = synthetic.load(60, 30, seed=3, cache_dir=str(tmp_path))  # from the cache
    c = synthetic.load(60, 30, seed=3, cache_dir=None)  # generated again
    d = synthetic.load(60, 30, seed=4, cache_dir=None)
    for x, y in ((a, b), (a, c)):
        np.testing.assert_array_equal(x[0][0], y[0][0])
        np.testing.assert_array_equal(x[1][1], y[1][1])
    assert not np.array_equal(a[0][0], d[0][0])
    (xtr, ytr), (xte, yte) = a
    assert xtr.shape == (60, 28, 28, 1) and xtr.dtype == np.uint8
    assert np.bincount(ytr, minlength=10).tolist() == [6] * 10
    assert not np.array_equal(xtr[:30], xte)  # test split drawn independently


def test_synthetic_digits_look_like_mnist():
    x, y = synthetic.generate(200, seed=0)
    ink = (x > 128).mean(axis=(1, 2, 3))
    assert np.all(ink > 0.02) and np.all(ink < 0.45)  # every image has a digit, none is a blob
    # Centre of mass near the frame centre, as in MNIST.
    h = np.arange(28)
    mass = x[..., 0].astype(float)
    cy = (mass.sum(2) * h).sum(1) / mass.sum((1, 2))
    cx = (mass.sum(1) * h).sum(1) / mass.sum((1, 2))
    assert np.all(np.abs(cy - 13.5) < 3) and np.all(np.abs(cx - 13.5) < 3)
    # Classes differ: mean images of two digits are far apart.
    assert np.abs(x[y == 1].mean(0) - x[y == 0].mean(0)).mean() > 10


def test_synthetic_source_carves_a_stratified_validation_split(tmp_path):
    s = load_splits("synthetic", synthetic_train_size=200, synthetic_test_size=50, validation_fraction=0.2,
                    cache_dir=str(tmp_path))
    assert len(s.train[0]) == 160 and len(s.validation[0]) == 40 and len(s.test[0]) == 50
    assert np.bincount(s.validation[1], minlength=10).tolist() == [4] * 10
    assert s.num_classes == 10 and s.image_shape == (28, 28, 1)


def test_stratified_split_is_disjoint_complete_per_class_and_seeded():
    x = np.arange(100)[:, None]
    y = np.arange(100) % 4
    (xa, ya), (xb, yb) = stratified_split(x, y, 0.25, seed=0)
    assert sorted(np.concatenate([xa, xb]).ravel().tolist()) == list(range(100))
    assert np.bincount(yb).tolist() == [6, 6, 6, 6]  # round(0.25 * 25) of each class
    assert np.bincount(ya).tolist() == [19, 19, 19, 19]
    np.testing.assert_array_equal(stratified_split(x, y, 0.25, seed=0)[1][0], xb)  # seeded
    assert not np.array_equal(stratified_split(x, y, 0.25, seed=1)[1][0], xb)  # the seed picks which


def _npz(path, n=30, **extra):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.integers(0, 256, (n, 12, 12), dtype=np.uint8), y_train=np.arange(n) % 3,
                  x_test=rng.integers(0, 256, (10, 12, 12), dtype=np.uint8), y_test=np.arange(10) % 3)
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_npz_source(tmp_path):
    arrays = _npz(tmp_path / "d.npz")
    s = load_splits(f"npz:{tmp_path / 'd.npz'}", validation_fraction=0.2)
    assert s.train[0].shape[1:] == (12, 12, 1) and s.train[0].dtype == np.uint8
    assert len(s.train[0]) + len(s.validation[0]) == 30
    np.testing.assert_array_equal(s.test[0][..., 0], arrays["x_test"])
    assert s.class_names == ["0", "1", "2"]


def test_npz_float_images_in_unit_range_are_scaled(tmp_path):
    x = np.full((6, 4, 4), 0.5, np.float32)
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.array([0, 1]))
    s = load_splits(f"npz:{tmp_path / 'f.npz'}", validation_fraction=0.3)
    assert s.test[0].dtype == np.uint8 and int(s.test[0].max()) == 128


def test_npz_errors(tmp_path):
    with pytest.raises(DataSourceError, match="no such file"):
        load_splits(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((4, 2, 2)), y_train=np.zeros(4, int))
    with pytest.raises(DataSourceError, match=r"missing array\(s\) \['x_test', 'y_test'\]"):
        load_splits(f"npz:{tmp_path / 'partial.npz'}")
    _npz(tmp_path / "short.npz", y_train=np.zeros(5, int))
    with pytest.raises(DataSourceError, match="5 labels for 30 images"):
        load_splits(f"npz:{tmp_path / 'short.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataSourceError, match="not a readable"):
        load_splits(f"npz:{tmp_path / 'junk.npz'}")


def _write_images(root, classes=("cat", "dog"), n=6, size=(10, 10), mode="L"):
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size + ((3,) if mode == "RGB" else ()), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_folder_source_with_class_subfolders(tmp_path):
    _write_images(tmp_path / "imgs")
    s = load_splits(f"folder:{tmp_path / 'imgs'}", validation_fraction=0.25)
    assert s.class_names == ["cat", "dog"]
    assert s.image_shape == (10, 10, 1)
    assert len(s.train[0]) + len(s.validation[0]) + len(s.test[0]) == 12
    assert set(np.unique(s.test[1])) == {0, 1}


def test_folder_source_with_train_test_and_resize(tmp_path):
    _write_images(tmp_path / "d" / "train", mode="RGB")
    _write_images(tmp_path / "d" / "test", n=2, size=(14, 14), mode="RGB")
    with pytest.raises(DataSourceError, match="set data.image_size"):
        load_splits(f"folder:{tmp_path / 'd'}")
    s = load_splits(f"folder:{tmp_path / 'd'}", image_size=[8, 9])
    assert s.image_shape == (8, 9, 3) and len(s.test[0]) == 4


def test_folder_errors(tmp_path):
    with pytest.raises(DataSourceError, match="no such directory"):
        load_splits(f"folder:{tmp_path / 'nope'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataSourceError, match="no PNG/JPEG images"):
        load_splits(f"folder:{tmp_path / 'empty'}")
    _write_images(tmp_path / "bad")
    (tmp_path / "bad" / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataSourceError, match="cannot read image"):
        load_splits(f"folder:{tmp_path / 'bad'}")


def test_tfds_source_offline(tmp_path):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    rng = np.random.default_rng(0)

    def split(n):
        return tf.data.Dataset.from_tensor_slices(
            {"image": rng.integers(0, 255, (n, 8, 8, 1)).astype("uint8"), "label": np.arange(n) % 3})

    tfds.dataset_builders.store_as_tfds_dataset(
        name="tiny_shapes", version="1.0.0", data_dir=str(tmp_path),
        features=tfds.features.FeaturesDict({"image": tfds.features.Image(shape=(8, 8, 1)),
                                             "label": tfds.features.ClassLabel(names=["a", "b", "c"])}),
        split_datasets={"train": split(20), "test": split(9)},
    )
    s = load_splits("tfds:tiny_shapes", data_dir=str(tmp_path), validation_fraction=0.2)
    assert s.class_names == ["a", "b", "c"]
    assert s.image_shape == (8, 8, 1) and len(s.test[0]) == 9
    assert len(s.train[0]) + len(s.validation[0]) == 20


def test_tfds_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(DataSourceError, match=r"tfds:mnist: not prepared in .*download_and_prepare"):
        load_splits("tfds:mnist", data_dir=str(tmp_path))
    with pytest.raises(DataSourceError, match="unknown dataset"):
        load_splits("tfds:surely_not_a_dataset_name", data_dir=str(tmp_path))
