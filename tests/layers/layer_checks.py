"""The one shared test helper for the project's layers.

`check_layer` runs the checks every layer owes (the house plan's "The tests'
rules": docs/design.md):

1. config round trip: `get_config` names every `__init__` argument, and
   `from_config(get_config())` rebuilds a layer with an equal config;
2. output shape: the output of a call has the expected shape (batch left
   unknown) and agrees with `compute_output_shape`;
3. save and reload: a functional model around the layer, saved as `.keras`
   and loaded back, gives the same outputs;
4. compiled: that model called inside a jit-compiled function
   (`tests/autodiff.py` `compiled`: `tf.function(jit_compile=True)` on
   TensorFlow, `jax.jit`) gives the eager outputs. On PyTorch only with
   LAYER_CHECKS_TORCH_COMPILE=1 (`torch.compile`, graph breaks allowed, as
   Keras' `jit_compile=True` runs it), see TORCH_COMPILE;
5. mixed precision: the layer made under the `mixed_float16` policy, with
   the float32 layer's weights, returns float16 (or the dtype the layer
   documents), finite and close to the float32 output (a tolerance relative
   to its largest value); the global policy is restored after;
6. one training step: every trainable weight gets a finite, non-zero
   gradient and moves after one optimizer step; a layer without weights
   passes the gradient through to its input.

A layer that cannot run pass 4 or 5 somewhere (a kernel a backend lacks)
says so at its call site: `skip_compiled` / `skip_mixed_precision` take the
reason, for every backend (a string) or per backend (a dict); never a
silent skip.

Each layer's own promise (NumPy reference, equivariance) is tested beside it.
Backend-agnostic: gradients come from `tests/autodiff.py`.
"""

from __future__ import annotations

import inspect
import os
import tempfile

import keras
import numpy as np

from tests.autodiff import BACKEND, TORCH_COMPILE_BACKEND, compiled, gradients


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def check_config_round_trip(layer: keras.layers.Layer) -> None:
    config = layer.get_config()
    params = inspect.signature(type(layer).__init__).parameters
    missing = [
        name
        for name, p in params.items()
        if name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and name not in config
    ]
    assert not missing, f"{type(layer).__name__}.get_config() misses arguments {missing}"
    clone = type(layer).from_config(config)
    assert clone.get_config() == config, "from_config(get_config()) changed the config"


# Keras' jit_compile="auto", and its own run_layer_test, compile on TensorFlow and JAX and leave PyTorch
# eager. Every layer here passes the compiled check under torch.compile too (every check_layer call of
# tests/layers, run with it on), with graph breaks that Keras' torch backend itself needs (its convert_to_tensor of
# NumPy constants, ops.max with keepdims), but Dynamo's tracing of Keras' call path costs about 8 s a layer
# on 2 CPU cores (4 minutes a PyTorch pass), so it runs when asked. tests/layers/common/test_basis_conv.py
# compiles the basis convolutions on PyTorch in every pass.
TORCH_COMPILE = os.environ.get("LAYER_CHECKS_TORCH_COMPILE") == "1"


def _skip_reason(skip, what: str) -> str | None:
    """The reason to skip a pass on this backend, from a string (every backend) or a dict (per backend)."""
    reason = skip.get(BACKEND) if isinstance(skip, dict) else skip
    if reason is not None and not (isinstance(reason, str) and reason.strip()):
        raise ValueError(f"{what} needs a reason (a non-empty string), got {reason!r}")
    return reason


def check_compiled(model, x, eager, *, atol: float) -> None:
    """The model inside a jit-compiled function gives its eager outputs (float rounding aside)."""
    def run(t):
        return model(t, training=False)

    if BACKEND == "torch":
        import torch

        # As Keras' `jit_compile` on PyTorch (`torch.compile(predict_step)`): graph breaks allowed, which
        # Keras' torch backend itself needs (its convert_to_tensor of NumPy constants, ops.max with keepdims).
        torch._dynamo.reset()  # each check compiles `run` anew: past 8 recompilations Dynamo would run it eagerly
        fn = torch.compile(run, backend=TORCH_COMPILE_BACKEND)
    else:
        fn = compiled(run)
    out = keras.ops.convert_to_numpy(fn(keras.ops.convert_to_tensor(x)))
    np.testing.assert_allclose(out, eager, atol=max(atol, 1e-5), rtol=1e-4, err_msg="compiled != eager")


