"""BasisConv2D (layers/common/conv.py): the dense kernel under one name, and its cache at eager inference.

The kept kernel must never be stale or cut a gradient: it is reused only at
eager inference with the coefficients unchanged, whatever changed them
(`set_weights`, an optimizer step, `assign`), and never inside a compiled
function or under a gradient recorder.
"""

import keras
import numpy as np
import pytest

from layers.group.group_conv import GroupConv2D
from layers.group.lifting_conv import LiftingConv2D
from layers.harmonic.harmonic_conv import HarmonicConv2D
from layers.scale.scale_conv import ScaleConv2D
from layers.scale.scale_harmonic_conv import ScaleHarmonicConv2D
from layers.scale.scale_lifting_conv import ScaleLiftingConv2D
from tests.autodiff import BACKEND, compiled, gradients, to_numpy

SMALL = dict(kernel_size=5, num_scales=2, scale_step=1.5, sigma=0.6, max_order=1)
CASES = [
    (lambda: LiftingConv2D(3, 3, group_order=4), (2, 7, 7, 2)),
    (lambda: GroupConv2D(3, 3, group="D4"), (2, 7, 7, 8, 2)),
    (lambda: HarmonicConv2D(3, 3), (2, 7, 7, 2, 2, 2)),
    (lambda: ScaleHarmonicConv2D(2, 3, dilations=(1, 2)), (2, 8, 8, 1)),
    (lambda: ScaleLiftingConv2D(3, **SMALL), (2, 7, 7, 2)),
    (lambda: ScaleConv2D(3, interscale=2, **SMALL), (2, 7, 7, 2, 2)),
]


def _no_grad():
    """PyTorch: autograd off, as Keras' predict runs it (with autograd on, the kernel is never kept)."""
    if BACKEND == "torch":
        import torch

        return torch.no_grad()
    import contextlib

    return contextlib.nullcontext()


def _fresh(layer, x):
    """The output with a kernel built now from the current weights (no cache)."""
    layer._kernel_cache.clear()
    with _no_grad():
        return to_numpy(layer(x))


