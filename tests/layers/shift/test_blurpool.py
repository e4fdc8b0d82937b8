"""BlurPool2D and MaxBlurPool2D: shared checks, binomial kernel, NumPy reference, sizes, constants.

The `ops_path` fixture (tests/layers/conftest.py) runs the reference tests on the
portable keras.ops path and, on TensorFlow, on the hand-written-gradient fast path too.
"""

import math

import keras
import numpy as np
import pytest

from layers.shift.blurpool import BlurPool2D
from layers.shift.max_blurpool import MaxBlurPool2D
from tests.autodiff import BACKEND, compiled, input_gradient, to_numpy, value_and_input_gradient
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


def reference_max2x2(x):
    """NumPy: max over 2x2 windows at stride 1, 'valid'."""
    return np.maximum(np.maximum(x[:, :-1, :-1], x[:, 1:, :-1]), np.maximum(x[:, :-1, 1:], x[:, 1:, 1:]))


def blur_input_gradient(layer, x, weights):
    """d/dx of sum(layer(x) * weights)."""
    w = weights.astype("float32")
    return input_gradient(lambda t: keras.ops.sum(keras.ops.multiply(layer(t), w)), x)


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
def test_shared_layer_checks(padding, ops_path):
    check_layer(lambda: BlurPool2D(3, 2, padding), (2, 8, 7, 3), (2, 4, 4, 3), expects_trainable_weights=False)


def test_shared_layer_checks_max_blurpool(ops_path):
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
def test_matches_numpy_reference(size, stride, padding, ops_path):
    x = np.random.default_rng(size).standard_normal((2, 9, 8, 3)).astype("float32")
    y = to_numpy(BlurPool2D(size, stride, padding)(x))
    np.testing.assert_allclose(y, reference_blurpool(x, size, stride, padding), atol=1e-5)


@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
def test_gradient_matches_the_adjoint_of_the_numpy_reference(padding, ops_path):
    """The padding gradients (hand-written or autodiff): <dL/dx, e_i> equals the reference's response to a unit input."""
    size, stride, shape = 5, 2, (1, 7, 6, 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype("float32")
    weights = rng.standard_normal((1, 4, 3, 1))
    grad = blur_input_gradient(BlurPool2D(size, stride, padding), x, weights)
    np.testing.assert_allclose(grad, _adjoint_gradient(shape, size, stride, padding, weights), atol=1e-5)


@pytest.mark.parametrize("height,width,stride", [(28, 28, 2), (7, 9, 2), (10, 11, 3), (5, 5, 1), (1, 6, 4)])
def test_output_size_is_ceil_of_size_over_stride(height, width, stride, ops_path):
    padding = "reflect" if height > 1 else "circular"  # reflect needs at least 2 pixels
    layer = BlurPool2D(3, stride, padding)
    y = layer(np.zeros((1, height, width, 2), "float32"))
    assert y.shape == (1, math.ceil(height / stride), math.ceil(width / stride), 2)
    assert layer.compute_output_shape((None, height, width, 2)) == (None,) + tuple(y.shape[1:])


@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
@pytest.mark.parametrize("size", [2, 3, 5, 7])
def test_a_constant_image_stays_constant(size, padding, ops_path):
    """Everywhere for reflect and circular padding; with zero padding away from the border it touches."""
    x = np.full((1, 12, 12, 2), 3.5, "float32")
    y = to_numpy(BlurPool2D(size, 2, padding)(x))
    if padding == "zero":
        before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
        inner = slice(math.ceil(before / 2), (12 - after) // 2)
        y = y[:, inner, inner]
        assert y.size > 0
    np.testing.assert_allclose(y, 3.5, rtol=1e-6)


def test_circular_padding_commutes_with_rolls_by_multiples_of_the_stride(ops_path):
    x = np.random.default_rng(3).standard_normal((2, 12, 8, 3)).astype("float32")
    layer = BlurPool2D(5, 2, "circular")
    np.testing.assert_allclose(
        to_numpy(layer(np.roll(x, (4, -2), axis=(1, 2)))), np.roll(to_numpy(layer(x)), (2, -1), axis=(1, 2)),
        atol=1e-6,
    )


def test_max_blurpool_is_a_stride_one_max_then_blurpool(ops_path):
    x = np.random.default_rng(4).standard_normal((2, 10, 10, 3)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(MaxBlurPool2D(3, 2)(x)), reference_blurpool(reference_max2x2(x), 3, 2, "reflect"), atol=1e-5
    )
    wrapped = np.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)), mode="wrap")
    np.testing.assert_allclose(
        to_numpy(MaxBlurPool2D(3, 2, "circular")(x)),
        reference_blurpool(reference_max2x2(wrapped), 3, 2, "circular"),
        atol=1e-5,
    )


