"""Private helpers shared by the shift-invariance layers: binomial filters, padding, blur passes.

Not part of the public API. Written in `keras.ops`, so the layers run on
every Keras backend. Keras pads with zeros (and `ops.pad` also reflects and
wraps, with slow gradients on TensorFlow); this module pads along one axis
by concatenating slices, and blurs with two 1-D depthwise passes.

On the TensorFlow backend a faster path with hand-written gradients is taken
where the shapes are static (`layers/common/_tf_fast.py`, imported only then): on
TensorFlow's CPU kernels the portable path's slices and their gradients cost
BlurPool2D 13-27x a DepthwiseConv2D, the fast path 0.6-1.2x
(bench/bench_backends.py, which prints both paths' ratios). On JAX the portable
path is the fast one (0.1x a DepthwiseConv2D: XLA's CPU depthwise convolution
is slow). `tf_fast_path(False)` turns the fast path off (the tests run both
paths against the same NumPy references).
"""

from __future__ import annotations

import contextlib

import keras
import numpy as np
from keras import ops

from layers.common._geometry import (  # noqa: F401  (re-exported: the layers import them from here)
    PAD_MODES,
    binomial_filter,
    border_correction,
    centered_pads,
    same_alignment,
    take,
)


# Half-precision inputs (mixed precision) are computed in float32: TensorFlow's CPU
# depthwise kernels take float16 only at equal row and column strides (a 1-D pass
# strides one axis), and its CPU grouped convolutions have no float16 gradient.
HALF_DTYPES = ("float16", "bfloat16")

_FAST = {"enabled": True}


@contextlib.contextmanager
def tf_fast_path(enabled: bool):
    """Within the block, take (True) or skip (False) the TensorFlow fast path; restored after."""
    previous = _FAST["enabled"]
    _FAST["enabled"] = bool(enabled)
    try:
        yield
    finally:
        _FAST["enabled"] = previous


def tf_fast():
    """The `layers.common._tf_fast` module when it applies (TensorFlow backend, not turned off), else None."""
    if _FAST["enabled"] and keras.backend.backend() == "tensorflow":
        from layers.common import _tf_fast  # lazy: no TensorFlow import on other backends

        return _tf_fast
    return None


def is_half(x) -> bool:
    return keras.backend.standardize_dtype(x.dtype) in HALF_DTYPES


def _check_reflect(n, before, after, axis):
    if n is not None and max(before, after) > n - 1:
        raise ValueError(f"reflect padding of {max(before, after)} needs a size of at least "
                         f"{max(before, after) + 1} along axis {axis}, got {n}")


def _gather_pad(x, axis, before, after, mode):
    """Padding by index gathering: any size, static or unknown (on TensorFlow: None in a traced signature)."""
    n = x.shape[axis]
    if n is not None:
        idx = np.arange(-before, n + after)
        if mode == "circular":
            idx = idx % n
        else:
            period = 2 * (n - 1)
            idx = idx % period
            idx = np.where(idx >= n, period - idx, idx)
        return ops.take(x, ops.convert_to_tensor(idx.astype("int32")), axis=axis)
    n = ops.shape(x)[axis]
    idx = ops.arange(-before, n + after, dtype="int32")
    if mode == "circular":
        idx = ops.mod(idx, n)
    else:  # reflect: ... 2 1 | 0 1 ... n-1 | n-2 n-3 ...
        period = 2 * (n - 1)
        idx = ops.mod(idx, period)
        idx = ops.where(idx >= n, period - idx, idx)
    return ops.take(x, idx, axis=axis)


def _concrete_jax_array(x) -> bool:
    """True for an eager (not traced) JAX array."""
    if keras.backend.backend() != "jax":
        return False
    import jax  # the backend in use

    return not isinstance(x, jax.core.Tracer)


def _pad_concat(x, axis, before, after, mode):
    """Circular or reflect padding of a static extent >= before + after + 2 as concatenated slices."""
    n = x.shape[axis]
    if mode == "circular":
        parts = [take(x, axis, n - before, n)] if before else []
        parts += [x] + ([take(x, axis, 0, after)] if after else [])
    else:  # reflect: rows before..1 above, n-2..n-1-after below
        parts = [ops.flip(take(x, axis, 1, before + 1), axis)] if before else []
        parts += [x] + ([ops.flip(take(x, axis, n - 1 - after, n - 1), axis)] if after else [])
    return ops.concatenate(parts, axis=axis)


