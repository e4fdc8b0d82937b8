"""The shipped EuroSAT config is the network its comment gives figures for (bench_eurosat's gcnn_d8_residual,
trained on the same schedule), and the model it builds is exactly invariant to quarter turns, mirrors and
transposes of an RGB tile."""

import os
import sys

import keras
import numpy as np

import models
from pipelines.config import load_config
from tests.models.test_gcnn import D4_ELEMENTS, logits

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))
import bench_eurosat  # noqa: E402

CONFIG = os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "configs", "gcnn_eurosat.yaml")


def test_the_config_is_the_benchmarked_d8_network_on_its_schedule():
    cfg = load_config(CONFIG, ["data.source=folder:/data/eurosat"])
    assert cfg.data.source == "folder:/data/eurosat" and cfg.data.channels == 3
    builder, params, flips = bench_eurosat.TABLES["low"]["gcnn_d8_residual"]
    assert cfg.model.name == builder and flips is None and not cfg.augment.flip.on  # no symmetry augmentation
    assert {k: cfg.model.params[k] for k in params} == params
    assert (cfg.train.epochs, cfg.train.learning_rate, cfg.train.lr_schedule, cfg.data.batch_size) == (80, 0.002,
                                                                                                      "cosine", 32)
    model = models.build_model(cfg.model.name, (64, 64, 3), 10, **cfg.model.params)
    assert model.count_params() == 297_170  # the row of docs/results.md


def test_the_configs_model_is_exactly_invariant_to_every_rot90_mirror_and_transpose():
    cfg = load_config(CONFIG)
    keras.utils.set_random_seed(0)
    model = models.build_model(cfg.model.name, (64, 64, 3), 10, **cfg.model.params)
    x = np.random.default_rng(1).uniform(0, 1, (2, 64, 64, 3)).astype("float32")
    y = logits(model, x)
    assert np.abs(y[0] - y[1]).max() > 1e-4  # the two tiles are told apart
    for name, t in D4_ELEMENTS.items():
        assert np.abs(logits(model, t(x)) - y).max() <= 1e-5 * np.abs(y).max(), name
