"""BlurPool2D and MaxBlurPool2D: shared checks, binomial kernel, NumPy reference, sizes, constants."""

import math

import numpy as np
import pytest
import tensorflow as tf

from layers.blurpool import BlurPool2D
from layers.max_blurpool import MaxBlurPool2D
from tests.layers.layer_checks import check_layer

NP_MODES = {"reflect": "reflect", "zero": "constant", "circular": "wrap"}


def reference_blurpool(x, size, stride, padding):
    """NumPy: pad (Zhang's split), full 2-D correlation with the binomial outer product, subsample."""
    f = np.array([math.comb(size - 1, i) for i in range(size)], dtype="float64")
    kernel = np.outer(f, f) / f.sum() ** 2
    before = (size - 1) // 2
    pads = ((0, 0), (before, size - 1 - before), (before, size - 1 - before), (0, 0))
    xp = np.pad(x.astype("float64"), pads, mode=NP_MODES[padding])
    h, w = x.shape[1:3]
    out = np.zeros((x.shape[0], h, w, x.shape[3]))
    for a in range(size):
        for b in range(size):
            out += kernel[a, b] * xp[:, a : a + h, b : b + w]
    return out[:, ::stride, ::stride]


def _adjoint_gradient(shape, size, stride, padding, weights):
    """d/dx of sum(reference_blurpool(x) * weights), one unit input at a time."""
    expected = np.zeros(shape)
    for i in range(shape[1]):
        for j in range(shape[2]):
            e = np.zeros(shape)
            e[0, i, j, 0] = 1.0
            expected[0, i, j, 0] = np.sum(reference_blurpool(e, size, stride, padding) * weights)
    return expected


@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
def test_shared_layer_checks(padding):
    check_layer(lambda: BlurPool2D(3, 2, padding), (2, 8, 7, 3), (2, 4, 4, 3), expects_trainable_weights=False)


def test_shared_layer_checks_max_blurpool():
    check_layer(lambda: MaxBlurPool2D(4, 2), (2, 8, 8, 3), (2, 4, 4, 3), expects_trainable_weights=False)
    check_layer(lambda: MaxBlurPool2D(3, 2, "circular"), (2, 8, 8, 3), (2, 4, 4, 3), expects_trainable_weights=False)


@pytest.mark.parametrize("size", range(1, 8))
def test_kernel_sums_to_one_and_is_the_binomial_outer_product(size):
    kernel = BlurPool2D(size).kernel
    row = np.array([math.comb(size - 1, i) for i in range(size)], dtype="float64")
    np.testing.assert_allclose(kernel.sum(), 1.0, rtol=1e-12)
    np.testing.assert_allclose(kernel, np.outer(row, row) / row.sum() ** 2, rtol=1e-12)


@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
@pytest.mark.parametrize("size,stride", [(1, 2), (2, 2), (3, 2), (4, 3), (5, 1), (7, 2)])
def test_matches_numpy_reference(size, stride, padding):
    x = np.random.default_rng(size).standard_normal((2, 9, 8, 3)).astype("float32")
    y = BlurPool2D(size, stride, padding)(x).numpy()
    np.testing.assert_allclose(y, reference_blurpool(x, size, stride, padding), atol=1e-5)


@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
def test_gradient_matches_the_adjoint_of_the_numpy_reference(padding):
    """The hand-written padding gradients: <dL/dx, e_i> equals the reference's response to a unit input."""
    size, stride, shape = 5, 2, (1, 7, 6, 1)
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    weights = rng.standard_normal((1, 4, 3, 1))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(BlurPool2D(size, stride, padding)(x) * weights.astype("float32"))
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), _adjoint_gradient(shape, size, stride, padding, weights),
                               atol=1e-5)


@pytest.mark.parametrize("height,width,stride", [(28, 28, 2), (7, 9, 2), (10, 11, 3), (5, 5, 1), (1, 6, 4)])
def test_output_size_is_ceil_of_size_over_stride(height, width, stride):
    padding = "reflect" if height > 1 else "circular"  # reflect needs at least 2 pixels
    layer = BlurPool2D(3, stride, padding)
    y = layer(np.zeros((1, height, width, 2), "float32"))
    assert y.shape == (1, math.ceil(height / stride), math.ceil(width / stride), 2)
    assert layer.compute_output_shape((None, height, width, 2)) == (None,) + tuple(y.shape[1:])


