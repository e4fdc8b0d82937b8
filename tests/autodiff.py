"""Gradients and compiled functions for tests, on whichever Keras backend runs them.

The layer and model tests run under TensorFlow and again under JAX
(`make test`); they differentiate through this module only: `tf.GradientTape`
on TensorFlow, `jax.grad` over a `keras.StatelessScope` on JAX.
"""

from __future__ import annotations

import keras
import numpy as np

BACKEND = keras.backend.backend()


def _to_numpy(g):
    return None if g is None else np.asarray(keras.ops.convert_to_numpy(g))


def gradients(fn, inputs, variables=()):
    """Gradients of the scalar `fn(*inputs)` with respect to each input and each Keras variable.

    Args:
        fn: maps backend tensors (one per entry of `inputs`) to a scalar loss.
        inputs: arrays (NumPy or backend tensors).
        variables: Keras variables read inside `fn` (a model's `trainable_weights`).
    Returns:
        (input gradients, variable gradients): two lists of NumPy arrays, None
        where TensorFlow finds no path (JAX gives zeros there).
    """
    variables = list(variables)
    if BACKEND == "tensorflow":
        import tensorflow as tf

        xs = [tf.convert_to_tensor(x) for x in inputs]
        with tf.GradientTape() as tape:
            for x in xs:
                tape.watch(x)
            loss = fn(*xs)
        grads = tape.gradient(loss, xs + variables)
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        def pure(xs, values):
            with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                return fn(*xs)

        gx, gv = jax.grad(pure, argnums=(0, 1))([jnp.asarray(x) for x in inputs], [v.value for v in variables])
        grads = list(gx) + list(gv)
    else:
        raise NotImplementedError(f"tests/autodiff.py does not know the {BACKEND!r} backend")
    grads = [_to_numpy(g) for g in grads]
    return grads[: len(inputs)], grads[len(inputs):]


def input_gradient(fn, x):
    """d fn(x) / dx for a scalar `fn` of one array, as NumPy."""
    return gradients(fn, [x])[0][0]


def compiled(fn):
    """`fn` compiled the backend's way: `tf.function(jit_compile=True)` (XLA) or `jax.jit`."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    raise NotImplementedError(f"tests/autodiff.py does not know the {BACKEND!r} backend")


def value_and_input_gradient(fn):
    """A function x -> (fn(x), d fn(x)/dx) built from backend autodiff, suitable for `compiled` (scalar fn)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        def vg(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = fn(x)
            return loss, tape.gradient(loss, x)

        return vg
    if BACKEND == "jax":
        import jax

        return jax.value_and_grad(fn)
    raise NotImplementedError(f"tests/autodiff.py does not know the {BACKEND!r} backend")
