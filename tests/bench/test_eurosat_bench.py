"""bench_eurosat.py keeps each trained model's weights before evaluating it, and its orbit row wraps the weights
of the flips + quarter turns resnet trained earlier in the run instead of training that resnet again."""

import json
import os
import sys

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import bench_eurosat as b  # noqa: E402

SMALL = dict(b.RESNET, filters=[4, 4, 4, 4])


def fake_eurosat(root, classes=3, per_split=10):
    rng = np.random.default_rng(0)
    for split in ("train", "valid", "test"):
        for c in range(classes):
            d = root / split / f"class{c}"
            d.mkdir(parents=True)
            for i in range(per_split):
                Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(d / f"{i:03d}.png")
    return root


def test_the_orbit_row_wraps_the_trained_resnet_and_weights_are_kept(tmp_path, monkeypatch):
    data, out = fake_eurosat(tmp_path / "eurosat"), tmp_path / "rows.json"
    monkeypatch.setitem(b.TABLES, "low", {
        "resnet_flips_rot90": ("resnet", SMALL, b.FLIPS_ROT90),
        "resnet_flips_rot90_orbit_d4": ("resnet", SMALL, b.FLIPS_ROT90),
    })
    fits = []
    real_fit = b.train_dataset
    monkeypatch.setattr(b, "train_dataset", lambda *a, **k: (fits.append(1), real_fit(*a, **k))[1])
    monkeypatch.setattr(sys, "argv", ["bench_eurosat.py", "--data", str(data), "--epochs", "1", "--out", str(out),
                                      "--verbose", "0"])
    assert b.main() == 0
    rows = {r["model"]: r for r in json.load(open(out))}
    assert len(fits) == 1  # the resnet was trained once, for both rows
    weights = tmp_path / "rows.weights" / "resnet_flips_rot90.weights.h5"
    assert weights.exists()
    orbit = rows["resnet_flips_rot90_orbit_d4"]
    assert orbit["trained"] == "the weights of resnet_flips_rot90, wrapped"
    assert orbit["train img/s"] == rows["resnet_flips_rot90"]["train img/s"]
    assert orbit["params"] == rows["resnet_flips_rot90"]["params"]  # the wrapper adds no weights

    # another number of epochs: those weights are not that model's, so the resnet is trained again
    monkeypatch.setattr(sys, "argv", ["bench_eurosat.py", "--data", str(data), "--epochs", "2", "--out", str(out),
                                      "--verbose", "0", "--models", "resnet_flips_rot90_orbit_d4"])
    assert b.main() == 0
    assert len(fits) == 2
    assert "trained" not in json.load(open(out))[0]
