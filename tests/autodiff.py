"""Gradients and compiled functions for tests, on whichever Keras backend runs them.

The layer and model tests run under TensorFlow and again under JAX
(`make test`), and the layer tests under PyTorch too; they differentiate
through this module only: `tf.GradientTape` on TensorFlow, `jax.grad` over a
`keras.StatelessScope` on JAX (under `jax.jit`: one XLA compilation per call,
where differentiating eagerly compiled each primitive on its own; the suite's
JAX pass took 6:23 instead of 8:05 in one pair of runs on 2 cores),
`torch.autograd.grad` over fresh leaf inputs and the Keras variables' torch
tensors (`v.value`) on PyTorch. Where no path leads from the loss to a
tensor, TensorFlow and PyTorch give None, JAX zeros. Tests turn backend
values into NumPy with `to_numpy` (never `np.asarray`, which fails on a
torch tensor that requires grad).
"""

from __future__ import annotations

import keras
import numpy as np

BACKEND = keras.backend.backend()


def to_numpy(x, dtype=None):
    """A backend tensor, Keras variable or array as a NumPy array (of `dtype` if given).

    For test code: `np.asarray` on a torch tensor that requires grad (a layer's output
    once a trainable weight is involved) raises; `keras.ops.convert_to_numpy` detaches.
    """
    y = np.asarray(keras.ops.convert_to_numpy(x))
    return y if dtype is None else y.astype(dtype)


def _to_numpy(g):
    return None if g is None else to_numpy(g)


def _torch_leaf(x):
    """A fresh leaf torch tensor (on Keras' device) that autograd differentiates against."""
    t = keras.ops.convert_to_tensor(x).detach().clone()
    return t.requires_grad_(True) if t.is_floating_point() else t


def gradients(fn, inputs, variables=()):
    """Gradients of the scalar `fn(*inputs)` with respect to each input and each Keras variable.

    Args:
        fn: maps backend tensors (one per entry of `inputs`) to a scalar loss.
        inputs: arrays (NumPy or backend tensors).
        variables: Keras variables read inside `fn` (a model's `trainable_weights`).
    Returns:
        (input gradients, variable gradients): two lists of NumPy arrays, None
        where TensorFlow or PyTorch finds no path (JAX gives zeros there), and
        on PyTorch for a variable that does not require grad (non-trainable).
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

        grad = jax.jit(jax.grad(pure, argnums=(0, 1)))
        gx, gv = grad([jnp.asarray(x) for x in inputs], [v.value for v in variables])
        grads = list(gx) + list(gv)
    elif BACKEND == "torch":
        import torch

        xs = [_torch_leaf(x) for x in inputs]
        with torch.enable_grad():
            loss = fn(*xs)
        # Only tensors that require grad can be differentiated against; a non-trainable
        # variable (requires_grad=False) gets None, as TensorFlow's tape gives for it.
        targets = xs + [v.value for v in variables]
        wanted = [i for i, t in enumerate(targets) if t.requires_grad]
        found = torch.autograd.grad(loss, [targets[i] for i in wanted], allow_unused=True)
        grads = [None] * len(targets)
        for i, g in zip(wanted, found):
            grads[i] = g
    else:
        raise NotImplementedError(f"tests/autodiff.py does not know the {BACKEND!r} backend")
    grads = [_to_numpy(g) for g in grads]
    return grads[: len(inputs)], grads[len(inputs):]


def input_gradient(fn, x):
    """d fn(x) / dx for a scalar `fn` of one array, as NumPy."""
    return gradients(fn, [x])[0][0]


# torch.compile's backend for `compiled`. Measured on 2 CPU cores (BlurPool2D's value and
# input gradient, tests/layers/shift/test_blurpool.py): eager 4 ms; "aot_eager" 1.7 s to capture;
# "inductor" 21 s to compile from a cold cache (C++ code generation, which also needs a
# compiler where the tests run), 3.5 s from a warm one; all three give identical values.
TORCH_COMPILE_BACKEND = "aot_eager"


def compiled(fn):
    """`fn` compiled the backend's way: `tf.function(jit_compile=True)` (XLA), `jax.jit`, or `torch.compile`.

    On PyTorch: `torch.compile(fn, fullgraph=True)` with Dynamo tracing `torch.autograd.grad`
    (`trace_autograd_ops`), so that `fn` (from `value_and_input_gradient`) must be captured
    whole, forward and backward, as one graph: a graph break is an error, as an untraceable
    op is under XLA or `jax.jit`. The captured graph runs on the "aot_eager" backend (Dynamo
    and AOTAutograd, then the same ATen kernels as eager) rather than "inductor": inductor's
    C++ code generation takes about 21 s per function from a cold cache on 2 CPU cores, for
    a function that runs in milliseconds (see TORCH_COMPILE_BACKEND).
    """
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    if BACKEND == "torch":
        import torch

        graph = torch.compile(fn, backend=TORCH_COMPILE_BACKEND, fullgraph=True)

        def run(*args, **kwargs):
            # Dynamo traces at the call, so the option must hold then.
            with torch._dynamo.config.patch(trace_autograd_ops=True):
                return graph(*args, **kwargs)

        return run
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
    if BACKEND == "torch":
        import torch

        def vg(x):
            with torch.enable_grad():
                x = x.detach().requires_grad_(True)
                loss = fn(x)
                (grad,) = torch.autograd.grad(loss, [x])
            return loss.detach(), grad

        return vg
    raise NotImplementedError(f"tests/autodiff.py does not know the {BACKEND!r} backend")
