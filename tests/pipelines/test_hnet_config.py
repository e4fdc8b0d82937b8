"""pipelines/configs/hnet_rotated_mnist.yaml loads, validates and builds its model."""

import models
from pipelines.config import load_config


def test_hnet_config_loads_and_builds():
    cfg = load_config("pipelines/configs/hnet_rotated_mnist.yaml", ["data.source=npz:../shared/data/mnist-partial.npz"])
    assert cfg.model.name == "hnet" and cfg.augment.rotation.max_degrees == 180
    model = models.build_model(cfg.model.name, (28, 28, 1), 10, **cfg.model.params)
    assert model.output_shape == (None, 10)
