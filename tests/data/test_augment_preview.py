"""The augmentation preview: the grid's rows and `make preview` (pipelines/preview.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.augment import preview_rows
from pipelines.plots import preview_grid


def _images(n=4):
    x = np.zeros((n, 16, 16, 1), "uint8")
    x[:, 3:13, 6:9] = 255
    return x


def test_rows_are_original_one_per_op_and_the_chain():
    x = _images()
    on = dict(translation={"max": 0.2}, rotation={"max_degrees": 90}, elastic={"alpha": 8.0, "sigma": 2.0})
    rows = preview_rows(x, **on, seed=0, n=3)
    labels = [label.split("\n")[0] for label, _ in rows]
    assert labels == ["original", "translation", "rotation", "elastic", "full chain"]
    np.testing.assert_allclose(rows[0][1], x[:3] / 255.0)
    for _, batch in rows[1:]:
        assert batch.shape == (3, 16, 16, 1)
        assert np.abs(batch - rows[0][1]).max() > 0.1  # each op row shows the op (probability 1)
    only_rotation = preview_rows(x, rotation={"max_degrees": 90, "probability": 0.0}, elastic={"alpha": 4.0}, seed=0)
    assert [label.split("\n")[0] for label, _ in only_rotation] == ["original", "elastic", "full chain"]


def test_grid_is_an_rgb_image_that_grows_with_the_rows():
    one = preview_grid(_images(), rotation={"max_degrees": 90}, seed=0, n=4)
    three = preview_grid(_images(), translation={"max": 0.2}, rotation={"max_degrees": 90}, elastic={"alpha": 4.0}, seed=0, n=4)
    assert one.dtype == np.uint8 and one.ndim == 3 and one.shape[2] == 3
    assert one.shape[1] == three.shape[1] and three.shape[0] > one.shape[0] * 1.5


def test_make_preview_writes_the_png(tmp_path):
    from pipelines import preview

    cfg = tmp_path / "exp.yaml"
    cfg.write_text(
        "data: {source: synthetic, synthetic: {train_size: 40, test_size: 10}}\n"
        "augment: {rotation: {max_degrees: 45}, elastic: {alpha: 8, sigma: 3}}\n"
    )
    out = tmp_path / "grid.png"
    code = preview.main(["--config", str(cfg), "--n", "3", "--out", str(out), f"data.cache_dir={tmp_path / 'cache'}"])
    assert code == 0
    img = np.asarray(Image.open(out))
    assert img.shape[2] in (3, 4) and img.std() > 10


@pytest.mark.parametrize("override", [
    "augment.rotation.max_degrees=400", "augment.elastic.beta=1",
    # settings that only the images' size makes wrong (28x28 digits): checked before the layers are first called
    "augment.translation.units=pixels augment.translation.max=28",
    "data.image_size=[28,32] augment.flip.rotate90=true",
    "augment.elastic.alpha=8 augment.elastic.sigma=1e9",
])
def test_bad_config_ends_in_one_message_and_exit_code_2(tmp_path, capsys, override):
    from pipelines import preview
    from pipelines.cli import run_main

    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data: {source: synthetic}\n")
    args = ["--config", str(cfg), f"data.cache_dir={tmp_path / 'cache'}", *override.split()]
    assert run_main(preview.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: augment.")
    assert not (tmp_path / "reports").exists()


def test_the_chain_row_shows_what_training_draws_for_its_first_batch():
    """One seed (train.seed) decides both: the preview's chain row is training's first batch."""
    import tensorflow as tf

    from data.augment import augment_dataset, build_augmentation

    x = _images(4)
    on = dict(translation={"max": 0.2}, rotation={"max_degrees": 90}, elastic={"alpha": 8.0, "sigma": 2.0})
    chain_row = preview_rows(x, **on, seed=7, n=4)[-1][1]
    aug = build_augmentation(**on, seed=7)
    first = next(iter(augment_dataset(tf.data.Dataset.from_tensors(x.astype("float32") / 255.0), aug, seed=7)))
    np.testing.assert_allclose(chain_row, np.asarray(first), atol=1e-6)
    other = preview_rows(x, **on, seed=8, n=4)[-1][1]
    assert np.abs(other - chain_row).max() > 0.1


def test_train_seed_decides_the_training_augmentation(tmp_path):
    from pipelines import experiment
    from pipelines.config import config_from_dict

    x = np.repeat(_images(8), 4, axis=0)
    y = np.arange(32) % 4
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_val=x[:4], y_val=y[:4], x_test=x[:4], y_test=y[:4])
    source = f"data.source=npz:{tmp_path / 'd.npz'}"
    splits = experiment.load_data(config_from_dict({}, [source]))

    def first_batch(*overrides):
        cfg = config_from_dict({}, [source, "augment.rotation.max_degrees=90", "data.batch_size=8", *overrides])
        train_ds, _, _ = experiment.make_datasets(cfg, splits, experiment.build_augmentation(cfg))
        return np.asarray(next(iter(train_ds))[0])

    a = first_batch("train.seed=1", "data.seed=5")
    np.testing.assert_allclose(a, first_batch("train.seed=1", "data.seed=6"))  # data.seed: not the augmentation
    assert np.abs(a - first_batch("train.seed=2", "data.seed=5")).max() > 0.1


def test_every_row_label_of_the_preview_fits_in_the_image():
    """The longest labels (three flips, a scale range) are drawn whole: no text pixel at the image's left edge."""
    rgb = preview_grid(_images(3), rotation={"max_degrees": 30}, elastic={"alpha": 34.0, "sigma": 4.0},
                       scale={"min": 0.75, "max": 1.25}, flip={"horizontal": True, "vertical": True, "rotate90": True},
                       n=3, title="t")
    assert rgb.shape[0] > 0 and (rgb[:, :4] > 250).all()  # the left margin is white: nothing cut there


def test_a_damaged_shard_is_one_error_naming_it(tmp_path, capsys):
    from data.tfrecord import convert
    from pipelines import preview
    from pipelines.cli import run_main

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (40, 12, 12), dtype=np.uint8), y_train=np.arange(40) % 2,
             x_test=rng.integers(0, 256, (10, 12, 12), dtype=np.uint8), y_test=np.arange(10) % 2)
    convert(f"npz:{tmp_path / 'd.npz'}", str(tmp_path / "shards"), progress=False)
    shard = tmp_path / "shards" / "train-00000-of-00001.tfrecord"
    shard.write_bytes(shard.read_bytes()[:-50])  # cut short
    cfg = tmp_path / "exp.yaml"
    cfg.write_text(f"data: {{source: 'tfrecord:{tmp_path / 'shards'}'}}\n")
    assert run_main(preview.main, ["--config", str(cfg), "--n", "4", "--out", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{shard} (truncated record at byte" in err[0], err
    assert not (tmp_path / "p.png").exists()
