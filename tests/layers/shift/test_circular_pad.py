"""CircularPad2D: shared checks, NumPy `wrap` reference (values and gradient), circular convolution."""

import keras
import numpy as np
import pytest

from layers.shift.circular_pad import CircularPad2D
from tests.autodiff import input_gradient, to_numpy
from tests.layers.layer_checks import check_layer


def test_shared_layer_checks(ops_path):
    check_layer(lambda: CircularPad2D(((1, 2), (0, 3))), (2, 5, 4, 3), (2, 8, 7, 3), expects_trainable_weights=False)


@pytest.mark.parametrize(
    "padding,pairs",
    [(1, ((1, 1), (1, 1))), ((2, 0), ((2, 2), (0, 0))), (((0, 1), (3, 2)), ((0, 1), (3, 2))),
     (((6, 7), (1, 9)), ((6, 7), (1, 9))), (((9, 10), (3, 3)), ((9, 10), (3, 3)))],
)
def test_values_and_gradient_match_numpy_wrap(padding, pairs, ops_path):
    """Small pads take the concat path, pads near or above the size the gather path."""
    layer = CircularPad2D(padding)
    (t, b), (l, r) = pairs
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 8, 3)).astype("float32")
    expected = np.pad(x, ((0, 0), (t, b), (l, r), (0, 0)), mode="wrap")
    w = rng.standard_normal(expected.shape).astype("float32")
    np.testing.assert_array_equal(to_numpy(layer(x)), expected)
    # Adjoint of wrap padding: each padded position sends its weight back to its source pixel.
    rows = np.arange(-t, 9 + b) % 9
    cols = np.arange(-l, 8 + r) % 8
    grad = np.zeros_like(x)
    for i, src_i in enumerate(rows):
        for j, src_j in enumerate(cols):
            grad[:, src_i, src_j] += w[:, i, j]
    got = input_gradient(lambda t: keras.ops.sum(keras.ops.multiply(layer(t), w)), x)
    np.testing.assert_allclose(got, grad, rtol=1e-6, atol=1e-6)


def test_pad_then_valid_conv_commutes_with_roll(ops_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((9, 8, 2))
    conv = keras.layers.Conv2D(3, 4, padding="valid")
    model = keras.Model(inputs, conv(CircularPad2D(((1, 2), (1, 2)))(inputs)))
    x = np.random.default_rng(1).standard_normal((2, 9, 8, 2)).astype("float32")
    for shift in [(1, 0), (4, 7), (-3, 5)]:
        np.testing.assert_allclose(
            to_numpy(model(np.roll(x, shift, axis=(1, 2)))), np.roll(to_numpy(model(x)), shift, axis=(1, 2)),
            atol=1e-5,
        )


@pytest.mark.parametrize("padding", [-1, (1, 2, 3), ((1, 2), 3), 1.5, "same"])
def test_invalid_padding_raises_value_error_naming_it(padding):
    with pytest.raises(ValueError, match="padding must be") as e:
        CircularPad2D(padding)
    assert repr(padding) in str(e.value)  # the value received is echoed
