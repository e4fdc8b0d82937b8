"""C-ReLU, magnitude batch norm, complex average pooling and the invariant readout.

Layout: [batch, H, W, orders, 2 (re, im), channels].
"""

import re

import keras
import numpy as np
import pytest

from layers.harmonic.harmonic_batch_norm import HarmonicBatchNormalization
from layers.harmonic.harmonic_pool import HarmonicAveragePooling2D, binomial_kernel
from layers.harmonic.harmonic_readout import HarmonicMagnitudeReadout
from layers.harmonic.harmonic_relu import HarmonicReLU
from tests.autodiff import gradients, to_numpy
from tests.layers.layer_checks import check_layer

SHAPE = (2, 6, 6, 2, 2, 3)


def complex_of(y):
    y = to_numpy(y, np.float64)
    return y[..., 0, :] + 1j * y[..., 1, :]


# ----------------------------------------------------------------------------- C-ReLU


def test_relu_shared_checks():
    check_layer(lambda: HarmonicReLU(bias_initializer=keras.initializers.Constant(-0.3)), SHAPE, SHAPE, expects_trainable_weights=True)


def test_relu_matches_numpy_and_keeps_phase():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(SHAPE).astype("float32")
    layer = HarmonicReLU()
    layer.build(SHAPE)
    bias = rng.uniform(-1, 1, (2, 3)).astype("float32")
    layer.bias.assign(bias)
    z = complex_of(x)
    mag = np.abs(z)
    want = np.maximum(mag + bias, 0) * z / mag
    got = complex_of(layer(x))
    np.testing.assert_allclose(got, want, atol=1e-5)
    on = np.abs(got) > 1e-3
    assert on.any() and (~on).any()  # some values cut, some kept
    np.testing.assert_allclose(np.angle(got[on]), np.angle(z[on]), atol=1e-5)


def test_relu_is_finite_with_finite_gradient_at_zero():
    layer = HarmonicReLU(bias_initializer=keras.initializers.Constant(0.5))
    x = np.zeros((1, 2, 2, 2, 2, 3), "float32")
    y = layer(x)
    w = np.random.default_rng(0).standard_normal(y.shape).astype("float32")
    (gx,), (gb,) = gradients(lambda t: keras.ops.sum(keras.ops.multiply(layer(t), w)), [x], [layer.bias])
    assert np.all(to_numpy(y) == 0)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gb))


@pytest.mark.parametrize("kwargs", [{"epsilon": 0.0}, {"activation": "no_such_fn"}])
def test_relu_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=repr(list(kwargs.values())[0])):
        HarmonicReLU(**kwargs)


# ----------------------------------------------------------------------------- batch norm


def test_batch_norm_shared_checks():
    check_layer(lambda: HarmonicBatchNormalization(activation="relu"), SHAPE, SHAPE, expects_trainable_weights=True)


def test_batch_norm_normalises_magnitudes_and_keeps_phase():
    rng = np.random.default_rng(1)
    x = (3.0 * rng.standard_normal((8, 6, 6, 2, 2, 3)) + 1.0).astype("float32")
    layer = HarmonicBatchNormalization(epsilon=1e-6)
    got = complex_of(layer(x, training=True))
    z = complex_of(x)
    mag = np.abs(z)
    want_mag = (mag - mag.mean(axis=(0, 1, 2))) / np.sqrt(mag.var(axis=(0, 1, 2)) + 1e-6)
    np.testing.assert_allclose(got, want_mag * z / mag, atol=1e-4)
    # moving statistics moved towards the batch statistics; inference uses them
    mean = keras.ops.convert_to_numpy(layer.bn.moving_mean).reshape(2, 3)
    np.testing.assert_allclose(mean, 0.01 * mag.mean(axis=(0, 1, 2)), rtol=1e-3)
    assert not np.allclose(to_numpy(layer(x, training=False)), to_numpy(layer(x, training=True)))


def test_batch_norm_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("momentum must be in [0, 1), got 1.5")):
        HarmonicBatchNormalization(momentum=1.5)
    with pytest.raises(ValueError, match=re.escape("center must be True or False, got 'yes'")):
        HarmonicBatchNormalization(center="yes")


# ----------------------------------------------------------------------------- pooling