def check_mixed_precision(layer_factory, layer, x, y32, *, dtype: str, tolerance: float) -> None:
    """The layer under `mixed_float16`, with `layer`'s weights: output of `dtype`, finite, close to `y32`."""
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        half = layer_factory()
        half(x)  # builds it
        half.set_weights(layer.get_weights())
        y = half(x)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert keras.backend.standardize_dtype(y.dtype) == dtype, (
        f"{type(half).__name__} under mixed_float16 returned {y.dtype}, expected {dtype}")
    y = keras.ops.convert_to_numpy(y).astype("float32")
    assert np.all(np.isfinite(y)), "non-finite output under mixed_float16"
    scale = max(float(np.max(np.abs(y32))), 1e-3)
    np.testing.assert_allclose(y, y32, atol=tolerance * scale, rtol=0,
                               err_msg=f"mixed_float16 output off by more than {tolerance} of max |y| = {scale:g}")


def check_layer(
    layer_factory,
    input_shape: tuple,
    expected_output_shape: tuple | None = None,
    *,
    input_dtype: str = "float32",
    expects_trainable_weights: bool | None = None,
    seed: int = 0,
    atol: float = 1e-6,
    mixed_precision_dtype: str = "float16",
    mixed_precision_tolerance: float = 1e-2,
    skip_compiled: str | dict | None = None,
    skip_mixed_precision: str | dict | None = None,
):
    """Run the shared checks on the layer that `layer_factory()` returns.

    Args:
        layer_factory: zero-argument callable returning a fresh layer.
        input_shape: a concrete input shape including the batch dimension.
        expected_output_shape: the output shape for that input (batch included),
            or None to skip the comparison.
        expects_trainable_weights: if given, whether the built layer must have
            trainable weights.
        mixed_precision_dtype: the output dtype under `mixed_float16`.
        mixed_precision_tolerance: the largest difference to the float32 output
            under `mixed_float16`, relative to its largest absolute value.
        skip_compiled, skip_mixed_precision: the reason why the layer skips
            that pass (a string: on every backend; a dict: backend -> reason).
    Returns:
        The layer's output on the random input (NumPy), for further checks.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(input_shape).astype(input_dtype)

    # 1. config round trip, before and after build.
    layer = layer_factory()
    check_config_round_trip(layer)

    # 2. output shape.
    y = layer(x)
    y_np = keras.ops.convert_to_numpy(y)
    if expected_output_shape is not None:
        assert tuple(y_np.shape) == tuple(expected_output_shape), (y_np.shape, expected_output_shape)
    symbolic = layer.compute_output_shape((None,) + tuple(input_shape[1:]))
    assert tuple(symbolic[1:]) == tuple(y_np.shape[1:]), (symbolic, y_np.shape)
    assert np.all(np.isfinite(y_np)), "layer produced non-finite values"
    check_config_round_trip(layer)
    if expects_trainable_weights is not None:
        assert bool(layer.trainable_weights) == expects_trainable_weights, layer.trainable_weights

    # 3. save and reload inside a functional model.
    inputs = keras.Input(shape=input_shape[1:], dtype=input_dtype)
    model = keras.Model(inputs, layer_factory()(inputs))
    before = keras.ops.convert_to_numpy(model(x, training=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        model.save(path)
        reloaded = keras.saving.load_model(path)
    after = keras.ops.convert_to_numpy(reloaded(x, training=False))
    np.testing.assert_allclose(after, before, atol=atol, rtol=1e-5)

    # 4. compiled.
    if _skip_reason(skip_compiled, "skip_compiled") is None and (BACKEND != "torch" or TORCH_COMPILE):
        check_compiled(model, x, before, atol=atol)

    # 5. mixed precision.
    if _skip_reason(skip_mixed_precision, "skip_mixed_precision") is None:
        check_mixed_precision(layer_factory, layer, x, y_np, dtype=mixed_precision_dtype,
                              tolerance=mixed_precision_tolerance)

    # 6. one training step.
    target = rng.standard_normal(before.shape).astype("float32")

    def loss_fn(x_t):
        out = keras.ops.cast(model(x_t, training=True), "float32")
        return keras.ops.mean(keras.ops.square(keras.ops.subtract(out, target)))

    weights = model.trainable_weights
    (grad_x,), grads = gradients(loss_fn, [x], weights)
    for w, g in zip(weights, grads):
        assert g is not None, f"no gradient reaches {w.path}"
        assert np.all(np.isfinite(g)), f"non-finite gradient for {w.path}"
        assert np.any(g != 0), f"zero gradient for {w.path}"
    assert grad_x is not None and np.any(grad_x != 0), "no gradient reaches the input"
    if weights:
        old = [keras.ops.convert_to_numpy(w) for w in weights]
        # Backend tensors: the torch optimizers' foreach updates refuse NumPy gradients.
        keras.optimizers.SGD(learning_rate=0.1).apply_gradients(zip(map(keras.ops.convert_to_tensor, grads), weights))
        moved = [not np.allclose(o, keras.ops.convert_to_numpy(w)) for o, w in zip(old, weights)]
        assert all(moved), [w.path for w, m in zip(weights, moved) if not m]
    return y_np
