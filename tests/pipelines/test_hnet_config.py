"""Every experiment config in pipelines/configs/ loads, validates and builds its model; the
hnet config is the paper's network with full-circle rotation augmentation."""

import glob
import os

import pytest

import models
from pipelines.config import load_config

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "pipelines", "configs", "*.yaml")))


def test_hnet_config_is_the_papers_network_with_rotation_augmentation():
    cfg = load_config("pipelines/configs/hnet_rotated_mnist.yaml", ["data.source=npz:/data/other.npz"])
    assert cfg.data.source == "npz:/data/other.npz"  # the override reaches the config
    assert cfg.model.name == "hnet" and cfg.augment.rotation.max_degrees == 180
    model = models.build_model(cfg.model.name, (28, 28, 1), 10, **cfg.model.params)
    assert model.output_shape == (None, 10)
    assert 30_000 <= model.count_params() <= 38_000  # the paper's ~33k


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_loads_and_its_model_builds(path):
    cfg = load_config(path)
    shape = tuple(cfg.data.image_size or (28, 28)) + (1,)
    model = models.build_model(cfg.model.name, shape, 10, **cfg.model.params)
    assert model.output_shape == (None, 10)