@pytest.mark.parametrize(
    "kwargs", [{"blur_size": 0}, {"blur_size": 8}, {"strides": 0}, {"padding": "same"}, {"blur_size": 2.0}]
)
def test_invalid_arguments_raise_value_error_naming_the_value(kwargs):
    for cls in (BlurPool2D, MaxBlurPool2D):
        with pytest.raises(ValueError, match=repr(list(kwargs.values())[0]).replace(".", r"\.")):
            cls(**kwargs)


def test_border_corrections_match_numpy_reference_over_sizes_filters_strides(ops_path):
    """Fast path: the zero-padded SAME pass (aligned by zero taps) plus border corrections; portable: padded
    copies. On odd and even sizes."""
    rng = np.random.default_rng(7)
    for height, width in [(5, 6), (7, 8), (11, 12)]:
        x = rng.standard_normal((1, height, width, 2)).astype("float32")
        for size in range(2, 8):
            for stride in (1, 2, 3):
                for padding in ("reflect", "zero", "circular"):
                    y = to_numpy(BlurPool2D(size, stride, padding)(x))
                    np.testing.assert_allclose(
                        y, reference_blurpool(x, size, stride, padding), atol=1e-5,
                        err_msg=f"{height}x{width} size={size} stride={stride} padding={padding}",
                    )


@pytest.mark.parametrize("padding", ["reflect", "circular"])
@pytest.mark.parametrize("size,stride,shape", [(3, 2, (1, 8, 8, 1)), (3, 2, (1, 7, 9, 1)), (7, 2, (1, 8, 7, 1)), (4, 3, (1, 8, 10, 1))])
def test_gradient_of_border_corrections_is_their_adjoint(size, stride, padding, shape, ops_path):
    rng = np.random.default_rng(size + stride)
    x = rng.standard_normal(shape).astype("float32")
    out_shape = (1, math.ceil(shape[1] / stride), math.ceil(shape[2] / stride), 1)
    weights = rng.standard_normal(out_shape)
    grad = blur_input_gradient(BlurPool2D(size, stride, padding), x, weights)
    np.testing.assert_allclose(grad, _adjoint_gradient(shape, size, stride, padding, weights), atol=1e-5)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="unknown sizes in a traced signature: a tf.function feature")
@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
@pytest.mark.parametrize("signature", [(None, 8, 7, 2), (None, None, None, 2)])
def test_unknown_batch_or_spatial_sizes_give_the_same_values_and_gradients(signature, padding, ops_path):
    """Unknown batch: scatter indices built in the graph; unknown H, W: the padded-copy (gathering) path."""
    import tensorflow as tf

    x = np.random.default_rng(5).standard_normal((3, 8, 7, 2)).astype("float32")
    weights = np.random.default_rng(6).standard_normal((3, 4, 4, 2)).astype("float32")
    layer = BlurPool2D(3, 2, padding)
    loss = lambda x: keras.ops.sum(layer(x) * weights)
    spec = [tf.TensorSpec(signature, tf.float32)]
    y = tf.function(layer, input_signature=spec)(x)
    _, g = tf.function(value_and_input_gradient(loss), input_signature=spec)(x)
    np.testing.assert_allclose(y.numpy(), reference_blurpool(x, 3, 2, padding), atol=1e-5)
    np.testing.assert_allclose(g.numpy(), input_gradient(loss, x), atol=1e-5)


def test_compiled_values_and_gradients_match_eager(ops_path):
    """XLA on TensorFlow (tf.function(jit_compile=True)), jax.jit on JAX."""
    x = np.random.default_rng(8).standard_normal((2, 9, 8, 3)).astype("float32")
    layer = BlurPool2D(5, 2, "reflect")
    loss = lambda x: keras.ops.sum(keras.ops.square(layer(x)))
    value, grad = compiled(value_and_input_gradient(loss))(keras.ops.convert_to_tensor(x))
    np.testing.assert_allclose(float(value), float(loss(x)), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(grad), input_gradient(loss, x), atol=1e-4)


