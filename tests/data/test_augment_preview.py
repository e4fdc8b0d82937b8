"""The augmentation preview: the grid's rows and `make preview` (pipelines/preview.py)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from data.augment import preview_grid, preview_rows


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


@pytest.mark.parametrize("override", ["augment.rotation.max_degrees=400", "augment.elastic.beta=1"])
def test_bad_config_ends_in_one_message_and_exit_code_2(tmp_path, capsys, override):
    from pipelines import preview
    from pipelines.cli import run_main

    cfg = tmp_path / "exp.yaml"
    cfg.write_text("data: {source: synthetic}\n")
    assert run_main(preview.main, ["--config", str(cfg), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: augment.")
    assert not (tmp_path / "reports").exists()
