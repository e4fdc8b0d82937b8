"""How `make train` compiles the train step on each backend (pipelines/experiment.py `compile_model`)."""

import os

import keras
import numpy as np

from pipelines import experiment
from pipelines.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_the_default_config_jits_the_step_on_jax_only_and_the_compiled_step_trains():
    cfg = load_config(os.path.join(ROOT, "pipelines", "configs", "default.yaml"), ["model.params.filters=[4]"])
    assert cfg.train.xla is False  # the default config: TensorFlow's graph mode without XLA
    model = experiment.compile_model(experiment.build_model(cfg, (28, 28, 1), 10), cfg, steps=4)
    # Unjitted, Keras runs JAX's step op by op (several times slower); TensorFlow and torch keep theirs.
    assert model.jit_compile is (keras.backend.backend() == "jax")
    x = np.random.default_rng(0).random((16, 28, 28, 1), dtype=np.float32)
    y = np.arange(16) % 10
    losses = [model.train_on_batch(x, y, return_dict=True)["loss"] for _ in range(4)]
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
