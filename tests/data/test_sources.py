"""Data sources: the registry (data/sources/) as the one list of sources, the synthetic and npz sources
(held in memory), the stratified carve. Folders are tested in test_streaming.py, TFRecord shards and tfds
in test_streaming_records.py."""

import re
from pathlib import Path

import numpy as np
import pytest

from data import synthetic
from data.sources import DataSourceError, available_sources, get_source, local_path, register_source, stratified_split
from data.sources import registry
from data.sources.common import array_splits
from data.streaming import open_source

ROOT = Path(__file__).resolve().parents[2]


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


def _synthetic(tmp_path, **kw):
    from data.options import SyntheticSettings

    return open_source("synthetic", synthetic=SyntheticSettings(200, 50), cache_dir=str(tmp_path), **kw)


def test_synthetic_source_carves_a_stratified_validation_split(tmp_path):
    s = _synthetic(tmp_path, validation_fraction=0.2)
    assert (s.train.count, s.validation.count, s.test.count) == (160, 40, 50)
    assert np.bincount(s.validation.labels(), minlength=10).tolist() == [4] * 10
    assert s.num_classes == 10 and s.image_shape == (28, 28, 1) and s.info.cache == "memory"


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
    s = open_source(f"npz:{tmp_path / 'd.npz'}", validation_fraction=0.2)
    assert s.image_shape == (12, 12, 1) and s.train.images.dtype == np.uint8
    assert s.train.count + s.validation.count == 30
    x, y = s.test.arrays()
    np.testing.assert_array_equal(x[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(y, arrays["y_test"])
    assert s.class_names == ["0", "1", "2"]


def test_npz_float_images_in_unit_range_are_scaled(tmp_path):
    x = np.full((6, 4, 4), 0.5, np.float32)
    np.savez(tmp_path / "f.npz", x_train=x, y_train=np.arange(6) % 2, x_test=x[:2], y_test=np.array([0, 1]))
    s = open_source(f"npz:{tmp_path / 'f.npz'}", validation_fraction=0.3)
    assert s.test.images.dtype == np.uint8 and int(s.test.images.max()) == 128


def test_npz_one_hot_labels_are_read_as_class_indices_and_other_2d_labels_are_refused(tmp_path):
    arrays = _npz(tmp_path / "d.npz")
    eye = np.eye(3, dtype=np.float32)
    _npz(tmp_path / "onehot.npz", y_train=eye[arrays["y_train"]], y_test=eye[arrays["y_test"]])
    s = open_source(f"npz:{tmp_path / 'onehot.npz'}", validation_fraction=0.2)
    plain = open_source(f"npz:{tmp_path / 'd.npz'}", validation_fraction=0.2)
    np.testing.assert_array_equal(s.test.labels(), arrays["y_test"])
    np.testing.assert_array_equal(s.train.labels(), plain.train.labels())
    assert s.class_names == ["0", "1", "2"]
    soft = eye[arrays["y_train"]] * 0.9 + 0.1 / 3  # label smoothing: not one class per image
    _npz(tmp_path / "soft.npz", y_train=soft)
    with pytest.raises(DataSourceError, match=r"y_train: labels of shape \(30, 3\) are neither class indices"):
        open_source(f"npz:{tmp_path / 'soft.npz'}")


def test_npz_one_hot_width_is_the_class_count_even_where_the_last_class_has_no_image(tmp_path):
    arrays = _npz(tmp_path / "d.npz")  # labels 0..2, written as one-hot rows of 5 classes
    eye = np.eye(5, dtype=np.uint8)
    _npz(tmp_path / "wide.npz", y_train=eye[arrays["y_train"]], y_test=eye[arrays["y_test"]])
    assert open_source(f"npz:{tmp_path / 'wide.npz'}").class_names == ["0", "1", "2", "3", "4"]
    _npz(tmp_path / "mixed.npz", y_train=eye[arrays["y_train"]], y_test=np.eye(4)[arrays["y_test"]])
    with pytest.raises(DataSourceError, match=r"different numbers of classes: \{'y_train': 5, 'y_test': 4\}"):
        open_source(f"npz:{tmp_path / 'mixed.npz'}")
    _npz(tmp_path / "indices.npz", y_train=eye[arrays["y_train"]], y_test=np.arange(10) % 7)  # test: 0..6
    with pytest.raises(DataSourceError, match="test has label 6, but the one-hot labels have 5 classes"):
        open_source(f"npz:{tmp_path / 'indices.npz'}")


def test_npz_class_count_covers_a_validation_label_beyond_train_and_test(tmp_path):
    arrays = _npz(tmp_path / "d.npz")
    _npz(tmp_path / "v.npz", x_val=arrays["x_test"][:4], y_val=np.array([0, 1, 2, 3]))
    assert open_source(f"npz:{tmp_path / 'v.npz'}").class_names == ["0", "1", "2", "3"]


def test_npz_errors(tmp_path):
    with pytest.raises(DataSourceError, match="no such file"):
        open_source(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((4, 2, 2)), y_train=np.zeros(4, int))
    with pytest.raises(DataSourceError, match=r"missing array\(s\) \['x_test', 'y_test'\]"):
        open_source(f"npz:{tmp_path / 'partial.npz'}")
    _npz(tmp_path / "short.npz", y_train=np.zeros(5, int))
    with pytest.raises(DataSourceError, match="5 labels for 30 images"):
        open_source(f"npz:{tmp_path / 'short.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataSourceError, match="not a readable"):
        open_source(f"npz:{tmp_path / 'junk.npz'}")
    _npz(tmp_path / "one.npz", n=1, x_train=np.zeros((1, 12, 12), np.uint8), y_train=np.zeros(1, int))
    with pytest.raises(DataSourceError, match="the training split needs at least 2 images, has 1"):
        open_source(f"npz:{tmp_path / 'one.npz'}")
    _npz(tmp_path / "odd.npz", x_val=np.zeros((3, 5, 5), np.uint8), y_val=np.zeros(3, int))
    with pytest.raises(DataSourceError, match="splits have different image shapes"):
        open_source(f"npz:{tmp_path / 'odd.npz'}")
    np.save(tmp_path / "plain.npy", np.zeros((4, 5, 5), np.uint8))
    with pytest.raises(DataSourceError, match="a single .npy array, not an .npz archive"):
        open_source(f"npz:{tmp_path / 'plain.npy'}")
    images = np.empty(30, object)
    images[:] = [np.zeros((5, 5), np.uint8)] * 30
    _npz(tmp_path / "objects.npz", x_train=images)
    with pytest.raises(DataSourceError, match="array x_train is not readable .*must be numeric arrays"):
        open_source(f"npz:{tmp_path / 'objects.npz'}")


# ----------------------------------------------------------------------------- the registry is the one list


def test_the_unknown_source_errors_list_exactly_the_registered_sources():
    from pipelines.config import ConfigError, config_from_dict

    usages = [s.usage for s in available_sources()]
    assert usages[0] == "synthetic" and "npz:<path>" in usages and len(usages) == len(set(usages))
    for bad in ("s3://bucket", "synthetic:x", "npz:", "folder", "tfrecord:", "nope:x"):
        with pytest.raises(DataSourceError) as e:
            open_source(bad)
        listed = str(e.value).split("; use ", 1)[1]
        assert re.split(r", | or ", listed) == usages
        with pytest.raises(ConfigError) as e:
            config_from_dict({"data": {"source": bad}})
        assert re.findall(r"`([^`]+)`", str(e.value)) == usages, str(e.value)


def test_the_manual_names_every_registered_source():
    """The "Datasets" table of docs/manual.md has one row per registered source, in the registry's order."""
    text = (ROOT / "docs" / "manual.md").read_text()
    table = text.split("### Datasets", 1)[1].split("\n\n", 2)[1]
    rows = [re.match(r"\| `([a-z0-9_]+)", line).group(1) for line in table.splitlines()[2:]]
    assert rows == [s.name for s in available_sources()]


def test_local_path_is_what_a_source_reads_from_disk():
    assert local_path("npz:x/digits.npz") == "x/digits.npz"
    assert local_path("folder:/data/pets/") == "/data/pets"
    assert local_path("tfrecord:/d/eurosat/*.tfrecord") == local_path("tfrecord:/d/eurosat") == "/d/eurosat"
    assert local_path("tfds:mnist") is None and local_path("synthetic") is None and local_path("s3://x") is None


def test_a_name_registered_twice_or_malformed_is_refused(monkeypatch):
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))
    with pytest.raises(ValueError, match="registered twice"):
        register_source("npz", argument="<path>", help="another")(lambda *a: None)
    with pytest.raises(ValueError, match="lower-case"):
        register_source("My-Source", help="bad name")
    with pytest.raises(ValueError, match="files must be"):
        register_source("x", help="bad files", files="yes")


@pytest.fixture
def toy(monkeypatch):
    """A source registered by the test (and gone after it): `toy:<n>`, n images of each of 2 classes."""
    monkeypatch.setattr(registry, "_SOURCES", dict(registry._SOURCES))

    @register_source("toy", argument="<n>", help="n random 6x6 images of each of two classes, in memory")
    def open_toy(argument, o, stream):
        n = int(argument)
        rng = np.random.default_rng(o.seed)
        x = rng.integers(0, 256, (4 * n, 6, 6, 1), dtype=np.uint8)
        y = np.arange(4 * n) % 2
        return array_splits({"train": (x[: 3 * n], y[: 3 * n]), "test": (x[3 * n:], y[3 * n:])}, ["a", "b"], o,
                            stream)

    return open_toy


def test_a_registered_source_is_known_to_the_config_the_data_and_the_jobs(toy, capsys):
    """One module with `@register_source` (here, the fixture) is all a source needs."""
    from pipelines import convert, experiment
    from pipelines.config import ConfigError, config_from_dict, name_from_source

    assert get_source("toy:8")[0].open is toy
    with pytest.raises(DataSourceError, match=r"use synthetic, .* tfds:<name> or toy:<n>$"):
        open_source("toy")  # takes an argument
    with pytest.raises(ConfigError, match=r"data\.source: must be .*`tfds:<name>` or `toy:<n>` \(got 'toy'\)"):
        config_from_dict({}, ["data.source=toy"])
    cfg = config_from_dict({}, ["data.source=toy:8", "data.batch_size=4"])
    assert cfg.name == name_from_source("toy:8") == "8"
    splits = experiment.load_data(cfg)
    assert splits.class_names == ["a", "b"] and splits.image_shape == (6, 6, 1)
    assert splits.info.total_counts == {"train": 22, "validation": 2, "test": 8}
    train, val, test = experiment.make_datasets(cfg, splits)
    x, y = next(iter(train))
    assert x.shape == (4, 6, 6, 1) and x.dtype.name == "float32" and set(np.asarray(y)) <= {0, 1}
    assert sum(len(b[1]) for b in test) == 8
    with pytest.raises(SystemExit):
        convert.parse_args(["--help"])
    assert "toy:<n>" in capsys.readouterr().out
