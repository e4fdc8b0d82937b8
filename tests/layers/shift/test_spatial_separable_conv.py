"""SpatialSeparableConv2D: shared checks, equality with Conv2D on outer-product kernels, parameter counts."""

import keras
import numpy as np
import pytest

from layers.shift.spatial_separable_conv import SpatialSeparableConv2D
from tests.autodiff import gradients, to_numpy
from tests.layers.layer_checks import check_layer


@pytest.mark.parametrize("padding,expected", [("valid", (2, 4, 5, 6)), ("same", (2, 8, 9, 6)), ("circular", (2, 8, 9, 6))])
def test_shared_layer_checks(padding, expected, ops_path):
    check_layer(lambda: SpatialSeparableConv2D(6, 5, rank=2, padding=padding), (2, 8, 9, 3), expected,
                expects_trainable_weights=True)


def test_valid_padding_refuses_an_input_smaller_than_the_kernel_at_build():
    """It failed at call with "Cannot convert '(None, -1, -1, 8)' to a shape", naming neither size."""
    with pytest.raises(ValueError, match=r"a 5x5 kernel with padding 'valid' needs an input of at least 5x5, got "
                                         r"shape \(None, 4, 9, 3\); use padding 'same'"):
        SpatialSeparableConv2D(8, 5, padding="valid")(keras.Input((4, 9, 3)))
    assert SpatialSeparableConv2D(8, 5, padding="valid")(keras.Input((5, 5, 3))).shape == (None, 1, 1, 8)
    assert SpatialSeparableConv2D(8, 5, padding="same")(keras.Input((4, 4, 3))).shape == (None, 4, 4, 8)


def _layer_and_equivalent_kernel(filters, k, rank, strides, padding, channels=3, seed=0):
    layer = SpatialSeparableConv2D(filters, k, rank=rank, strides=strides, padding=padding)
    layer.build((None, 9, 10, channels))
    rng = np.random.default_rng(seed)
    v = rng.standard_normal((k, 1, channels, rank * filters)).astype("float32")
    h = rng.standard_normal((1, k, rank * filters, 1)).astype("float32")
    bias = rng.standard_normal(filters).astype("float32")
    layer.set_weights([v, h, bias])
    # Pair j of output m lives in intermediate channel m * rank + j.
    vv = v[:, 0].reshape(k, channels, filters, rank)
    hh = h[0, :, :, 0].reshape(k, filters, rank)
    kernel = np.einsum("acmj,bmj->abcm", vv, hh)
    return layer, kernel, bias


@pytest.mark.parametrize("rank", [1, 2])
@pytest.mark.parametrize("strides,padding", [(1, "same"), (1, "valid"), (2, "same"), (2, "valid")])
@pytest.mark.parametrize("k", [3, 4])
def test_equals_conv2d_with_the_outer_product_kernel(k, strides, padding, rank, ops_path):
    layer, kernel, bias = _layer_and_equivalent_kernel(4, k, rank, strides, padding)
    conv = keras.layers.Conv2D(4, k, strides=strides, padding=padding)
    conv.build((None, 9, 10, 3))
    conv.set_weights([kernel, bias])
    x = np.random.default_rng(1).standard_normal((2, 9, 10, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(layer(x)), to_numpy(conv(x)), rtol=1e-4, atol=1e-4)


def test_circular_padding_equals_conv2d_on_the_wrapped_input_and_commutes_with_roll(ops_path):
    layer, kernel, bias = _layer_and_equivalent_kernel(4, 5, 2, 1, "circular")
    x = np.random.default_rng(2).standard_normal((2, 9, 10, 3)).astype("float32")
    wrapped = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="wrap")
    expected = np.einsum("nhwabc,abcm->nhwm", np.lib.stride_tricks.sliding_window_view(wrapped, (5, 5), axis=(1, 2))
                         .transpose(0, 1, 2, 4, 5, 3), kernel) + bias
    np.testing.assert_allclose(to_numpy(layer(x)), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        to_numpy(layer(np.roll(x, (3, -1), axis=(1, 2)))), np.roll(to_numpy(layer(x)), (3, -1), axis=(1, 2)),
        atol=1e-4,
    )


@pytest.mark.parametrize("channels,filters,k,rank,use_bias", [(3, 8, 3, 1, True), (16, 32, 5, 2, False), (7, 5, 7, 3, True)])
def test_parameter_count_matches_the_docstring_formula(channels, filters, k, rank, use_bias):
    layer = SpatialSeparableConv2D(filters, k, rank=rank, use_bias=use_bias)
    layer.build((None, 16, 16, channels))
    expected = k * channels * rank * filters + k * rank * filters + (filters if use_bias else 0)
    assert layer.count_params() == expected
    full = keras.layers.Conv2D(filters, k, use_bias=use_bias)
    full.build((None, 16, 16, channels))
    assert full.count_params() == k * k * channels * filters + (filters if use_bias else 0)


@pytest.mark.parametrize(
    "kwargs",
    [{"filters": 0}, {"kernel_size": -1}, {"rank": 0}, {"rank": 4}, {"strides": 0}, {"padding": "reflect"},
     {"use_bias": "yes"}],
)
def test_invalid_arguments_raise_value_error_naming_the_value(kwargs):
    args = {"filters": 4, "kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=repr(list(kwargs.values())[0])):
        SpatialSeparableConv2D(**args)


@pytest.mark.parametrize("rank,strides,padding", [(1, 2, "same"), (2, 1, "circular"), (2, 2, "valid")])
def test_mixed_precision_float16_inputs_give_float16_outputs_and_gradients(rank, strides, padding, ops_path):
    """Under mixed_float16 the strided depthwise pass and the grouped convolution's gradient must run on CPU."""
    layer, kernel, bias = _layer_and_equivalent_kernel(4, 3, rank, strides, padding)
    half = SpatialSeparableConv2D(4, 3, rank=rank, strides=strides, padding=padding, dtype="mixed_float16")
    half.build((None, 9, 10, 3))
    half.set_weights(layer.get_weights())
    x = np.random.default_rng(3).standard_normal((2, 9, 10, 3)).astype("float32")
    xh = x.astype("float16")
    y = half(xh)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(y).astype("float32"), to_numpy(layer(x)), rtol=2e-2, atol=5e-2)
    loss = lambda t: keras.ops.sum(keras.ops.square(keras.ops.cast(half(t), "float32")))
    grad_x, grads = gradients(loss, [xh], half.trainable_weights)
    assert all(g is not None and np.all(np.isfinite(g)) for g in grad_x + grads)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's kernel sets")
def test_grouped_gradient_probe_matches_the_kernel_set_and_both_branches_agree(monkeypatch):
    """The grouped-convolution fast path is chosen by a probe of the kernels, not by the machine: on a CPU,
    TensorFlow's own kernels refuse grouped gradients and oneDNN's compute them. Rank 2 through the grouped
    branch (where the kernels have it) and the depthwise branch gives the same values and gradients."""
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    from layers.common import _tf_fast

    if not tf.config.list_physical_devices("GPU"):
        assert _tf_fast.grouped_conv_gradients() == _pywrap_util_port.IsMklEnabled()
    layer = SpatialSeparableConv2D(6, 5, rank=2, strides=2, padding="same")
    x = tf.constant(np.random.default_rng(3).normal(size=(2, 11, 12, 4)).astype("float32"))
    layer(x)

    def values_and_grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return [y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x] + layer.trainable_weights)]

    probed = values_and_grads()
    monkeypatch.setitem(_tf_fast._PROBED, "grouped", False)
    for a, b in zip(probed, values_and_grads()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
