"""ScaleHarmonicConv2D: shared checks, its dilation-1 scale is HarmonicConv2D, exact per-dilation scale
relation under the triangle-filtered reduction, exact rot90 equivariance, pooling by magnitude."""

import keras
import numpy as np
import pytest
from scipy import ndimage

from layers.harmonic.harmonic_conv import HarmonicConv2D
from layers.scale.scale_harmonic_conv import ScaleHarmonicConv2D, triangle_filter
from tests.autodiff import to_numpy
from tests.layers.layer_checks import check_layer


def rot90_streams(z, orders, k=1):
    """np.rot90 of a harmonic map [B, H, W, M, 2, C], stream of order m times e^{i m k pi/2}."""
    zr = np.rot90(z, k, axes=(1, 2))
    t = k * np.pi / 2
    cos = np.round(np.cos(np.asarray(orders) * t))[:, None]
    sin = np.round(np.sin(np.asarray(orders) * t))[:, None]
    re, im = zr[..., 0, :], zr[..., 1, :]
    return np.stack([re * cos - im * sin, re * sin + im * cos], axis=-2)


def reduce(x, a):
    """Down_a: the separable triangle filter of width 2a - 1 (zero padding), then every a-th pixel."""
    t = triangle_filter(a)
    y = ndimage.correlate1d(x.astype(np.float64), t, axis=1, mode="constant")
    y = ndimage.correlate1d(y, t, axis=2, mode="constant")
    return y[:, ::a, ::a]


def test_triangle_filter():
    np.testing.assert_allclose(triangle_filter(1), [1.0])
    np.testing.assert_allclose(triangle_filter(3), np.array([1, 2, 3, 2, 1]) / 9)
    assert all(abs(triangle_filter(a).sum() - 1) < 1e-12 for a in range(1, 6))


def test_shared_layer_checks():
    check_layer(lambda: ScaleHarmonicConv2D(2, 3, dilations=(1, 2)), (2, 8, 8, 1), (2, 8, 8, 2, 2, 2),
                expects_trainable_weights=True)
    check_layer(lambda: ScaleHarmonicConv2D(2, 3, dilations=[1, 3], pooling="mean", orders=(0, 1, 2)),
                (1, 6, 6, 3, 2, 2), (1, 6, 6, 3, 2, 2), atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="a tf.function with an unknown batch size")
def test_runs_in_a_graph_with_unknown_batch_size():
    import tensorflow as tf

    layer = ScaleHarmonicConv2D(2, 3, dilations=(1, 2))
    x = np.random.default_rng(4).standard_normal((3, 8, 8, 2, 2, 2)).astype("float32")
    want = to_numpy(layer(x))
    graph = tf.function(layer, input_signature=[tf.TensorSpec((None, 8, 8, 2, 2, 2), tf.float32)])
    np.testing.assert_allclose(graph(x).numpy(), want, atol=1e-6)


def test_one_dilation_is_the_harmonic_convolution():
    x = np.random.default_rng(0).standard_normal((2, 9, 9, 2)).astype("float32")
    layer = ScaleHarmonicConv2D(3, 5, dilations=[1])
    plain = HarmonicConv2D(3, 5)
    y = layer(x)
    plain.build(x.shape)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(y), to_numpy(plain(x)), atol=1e-5)


@pytest.mark.parametrize("a", [2, 3])
def test_each_dilation_is_exactly_the_base_filter_on_the_reduced_image(a):
    keras.utils.set_random_seed(1)
    layer = ScaleHarmonicConv2D(2, 5, dilations=(1, a))
    x = np.random.default_rng(a).standard_normal((2, 12, 12, 1)).astype("float32")
    per_scale = to_numpy(layer.scale_outputs(x))  # [S, B, H, W, M, 2, C]
    small = to_numpy(layer.scale_outputs(reduce(x, a).astype("float32")))
    scale = np.abs(per_scale[1]).max()
    np.testing.assert_allclose(per_scale[1][:, ::a, ::a], small[0], atol=2e-5 * scale)
    # and not trivially: the undilated scale differs
    assert np.abs(per_scale[0][:, ::a, ::a] - small[0]).max() > 1e-2 * scale