@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
@pytest.mark.parametrize("size", [2, 3, 5, 7])
def test_a_constant_image_stays_constant(size, padding):
    """Everywhere for reflect and circular padding; with zero padding away from the border it touches."""
    x = np.full((1, 12, 12, 2), 3.5, "float32")
    y = BlurPool2D(size, 2, padding)(x).numpy()
    if padding == "zero":
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        inner = slice(math.ceil(before / 2), (12 - after) // 2)
        y = y[:, inner, inner]
        assert y.size > 0
    np.testing.assert_allclose(y, 3.5, rtol=1e-6)


def test_circular_padding_commutes_with_rolls_by_multiples_of_the_stride():
    x = np.random.default_rng(3).standard_normal((2, 12, 8, 3)).astype("float32")
    layer = BlurPool2D(5, 2, "circular")
    np.testing.assert_allclose(
        layer(tf.roll(x, (4, -2), axis=(1, 2))).numpy(), tf.roll(layer(x), (2, -1), axis=(1, 2)).numpy(), atol=1e-6
    )


def test_max_blurpool_is_a_stride_one_max_then_blurpool():
    x = np.random.default_rng(4).standard_normal((2, 10, 10, 3)).astype("float32")
    dense_max = tf.nn.max_pool2d(x, 2, 1, "VALID").numpy()
    np.testing.assert_allclose(
        MaxBlurPool2D(3, 2)(x).numpy(), reference_blurpool(dense_max, 3, 2, "reflect"), atol=1e-5
    )
    wrapped = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="wrap")
    np.testing.assert_allclose(
        MaxBlurPool2D(3, 2, "circular")(x).numpy(),
        reference_blurpool(tf.nn.max_pool2d(wrapped, 2, 1, "VALID").numpy(), 3, 2, "circular"),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs", [{"filter_size": 0}, {"filter_size": 8}, {"strides": 0}, {"padding": "same"}, {"filter_size": 2.0}]
)
def test_invalid_arguments_raise_value_error_naming_the_value(kwargs):
    for cls in (BlurPool2D, MaxBlurPool2D):
        with pytest.raises(ValueError, match=repr(list(kwargs.values())[0]).replace(".", r"\.")):
            cls(**kwargs)


def test_border_corrections_match_numpy_reference_over_sizes_filters_strides():
    """The zero-padded SAME pass (aligned by zero taps) plus border corrections, on odd and even sizes."""
    rng = np.random.default_rng(7)
    for height, width in [(5, 6), (7, 8), (11, 12)]:
        x = rng.standard_normal((1, height, width, 2)).astype("float32")
        for size in range(2, 8):
            for stride in (1, 2, 3):
                for padding in ("reflect", "zero", "circular"):
                    y = BlurPool2D(size, stride, padding)(x).numpy()
                    np.testing.assert_allclose(
                        y, reference_blurpool(x, size, stride, padding), atol=1e-5,
                        err_msg=f"{height}x{width} size={size} stride={stride} padding={padding}",
                    )


@pytest.mark.parametrize("padding", ["reflect", "circular"])
@pytest.mark.parametrize("size,stride,shape", [(3, 2, (1, 8, 8, 1)), (3, 2, (1, 7, 9, 1)), (7, 2, (1, 8, 7, 1)), (4, 3, (1, 8, 10, 1))])
def test_gradient_of_border_corrections_is_their_adjoint(size, stride, padding, shape):
    rng = np.random.default_rng(size + stride)
    x = tf.constant(rng.standard_normal(shape).astype("float32"))
    out_shape = (1, math.ceil(shape[1] / stride), math.ceil(shape[2] / stride), 1)
    weights = rng.standard_normal(out_shape)
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(BlurPool2D(size, stride, padding)(x) * weights.astype("float32"))
    np.testing.assert_allclose(tape.gradient(loss, x).numpy(), _adjoint_gradient(shape, size, stride, padding, weights),
                               atol=1e-5)


@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
@pytest.mark.parametrize("signature", [(None, 8, 7, 2), (None, None, None, 2)])
def test_unknown_batch_or_spatial_sizes_give_the_same_values_and_gradients(signature, padding):
    """Unknown batch: scatter indices built in the graph; unknown H, W: the padded-copy fallback."""
    x = tf.constant(np.random.default_rng(5).standard_normal((3, 8, 7, 2)).astype("float32"))
    weights = tf.constant(np.random.default_rng(6).standard_normal((3, 4, 4, 2)).astype("float32"))
    layer = BlurPool2D(3, 2, padding)

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * weights)
        return y, tape.gradient(loss, x)

    traced = tf.function(value_and_grad, input_signature=[tf.TensorSpec(signature, tf.float32)])
    y, g = traced(x)
    y_ref, g_ref = value_and_grad(x)
    np.testing.assert_allclose(y.numpy(), reference_blurpool(x.numpy(), 3, 2, padding), atol=1e-5)
    np.testing.assert_allclose(g.numpy(), g_ref.numpy(), atol=1e-5)


def test_xla_compiled_values_and_gradients_match_eager():
    x = tf.constant(np.random.default_rng(8).standard_normal((2, 9, 8, 3)).astype("float32"))
    layer = BlurPool2D(5, 2, "reflect")

    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return y, tape.gradient(loss, x)

    y, g = tf.function(value_and_grad, jit_compile=True)(x)
    y_ref, g_ref = value_and_grad(x)
    np.testing.assert_allclose(y.numpy(), y_ref.numpy(), atol=1e-5)
    np.testing.assert_allclose(g.numpy(), g_ref.numpy(), atol=1e-4)


@pytest.mark.parametrize("cls", [BlurPool2D, MaxBlurPool2D])
@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
def test_mixed_precision_float16_inputs_give_float16_outputs_and_gradients(cls, padding):
    """Under mixed_float16 the 1-D passes (strided on one axis only) must still run on CPU."""
    x = np.random.default_rng(9).standard_normal((2, 8, 7, 3)).astype("float32")
    layer = cls(3, 2, padding, dtype="mixed_float16")
    xt = tf.constant(x, tf.float16)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        y = layer(xt)
        loss = tf.reduce_sum(tf.cast(y, tf.float32) ** 2)
    assert y.dtype == tf.float16
    np.testing.assert_allclose(y.numpy().astype("float32"), cls(3, 2, padding)(x).numpy(), atol=1e-2)
    assert np.all(np.isfinite(tape.gradient(loss, xt).numpy()))
