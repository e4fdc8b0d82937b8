"""Private helpers shared by the shift-invariance layers: binomial filters and fast padding.

Not part of the public API. TensorFlow offers zero, reflect and symmetric
padding; this module adds circular padding, and gives padding along one axis
a hand-written gradient because `tf.pad(mode="REFLECT")`'s own gradient
(MirrorPadGrad) was measured 3-4x slower than the depthwise convolution it
feeds on this CPU (bench/bench_conv_speed.py prints the figures).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

PAD_MODES = ("reflect", "zero", "circular")


def binomial_filter(size: int) -> np.ndarray:
    """Row `size - 1` of Pascal's triangle, normalised to sum to 1 (float64)."""
    if not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"filter size must be a positive integer, got {size!r}")
    row = [1]
    for _ in range(size - 1):
        row = [a + b for a, b in zip([0] + row, row + [0])]
    row = np.asarray(row, dtype="float64")
    return row / row.sum()


def centered_pads(kernel_size: int) -> tuple[int, int]:
    """Zhang's split of `kernel_size - 1` padding: (before, after), after >= before."""
    before = (kernel_size - 1) // 2
    return before, kernel_size - 1 - before


def _take(x, axis, start, stop):
    index = [slice(None)] * len(x.shape)
    index[axis] = slice(start, stop)
    return x[tuple(index)]


def _gather_pad(x, axis, before, after, mode):
    """Padding by index gathering: any size, any static/dynamic shape (slower gradient)."""
    n = tf.shape(x)[axis]
    idx = tf.range(-before, n + after)
    if mode == "circular":
        idx = tf.math.floormod(idx, n)
    else:  # reflect: ... 2 1 | 0 1 ... n-1 | n-2 n-3 ...
        period = 2 * (n - 1)
        idx = tf.math.floormod(idx, period)
        idx = tf.where(idx >= n, period - idx, idx)
    return tf.gather(x, idx, axis=axis)


def pad_axis(x, axis: int, before: int, after: int, mode: str):
    """Pad `x` along `axis` by (before, after) in `mode` (reflect, zero or circular)."""
    if mode not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {PAD_MODES}, got {mode!r}")
    if before == 0 and after == 0:
        return x
    if mode == "zero":
        pads = [[0, 0]] * len(x.shape)
        pads[axis] = [before, after]
        return tf.pad(x, pads)  # its gradient is a slice: fast
    n = x.shape[axis]
    if n is None or n < before + after + 2:
        # Unknown or tiny extent: the general (slower) path.
        if mode == "reflect" and n is not None and max(before, after) > n - 1:
            raise ValueError(f"reflect padding of {max(before, after)} needs a size of at least "
                             f"{max(before, after) + 1} along axis {axis}, got {n}")
        return _gather_pad(x, axis, before, after, mode)

    @tf.custom_gradient
    def padded(x):
        if mode == "circular":
            parts = ([_take(x, axis, n - before, n)] if before else []) + [x] + ([_take(x, axis, 0, after)] if after else [])
        else:
            top = [_take(x, axis, i, i + 1) for i in range(before, 0, -1)]
            bottom = [_take(x, axis, n - 2 - i, n - 1 - i) for i in range(after)]
            parts = top + [x] + bottom
        y = tf.concat(parts, axis)

        def grad(g):
            center = _take(g, axis, before, before + n)
            head = _take(g, axis, 0, before)
            tail = _take(g, axis, before + n, before + n + after)
            if mode == "circular":  # head came from the last rows, tail from the first
                parts = [_take(center, axis, 0, after) + tail, _take(center, axis, after, n - before),
                         _take(center, axis, n - before, n) + head]
            else:  # head row i (from the edge) came from row i, tail row j from row n-1-j
                parts = [_take(center, axis, 0, 1),
                         _take(center, axis, 1, before + 1) + tf.reverse(head, [axis]),
                         _take(center, axis, before + 1, n - 1 - after),
                         _take(center, axis, n - 1 - after, n - 1) + tf.reverse(tail, [axis]),
                         _take(center, axis, n - 1, n)]
            return tf.concat([p for p in parts if p.shape[axis] != 0], axis)

        return y, grad

    return padded(x)


def pad2d(x, rows: tuple[int, int], cols: tuple[int, int], mode: str):
    """Pad the spatial axes of a channels-last [N, H, W, C] tensor."""
    return pad_axis(pad_axis(x, 1, rows[0], rows[1], mode), 2, cols[0], cols[1], mode)


def blur2d(x, filter_size: int, strides: int, padding: str):
    """Binomial blur of [N, H, W, C] per channel, then subsampling by `strides`.

    Two 1-D depthwise passes, each padded only along its own axis: the
    vertical pass already subsamples rows, so the horizontal pass and its
    padding work on 1/strides of the data. Output size ceil(H / strides).
    """
    if filter_size == 1:
        return x[:, ::strides, ::strides, :]
    channels = x.shape[-1]
    f = binomial_filter(filter_size).astype(x.dtype.as_numpy_dtype)
    vertical = tf.constant(np.tile(f[:, None, None, None], (1, 1, channels, 1)))
    horizontal = tf.reshape(vertical, (1, filter_size, channels, 1))
    before, after = centered_pads(filter_size)
    y = pad_axis(x, 1, before, after, padding)
    y = tf.nn.depthwise_conv2d(y, vertical, (1, strides, 1, 1), "VALID")
    y = pad_axis(y, 2, before, after, padding)
    return tf.nn.depthwise_conv2d(y, horizontal, (1, 1, strides, 1), "VALID")