def test_rot90_equivariance_is_exact():
    keras.utils.set_random_seed(2)
    first = ScaleHarmonicConv2D(3, 5, dilations=(1, 2, 3))
    second = ScaleHarmonicConv2D(2, 3, dilations=(1, 2), orders=(0, 1, 2), input_orders=(0, 1))
    x = np.random.default_rng(2).standard_normal((2, 12, 12, 1)).astype("float32")
    y = to_numpy(second(first(x)))
    for k in (1, 2, 3):
        yr = to_numpy(second(first(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))))))
        np.testing.assert_allclose(yr, rot90_streams(y, (0, 1, 2), k), atol=1e-5 * np.abs(y).max())


def test_max_pooling_keeps_the_complex_value_of_the_largest_magnitude():
    keras.utils.set_random_seed(3)
    layer = ScaleHarmonicConv2D(2, 3, dilations=(1, 2, 3))
    x = np.random.default_rng(3).standard_normal((1, 7, 7, 1)).astype("float32")
    per_scale = to_numpy(layer.scale_outputs(x))
    pick = np.argmax((per_scale**2).sum(axis=-2, keepdims=True), axis=0)
    want = np.take_along_axis(per_scale, pick[None].repeat(2, axis=-2), axis=0)[0]
    np.testing.assert_allclose(to_numpy(layer(x)), want, atol=1e-6)
    mean = ScaleHarmonicConv2D.from_config({**layer.get_config(), "pooling": "mean"})
    mean.build(x.shape)
    mean.set_weights(layer.get_weights())
    np.testing.assert_allclose(to_numpy(mean(x)), per_scale.mean(axis=0), atol=1e-5)


def test_max_pooling_runs_compiled_in_predict_and_fit():
    """Keras' compiled predict and fit with two dilations and max pooling. Its one_hot of the argmax, multiplied
    and summed, crashed the process on JAX (jaxlib 0.10's CPU compiler, under jit; eager calls were fine)."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((12, 12, 1))
    layer = ScaleHarmonicConv2D(2, 5, dilations=(1, 2))
    model = keras.Model(inputs, layer(inputs))
    x = np.random.default_rng(4).standard_normal((2, 12, 12, 1)).astype("float32")
    per_scale = to_numpy(layer.scale_outputs(x))
    pick = np.argmax((per_scale**2).sum(axis=-2, keepdims=True), axis=0)
    want = np.take_along_axis(per_scale, pick[None].repeat(2, axis=-2), axis=0)[0]
    np.testing.assert_allclose(model.predict(x, verbose=0), want, atol=1e-5)
    model.compile("adam", "mse")
    loss = model.fit(x, np.zeros_like(want), epochs=1, verbose=0).history["loss"][0]
    assert np.isfinite(loss) and all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dilations=[]), r"dilations must be a list of distinct positive integers, got \[\]"),
        (dict(dilations=[1, 1]), r"got \[1, 1\]"),
        (dict(dilations=[0, 2]), r"got \[0, 2\]"),
        (dict(dilations=[1.5]), r"got \[1.5\]"),
        (dict(dilations=3), "got 3"),
        (dict(pooling="min"), r"pooling must be one of \('max', 'mean'\), got 'min'"),
        (dict(strides=2), "strides must be 1 for ScaleHarmonicConv2D .*got 2"),
        (dict(padding="valid"), "padding must be 'same' for ScaleHarmonicConv2D, got 'valid'"),
        (dict(kernel_size=4), "kernel_size must be an odd integer >= 3, got 4"),
    ],
)
def test_bad_arguments_are_refused_with_the_value(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScaleHarmonicConv2D(2, **kwargs)
