"""The baseline builder's argument checks: a bad model.params value is a ValueError that echoes it."""

import pytest

from models import build_model


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"filters": 32}, "32"),  # one int, not a list of stages
        ({"filters": []}, r"\[\]"),
        ({"filters": (4, 8), "kernel_sizes": [3]}, r"\[3\]"),  # one entry for two stages
        ({"kernel_sizes": "x"}, "'x'"),
        ({"downsample": "pool"}, "'pool'"),
        ({"conv": "depthwise"}, "'depthwise'"),
        ({"padding": "reflect"}, "'reflect'"),
        ({"head": "attention"}, "'attention'"),
        ({"convs_per_stage": "2"}, "'2'"),
        ({"convs_per_stage": 0}, "0"),
    ],
)
def test_bad_params_raise_value_error_echoing_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        build_model("baseline_cnn", (16, 16, 1), 3, **kwargs)


@pytest.fixture
def mixed_float16():
    """The training job's `train.mixed_precision: true` sets this global policy; restored after."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


@pytest.mark.parametrize(
    "params",
    [
        {"downsample": "blur", "conv": "spatial_separable", "conv_rank": 2},
        {"downsample": "blur_strided", "conv": "separable"},
        {"downsample": "blur_avg", "padding": "circular"},
        {"downsample": "aps", "padding": "circular", "head": "gap", "conv": "spatial_separable"},
    ],
)
def test_trains_under_mixed_float16(mixed_float16, params):
    """Each custom layer runs on float16 activations (forward and backward), logits stay float32."""
    import numpy as np
    import tensorflow as tf

    model = build_model("baseline_cnn", (16, 16, 1), 3, filters=(4, 8), convs_per_stage=1, **params)
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype("float32")
    with tf.GradientTape() as tape:
        logits = model(x, training=True)
        loss = tf.reduce_mean(tf.square(logits))
    grads = tape.gradient(loss, model.trainable_weights)
    assert logits.dtype == tf.float32 and np.all(np.isfinite(logits.numpy()))
    custom = [l for l in model.layers if type(l).__module__.startswith("layers.")]
    assert custom and all(l.compute_dtype == "float16" for l in custom)
    assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads)