@pytest.mark.parametrize("make,shape", CASES)
def test_eager_inference_keeps_the_kernel_until_the_weights_change(make, shape):
    layer = make()
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    with _no_grad():
        y1 = to_numpy(layer(x))
        kept = layer._kernel_cache.kernel
        assert kept is not None, "eager inference kept no kernel"
        y2 = to_numpy(layer(x))
        assert layer._kernel_cache.kernel is kept, "the kept kernel was rebuilt though no weight changed"
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_allclose(to_numpy(kept), to_numpy(layer.dense_kernel()), rtol=1e-6, atol=1e-7)

    # set_weights: the next call rebuilds
    layer.set_weights([w * 2.0 + 0.1 for w in layer.get_weights()])
    with _no_grad():
        y3 = to_numpy(layer(x))
    assert not np.allclose(y3, y1)
    np.testing.assert_allclose(y3, _fresh(layer, x), rtol=1e-5, atol=1e-6)

    # assign to one coefficient only
    w = layer.kernel_weights()[0]
    value = to_numpy(w).copy()
    value.flat[0] += 1.0
    with _no_grad():
        layer(x)
    w.assign(value)
    with _no_grad():
        y4 = to_numpy(layer(x))
    np.testing.assert_allclose(y4, _fresh(layer, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("make,shape", CASES[:3])
def test_an_optimizer_step_is_seen_by_the_next_inference(make, shape):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype("float32")
    inputs = keras.Input(shape[1:])
    model = keras.Model(inputs, make()(inputs))
    with _no_grad():
        before = to_numpy(model(x, training=False))  # keeps a kernel
    target = rng.standard_normal(before.shape).astype("float32")
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse", run_eagerly=True)
    model.fit(x, target, epochs=1, batch_size=2, verbose=0)
    with _no_grad():
        after = to_numpy(model(x, training=False))
    assert not np.allclose(after, before)
    layer = model.layers[-1]
    np.testing.assert_allclose(after, _fresh(layer, x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.predict(x, verbose=0), after, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("make,shape", CASES)
def test_gradients_reach_the_weights_at_inference_too(make, shape):
    """training=False under a gradient recorder (Keras' transfer-learning idiom): the kernel is rebuilt."""
    layer = make()
    x = np.random.default_rng(2).standard_normal(shape).astype("float32")
    with _no_grad():
        layer(x)  # keeps a kernel
    assert layer._kernel_cache.kernel is not None
    weights = layer.kernel_weights()
    # A fixed random projection of the output, not its square: a sum of squared harmonic outputs depends on
    # magnitudes only, which one input channel's phase offset does not change (its gradient is rounding noise).
    probe = keras.ops.convert_to_tensor(np.random.default_rng(5).standard_normal(_fresh(layer, x).shape), "float32")
    _, grads = gradients(lambda t: keras.ops.sum(layer(t, training=False) * probe), [x], weights)
    for w, g in zip(weights, grads):
        assert g is not None and np.any(g != 0), f"no gradient reaches {w.path} at training=False"


@pytest.mark.parametrize("make,shape", CASES[:3] + CASES[4:])
def test_a_compiled_call_follows_the_weights(make, shape):
    layer = make()
    x = np.random.default_rng(3).standard_normal(shape).astype("float32")
    with _no_grad():
        layer(x)
    if BACKEND == "tensorflow":  # the weights are inputs of the traced graph
        fn = compiled(lambda t: layer(t, training=False))
    elif BACKEND == "jax":  # Keras' stateless call, as predict runs it
        import jax

        @jax.jit
        def fn(t, values):
            with keras.StatelessScope(state_mapping=list(zip(layer.weights, values))):
                return layer(t, training=False)
    else:  # as Keras' jit_compile on PyTorch: torch.compile, graph breaks allowed
        import torch

        from tests.autodiff import TORCH_COMPILE_BACKEND

        torch._dynamo.reset()
        graph = torch.compile(lambda t: layer(t, training=False), backend=TORCH_COMPILE_BACKEND)

        def fn(t):
            with torch.no_grad():
                return graph(keras.ops.convert_to_tensor(t))

    def run():
        out = fn(x, [w.value for w in layer.weights]) if BACKEND == "jax" else fn(x)
        return to_numpy(out)

    np.testing.assert_allclose(run(), _fresh(layer, x), rtol=1e-5, atol=1e-5)
    layer.set_weights([w * -1.5 for w in layer.get_weights()])
    np.testing.assert_allclose(run(), _fresh(layer, x), rtol=1e-5, atol=1e-5)


def test_the_kernel_is_never_kept_while_training():
    layer = GroupConv2D(2, 3, group_order=4)
    x = np.random.default_rng(4).standard_normal((1, 5, 5, 4, 2)).astype("float32")
    with _no_grad():
        layer(x, training=True)
    assert layer._kernel_cache.kernel is None


def test_the_kernel_is_kept_per_compute_dtype():
    layer = LiftingConv2D(2, 3, group_order=4)
    x = np.random.default_rng(5).standard_normal((1, 5, 5, 2)).astype("float32")
    with _no_grad():
        layer(x)
    assert keras.backend.standardize_dtype(layer._kernel_cache.kernel.dtype) == "float32"
    layer.dtype_policy = keras.DTypePolicy("mixed_float16")
    with _no_grad():
        y = layer(x)
    assert keras.backend.standardize_dtype(y.dtype) == "float16"
    assert keras.backend.standardize_dtype(layer._kernel_cache.kernel.dtype) == "float16"


@pytest.mark.parametrize("make,shape", CASES)
def test_dense_kernel_is_the_one_name_of_the_kernel(make, shape):
    layer = make()
    layer.build(shape)
    assert callable(layer.dense_kernel)
    for old in ("stacked_kernel", "block_filter", "conv_kernel", "conv_kernels"):
        assert not hasattr(layer, old)