def _pad_axis_portable(x, axis, before, after, mode):
    """`pad_axis` in keras.ops: concatenated slices with a hand-written gradient (see `pad_axis`)."""
    if mode == "zero":
        pads = [(0, 0)] * len(x.shape)
        pads[axis] = (before, after)
        return ops.pad(x, pads)
    n = x.shape[axis]
    if n is None or n < before + after + 2:
        return _gather_pad(x, axis, before, after, mode)
    if _concrete_jax_array(x):
        # Eager JAX computes no gradient (jax.grad traces), and a custom gradient is compiled anew per eager call.
        return _pad_concat(x, axis, before, after, mode)

    @ops.custom_gradient
    def padded(x):
        def grad(*args, upstream=None):
            g = args[0] if upstream is None else upstream
            center, head = take(g, axis, before, before + n), take(g, axis, 0, before)
            tail = take(g, axis, before + n, before + n + after)
            if mode == "circular":  # head came from the last rows, tail from the first
                parts = [take(center, axis, 0, after) + tail, take(center, axis, after, n - before),
                         take(center, axis, n - before, n) + head]
            else:  # head row i (from the edge) came from row i, tail row j from row n-1-j
                parts = [take(center, axis, 0, 1), take(center, axis, 1, before + 1) + ops.flip(head, axis),
                         take(center, axis, before + 1, n - 1 - after),
                         take(center, axis, n - 1 - after, n - 1) + ops.flip(tail, axis), take(center, axis, n - 1, n)]
            return ops.concatenate([p for p in parts if p.shape[axis] != 0], axis=axis)

        return _pad_concat(x, axis, before, after, mode), grad

    return padded(x)


def pad_axis(x, axis: int, before: int, after: int, mode: str):
    """Pad `x` along `axis` by (before, after) in `mode` (reflect, zero or circular).

    Portable: concatenated slices with a hand-written gradient
    (`keras.ops.custom_gradient`: the adjoint as slices and adds), gathering
    indices for unknown sizes or pads near the size. bench/bench_backends.py
    times it against the backend's own gradient of the same slices: on JAX
    (CPU, two runs on a busy machine) BlurPool2D with the backend's gradient
    was 23-39% slower at k = 3 and 1-70% slower at k = 5 (e.g. 0.059 vs 0.082
    of a DepthwiseConv2D at k = 3, reflect), beyond the 20% that would have
    kept the plain ops. On TensorFlow the `_tf_fast` version runs.
    """
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {PAD_MODES}, got {mode!r}")
    if before == 0 and after == 0:
        return x
    if mode == "reflect":
        _check_reflect(x.shape[axis], before, after, axis)
    fast = tf_fast()
    if fast is not None:
        return fast.pad_axis(x, axis, before, after, mode)
    return _pad_axis_portable(x, axis, before, after, mode)


def pad2d(x, rows: tuple[int, int], cols: tuple[int, int], mode: str):
    """Pad the spatial axes of a channels-last [N, H, W, C] tensor."""
    return pad_axis(pad_axis(x, 1, rows[0], rows[1], mode), 2, cols[0], cols[1], mode)


def depthwise_1d(x, taps, axis: int, stride: int = 1):
    """A VALID 1-D depthwise pass along `axis`: out[i] = sum_a taps[a] * x[i * stride + a], as k shifted, strided slices.

    `taps` is a NumPy vector (one filter for every channel) or a tensor [k, C]
    (one per channel); `x`'s extent along `axis` must be static. Plain
    differentiable ops that XLA fuses into one loop: on JAX (CPU) a blur pass
    written so was measured 8x faster, forward + backward, than
    `keras.ops.depthwise_conv` (XLA's CPU grouped convolution), 96 ms vs 780 ms
    for BlurPool2D(3) on (32, 32, 32, 32).
    """
    k, n = taps.shape[0], x.shape[axis]
    m = (n - k) // stride + 1
    acc = None
    for a in range(k):
        index = [slice(None)] * len(x.shape)
        index[axis] = slice(a, a + stride * (m - 1) + 1, stride)
        w = taps[a]
        term = x[tuple(index)] * (float(w) if isinstance(w, np.floating) else w)
        acc = term if acc is None else acc + term
    return acc


