"""Shared by the builder tests: the mixed-precision policy and a float16 training-step check."""

import keras
import numpy as np
import pytest

from tests.autodiff import gradients


@pytest.fixture
def mixed_float16():
    """The training job's `train.mixed_precision: true` sets this global policy; restored after."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


# Layers that pool logits: float32 by design, whatever the global policy (their docstrings).
FLOAT32_BY_DESIGN = {"ConfidentPooling", "OrbitMean", "CanonicalMarginal"}


def assert_float16_training_step(model, input_shape):
    """Every custom layer computes in float16 (but those that pool logits), logits stay float32, and every gradient
    is finite."""
    custom = [l for l in model.layers
              if type(l).__module__.startswith("layers.") and type(l).__name__ not in FLOAT32_BY_DESIGN]
    assert custom and all(l.compute_dtype == "float16" for l in custom)
    x = np.random.default_rng(0).uniform(size=(2, *input_shape)).astype("float32")
    logits = model(x, training=True)
    assert keras.backend.standardize_dtype(logits.dtype) == "float32"
    assert np.all(np.isfinite(keras.ops.convert_to_numpy(logits)))
    _, grads = gradients(lambda t: keras.ops.mean(keras.ops.square(model(t, training=True))), [x],
                         model.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grads)