def test_pool_shared_checks():
    check_layer(lambda: HarmonicAveragePooling2D(2), SHAPE, (2, 3, 3, 2, 2, 3), expects_trainable_weights=False)
    check_layer(lambda: HarmonicAveragePooling2D(2, blur_size=3), SHAPE, (2, 3, 3, 2, 2, 3), expects_trainable_weights=False)


def test_binomial_kernel_is_pascals_triangle():
    np.testing.assert_allclose(binomial_kernel(1, 5), np.array([1, 4, 6, 4, 1]) / 16)
    np.testing.assert_allclose(binomial_kernel(2, 3), np.array([1, 3, 3, 1]) / 8)  # box2 * [1,2,1]
    np.testing.assert_allclose(binomial_kernel(2, 1), [0.5, 0.5])


def test_pool_averages_each_complex_value():
    x = np.random.default_rng(2).standard_normal(SHAPE).astype("float32")
    got = to_numpy(HarmonicAveragePooling2D(2)(x))
    want = x.reshape(2, 3, 2, 3, 2, 2, 2, 3).mean(axis=(2, 4))
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_blur_pool_matches_numpy_filter():
    x = np.random.default_rng(3).standard_normal((1, 8, 8, 1, 2, 1)).astype("float32")
    got = to_numpy(HarmonicAveragePooling2D(2, blur_size=3)(x))
    k = binomial_kernel(2, 3)  # length 4, zero padding 1 each side, stride 2
    xp = np.pad(x[0, :, :, 0, 0, 0], 1)
    want = np.array([[np.sum(np.outer(k, k) * xp[2 * i : 2 * i + 4, 2 * j : 2 * j + 4]) for j in range(4)] for i in range(4)])
    np.testing.assert_allclose(got[0, :, :, 0, 0, 0], want, atol=1e-6)


@pytest.mark.parametrize("blur_size", [1, 3, 5])
def test_pool_commutes_with_rot90_on_even_sizes(blur_size):
    x = np.random.default_rng(4).standard_normal((1, 8, 8, 1, 2, 2)).astype("float32")
    layer = HarmonicAveragePooling2D(2, blur_size=blur_size)
    a = np.rot90(to_numpy(layer(x)), axes=(1, 2))
    b = to_numpy(layer(np.ascontiguousarray(np.rot90(x, axes=(1, 2)))))
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_pool_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("blur_size must be an odd positive integer (1: no blur), got 2")):
        HarmonicAveragePooling2D(blur_size=2)
    with pytest.raises(ValueError, match=re.escape("pool_size must be a positive integer, got 0")):
        HarmonicAveragePooling2D(pool_size=0)
    with pytest.raises(ValueError, match=re.escape("strides must be a positive integer or None, got 0")):
        HarmonicAveragePooling2D(strides=0)


def test_pool_loads_configs_saved_with_the_old_blur_name():
    layer = HarmonicAveragePooling2D.from_config({"pool_size": 2, "strides": None, "blur": 3, "name": "p"})
    assert layer.blur_size == 3 and "blur" not in layer.get_config()


# ----------------------------------------------------------------------------- readout


def test_readout_shared_checks():
    check_layer(lambda: HarmonicMagnitudeReadout(use_bias=True), SHAPE, (2, 3), expects_trainable_weights=True)
    check_layer(lambda: HarmonicMagnitudeReadout(pool=False), SHAPE, (2, 6, 6, 3), expects_trainable_weights=False)


def test_readout_sums_magnitudes_over_orders_then_averages():
    x = np.random.default_rng(5).standard_normal(SHAPE).astype("float32")
    got = to_numpy(HarmonicMagnitudeReadout()(x))
    want = np.abs(complex_of(x)).sum(axis=3).mean(axis=(1, 2))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # invariant to per-order phase factors (what a rotation multiplies streams by)
    z = complex_of(x) * np.exp(1j * np.array([0.3, 1.7]))[:, None]
    x2 = np.stack([z.real, z.imag], axis=-2).astype("float32")
    np.testing.assert_allclose(to_numpy(HarmonicMagnitudeReadout()(x2)), got, rtol=1e-5)


def test_readout_bad_arguments():
    with pytest.raises(ValueError, match=re.escape("pool must be True or False, got 1")):
        HarmonicMagnitudeReadout(pool=1)
    with pytest.raises(ValueError, match=re.escape("use_bias must be True or False, got 'no'")):
        HarmonicMagnitudeReadout(use_bias="no")