def _blur_axis_portable(x, f: np.ndarray, axis: int, stride: int, mode: str):
    """One 1-D pass along `axis` (1 or 2): pad (Zhang's split), then a VALID pass subsampled by `stride`."""
    before, after = centered_pads(len(f))
    n = x.shape[axis]
    x = _pad_axis_portable(x, axis, before, after, mode)
    if n is not None:
        return depthwise_1d(x, f, axis, stride)
    # Unknown extent (TensorFlow, a traced signature with None): a depthwise convolution.
    kshape = (len(f), 1) if axis == 1 else (1, len(f))
    channels = x.shape[-1]
    kernel = np.broadcast_to(f.reshape(kshape + (1, 1)), kshape + (channels, 1))
    kernel = ops.convert_to_tensor(np.ascontiguousarray(kernel), dtype=x.dtype)
    return depthwise_along(x, kernel, axis, stride)


def depthwise_along(x, kernel, axis: int, stride: int):
    """A VALID depthwise convolution of [N, H, W, C] by a (k, 1, C, 1) (axis 1) or (1, k, C, 1) (axis 2)
    kernel, subsampled by `stride` along `axis` only, with equal row and column strides in every call.

    TensorFlow's own DepthwiseConv2dNative kernels (CPU Eigen and GPU) refuse
    unequal strides such as (1, 2); only the oneDNN rewrite takes them, and
    TensorFlow turns oneDNN on by default only on CPUs with AVX-512 VNNI/AMX
    (tensorflow/tensorflow#33005, #53055). Along the width the rows are folded
    into the batch ([N * H, 1, W, C], a free reshape: a height of 1 stays 1 at
    any stride); along the height the pass runs at stride 1 and keeps every
    `stride`-th row (the rare unknown-shape path only).
    """
    if stride == 1:
        return ops.depthwise_conv(x, kernel, strides=1, padding="valid")
    if axis == 1:
        return ops.depthwise_conv(x, kernel, strides=1, padding="valid")[:, ::stride]
    shape = ops.shape(x)
    y = ops.depthwise_conv(ops.reshape(x, (-1, 1, shape[2], x.shape[3])), kernel, strides=stride, padding="valid")
    return ops.reshape(y, (shape[0], shape[1], ops.shape(y)[2], y.shape[3]))


def blur2d(x, blur_size: int, strides: int, padding: str):
    """Binomial blur of [N, H, W, C] per channel, then subsampling by `strides`.

    Two 1-D depthwise passes, the vertical one subsampling rows first, so the
    horizontal pass works on 1/strides of the data. Output size ceil(H / strides).
    The channel count must be static; height and width may be unknown.
    """
    if padding not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {PAD_MODES}, got {padding!r}")
    if blur_size == 1:
        return x[:, ::strides, ::strides, :]
    if is_half(x):  # mixed precision: see HALF_DTYPES
        return ops.cast(blur2d(ops.cast(x, "float32"), blur_size, strides, padding), x.dtype)
    before, after = centered_pads(blur_size)
    if padding == "reflect":
        for axis in (1, 2):
            _check_reflect(x.shape[axis], before, after, axis)
    f = binomial_filter(blur_size).astype(keras.backend.standardize_dtype(x.dtype))
    fast = tf_fast()
    if fast is not None and None not in tuple(x.shape[1:]):
        return fast.blur2d(x, f, strides, padding)
    for axis in (1, 2):
        x = _blur_axis_portable(x, f, axis, strides, padding)
    return x


def conv2d(x, kernel, strides: int, padding: str):
    """`ops.conv` of [N, H, W, C] by a [k, k, C, M] kernel, except that a 1x1 kernel at a stride s > 1 runs as
    the stride-1 convolution of every s-th pixel: the same values and gradients (output side ceil(H / s) for
    `same` and `valid` alike), and no strided 1x1 convolution.

    Why: oneDNN's 1x1 backward-weights at a stride > 1 writes past its workspace when the input has fewer
    channels than its block (16 with AVX-512): heap corruption ("free(): invalid size") on an AMX Xeon with
    TensorFlow's oneDNN on, wrong weight gradients or a hang on other CPUs (uxlfoundation/oneDNN#6035, open;
    reproduced here with TF 2.21 at 4, 8 and 12 input channels, not at 16 or 24)."""
    if strides != 1 and kernel.shape[0] == 1 and kernel.shape[1] == 1:
        return ops.conv(x[:, ::strides, ::strides, :], kernel, strides=1, padding="valid")
    return ops.conv(x, kernel, strides=strides, padding=padding)
