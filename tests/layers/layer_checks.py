"""The one shared test helper for the project's layers.

`check_layer` runs the checks every layer owes (the house plan's "The tests'
rules": docs/design.md):

1. config round trip: `get_config` names every `__init__` argument, and
   `from_config(get_config())` rebuilds a layer with an equal config;
2. output shape: the output of a call has the expected shape (batch left
   unknown) and agrees with `compute_output_shape`;
3. save and reload: a functional model around the layer, saved as `.keras`
   and loaded back, gives the same outputs;
4. one training step: every trainable weight gets a finite, non-zero
   gradient and moves after one optimizer step; a layer without weights
   passes the gradient through to its input.

Each layer's own promise (NumPy reference, equivariance) is tested beside it.
Backend-agnostic: gradients come from `tests/autodiff.py`.
"""

from __future__ import annotations

import inspect
import os
import tempfile

import keras
import numpy as np

from tests.autodiff import gradients


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


def check_layer(
    layer_factory,
    input_shape: tuple,
    expected_output_shape: tuple | None = None,
    *,
    input_dtype: str = "float32",
    expects_trainable_weights: bool | None = None,
    seed: int = 0,
    atol: float = 1e-6,
):
    """Run the shared checks on the layer that `layer_factory()` returns.

    Args:
        layer_factory: zero-argument callable returning a fresh layer.
        input_shape: a concrete input shape including the batch dimension.
        expected_output_shape: the output shape for that input (batch included),
            or None to skip the comparison.
        expects_trainable_weights: if given, whether the built layer must have
            trainable weights.
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

    # 4. one training step.
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