@pytest.mark.parametrize("cls", [BlurPool2D, MaxBlurPool2D])
@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
def test_mixed_precision_float16_inputs_give_float16_outputs_and_gradients(cls, padding, ops_path):
    """Under mixed_float16 the 1-D passes (strided on one axis only) must still run on CPU."""
    x = np.random.default_rng(9).standard_normal((2, 8, 7, 3)).astype("float32")
    layer = cls(3, 2, padding, dtype="mixed_float16")
    xh = x.astype("float16")
    y = layer(xh)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    np.testing.assert_allclose(to_numpy(y).astype("float32"), to_numpy(cls(3, 2, padding)(x)), atol=1e-2)
    grad = input_gradient(lambda t: keras.ops.sum(keras.ops.square(keras.ops.cast(layer(t), "float32"))), xh)
    assert np.all(np.isfinite(grad))


def test_reflect_padding_refuses_a_known_size_too_small_when_the_model_is_built():
    """It built, and refused at the first call."""
    with pytest.raises(ValueError, match="reflect padding of 3 needs a size of at least 4 along axis 1, got 3"):
        BlurPool2D(7)(keras.Input((3, 3, 2)))
    assert BlurPool2D(7)(keras.Input((4, 4, 2))).shape == (None, 2, 2, 2)
    assert BlurPool2D(7, padding="zero")(keras.Input((3, 3, 2))).shape == (None, 2, 2, 2)
    assert BlurPool2D(7)(keras.Input((None, None, 2))).shape == (None, None, None, 2)  # checked at its call


def test_configs_saved_with_the_old_filter_size_name_still_load():
    from layers.shift.polyphase import AdaptivePolyphaseSampling2D

    for cls in (BlurPool2D, MaxBlurPool2D, AdaptivePolyphaseSampling2D):
        layer = cls.from_config({"filter_size": 5, "padding": "circular", "name": "old"})
        assert layer.blur_size == 5 and "filter_size" not in layer.get_config()


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's kernel sets")
def test_the_kernel_probes_write_nothing_to_stderr_where_the_kernels_refuse_and_stderr_works_after():
    """With oneDNN off the probed ops refuse; TensorFlow's C++ warning about it must not reach a user's script."""
    import os
    import subprocess
    import sys

    code = ("import os; from layers.common import _tf_fast; "
            "print(_tf_fast.unequal_depthwise_strides(), _tf_fast.grouped_conv_gradients()); "
            "os.write(2, b'fd 2 still writes')")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "0", "CUDA_VISIBLE_DEVICES": "",
           "KERAS_BACKEND": "tensorflow", "PYTHONPATH": root}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]  # the kernels refused: the probes ran
    assert "rendezvous" not in done.stderr and "equal length strides" not in done.stderr, done.stderr
    assert done.stderr.endswith("fd 2 still writes")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="TensorFlow's kernel sets")
@pytest.mark.parametrize("padding", ["reflect", "zero", "circular"])
def test_unequal_stride_probe_matches_the_kernel_set_and_the_folded_path_agrees(padding, monkeypatch):
    """The direct (s, 1)-stride blur pass runs only where a probe finds unequal depthwise strides (oneDNN on a
    CPU-only machine); the folded, equal-stride pass gives the same values and gradients."""
    import tensorflow as tf
    from tensorflow.python.util import _pywrap_util_port

    from layers.common import _tf_fast

    if not tf.config.list_physical_devices("GPU"):
        assert _tf_fast.unequal_depthwise_strides() == _pywrap_util_port.IsMklEnabled()
    x = tf.constant(np.random.default_rng(5).normal(size=(2, 11, 10, 3)).astype("float32"))
    layer = BlurPool2D(5, strides=2, padding=padding)

    def values_and_grad():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        return y.numpy(), tape.gradient(loss, x).numpy()

    probed = values_and_grad()
    monkeypatch.setitem(_tf_fast._PROBED, "unequal", False)
    for a, b in zip(probed, values_and_grad()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
