"""Private helpers shared by the shift-invariance layers: binomial filters and fast padding.

Not part of the public API. TensorFlow offers zero, reflect and symmetric
padding; this module adds circular padding, and gives padding along one axis
a hand-written gradient because `tf.pad(mode="REFLECT")`'s own gradient
(MirrorPadGrad) was measured 3-4x slower than the depthwise convolution it
feeds on this CPU (bench/bench_conv_speed.py prints the figures).
`blur2d` itself pads nothing when the spatial sizes are static: see `_blur_axis`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

PAD_MODES = ("reflect", "zero", "circular")

# Half-precision inputs (mixed precision) are computed in float32: TensorFlow's CPU
# depthwise kernels take float16 only at equal row and column strides (a 1-D pass
# strides one axis), and its CPU grouped convolutions have no float16 gradient.
HALF_DTYPES = (tf.float16, tf.bfloat16)


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


def _border_correction(n: int, f: np.ndarray, stride: int, before: int, mode: str):
    """Where reflect/circular padding differs from zero padding along one axis of length `n`.

    A 1-D pass (filter `f`, padding (before, after), subsampling by `stride`)
    gives output i = sum_a f[a] * xp[i * stride + a - before]. With zero padding
    the taps outside [0, n) read 0; with `mode` they read input row src(j). So
    the difference lands only on the first/last few outputs and is a small
    linear map of a few input rows: returns (outputs, sources, M) with
    correction[outputs[r]] = sum_s M[r, s] * x[sources[s]].
    """
    k = len(f)
    m = (n - 1) // stride + 1
    terms = {}
    for i in range(m):
        lo, hi = i * stride - before, i * stride - before + k - 1
        if lo >= 0 and hi <= n - 1:
            continue
        for a in range(k):
            j = i * stride + a - before
            if 0 <= j < n:
                continue
            if mode == "circular":
                src = j % n
            else:  # reflect: ... 2 1 | 0 1 ... n-1 | n-2 ...
                period = 2 * (n - 1)
                src = j % period
                src = period - src if src >= n else src
            terms[(i, src)] = terms.get((i, src), 0.0) + float(f[a])
    outputs = sorted({i for i, _ in terms})
    sources = sorted({s for _, s in terms})
    matrix = np.zeros((len(outputs), len(sources)))
    for (i, s), w in terms.items():
        matrix[outputs.index(i), sources.index(s)] += w
    return outputs, sources, matrix


def _apply_rows(matrix, x, rows, axis):
    """sum_s matrix[r, s] * x[rows[s]] along `axis` for each r, stacked on `axis` (small tensors)."""
    out = []
    for r in range(matrix.shape[0]):
        acc = None
        for s, row in enumerate(rows):
            w = matrix[r, s]
            if w == 0.0:
                continue
            term = _take(x, axis, row, row + 1) * tf.constant(w, x.dtype)
            acc = term if acc is None else acc + term
        out.append(acc)
    return out[0] if len(out) == 1 else tf.concat(out, axis)


def _add_rows(y, axis: int, positions, updates):
    """y with `updates` (those positions' slabs, in order) added at `positions` along `axis` (1 or 2)
    of [N, H, W, C]: one tensor_scatter_nd_add whose indices give `updates` its natural shape.
    (InplaceAdd on a flat view was measured no faster: it stops Grappler simplifying the ops after it.)"""
    if y.shape[0] is not None and (axis == 1 or y.shape[1] is not None):
        grids = np.meshgrid(*[np.arange(d) for d in y.shape[:axis]], np.asarray(positions), indexing="ij")
        return tf.tensor_scatter_nd_add(y, tf.constant(np.stack(grids, -1).astype("int32")), updates)
    shape = tf.shape(y)
    grids = tf.meshgrid(*[tf.range(shape[i]) for i in range(axis)], tf.constant(positions, tf.int32), indexing="ij")
    return tf.tensor_scatter_nd_add(y, tf.stack(grids, -1), updates)


def _same_alignment(n: int, k: int, stride: int, before: int) -> tuple[int, int]:
    """(leading, trailing) zero taps that make a "SAME" convolution read Zhang's window.

    TensorFlow's SAME pads T = (m - 1) * stride + k' - n in total, T // 2 before
    (m = ceil(n / stride)); for stride 2 and even n that is one row fewer before
    than Zhang's (k - 1) // 2. Zero taps fix the alignment: with z leading and
    e trailing zeros (k' = k + z + e) output i reads rows i * stride - before + a
    for tap a of the filter exactly when T // 2 == before + z. SAME needs no
    padded copy and, unlike explicit padding, has fast CPU gradients.
    """
    m = (n - 1) // stride + 1
    for z in range(2 * stride + k):
        for e in range(2 * stride + k):
            total = (m - 1) * stride + k + z + e - n
            if total >= 0 and total // 2 == before + z:
                return z, e
    raise AssertionError(f"no SAME alignment for n={n}, k={k}, stride={stride}")  # unreachable: e steps T by 1


def _blur_axis(x, f: np.ndarray, axis: int, stride: int, mode: str):
    """One 1-D depthwise pass of `f` along `axis` (1 or 2) with Zhang's padding split, subsampled by `stride`.

    No padded copy of `x`: the convolution pads with zeros itself ("SAME",
    aligned to Zhang's split by zero taps, `_same_alignment`), and reflect and
    circular padding add a correction to the few border outputs only
    (`_border_correction`), scattered in; the hand-written gradient does the same
    backwards. Measured (bench/bench_conv_speed.py): the padded copies and their
    slicing gradients made reflect and circular padding cost 1.3-1.5x a
    DepthwiseConv2D at k = 3, and explicit-padding convolutions have a slow
    generic CPU gradient (2-3x the SAME one).
    """
    n, k = x.shape[axis], len(f)
    before, _ = centered_pads(k)
    z, e = _same_alignment(n, k, stride, before)
    taps = np.concatenate([np.zeros(z), f, np.zeros(e)]).astype(f.dtype)
    channels = x.shape[-1]
    kshape = (len(taps), 1, channels, 1) if axis == 1 else (1, len(taps), channels, 1)
    kernel = tf.constant(np.broadcast_to(taps.reshape(kshape[:2] + (1, 1)), kshape), x.dtype)
    strides = [1, stride, 1, 1] if axis == 1 else [1, 1, stride, 1]
    outputs, sources, matrix = ([], [], None) if mode == "zero" else _border_correction(n, f, stride, before, mode)

    @tf.custom_gradient
    def blurred(x):
        y = tf.nn.depthwise_conv2d(x, kernel, strides, "SAME")
        if outputs:
            y = _add_rows(y, axis, outputs, _apply_rows(matrix, x, sources, axis))

        def grad(g):
            sizes = tf.constant(x.shape.as_list(), tf.int32) if x.shape.is_fully_defined() else tf.shape(x)
            dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
                input_sizes=sizes, filter=kernel, out_backprop=g, strides=strides, padding="SAME"
            )
            if outputs:
                dx = _add_rows(dx, axis, sources, _apply_rows(matrix.T, g, outputs, axis))
            return dx

        return y, grad

    return blurred(x)


def blur2d(x, filter_size: int, strides: int, padding: str):
    """Binomial blur of [N, H, W, C] per channel, then subsampling by `strides`.

    Two 1-D depthwise passes, the vertical one subsampling rows first, so the
    horizontal pass works on 1/strides of the data. Output size ceil(H / strides).
    With static spatial sizes each pass pads inside the convolution
    (`_blur_axis`); with unknown sizes it falls back to an explicit padded copy.
    """
    if padding not in PAD_MODES:
        raise ValueError(f"padding mode must be one of {PAD_MODES}, got {padding!r}")
    if filter_size == 1:
        return x[:, ::strides, ::strides, :]
    if x.dtype in HALF_DTYPES:  # mixed precision: see HALF_DTYPES
        return tf.cast(blur2d(tf.cast(x, tf.float32), filter_size, strides, padding), x.dtype)
    f = binomial_filter(filter_size).astype(x.dtype.as_numpy_dtype)
    before, after = centered_pads(filter_size)
    for axis in (1, 2):
        n = x.shape[axis]
        static = n is not None and x.shape[-1] is not None
        if padding == "reflect" and n is not None and max(before, after) > n - 1:
            raise ValueError(f"reflect padding of {max(before, after)} needs a size of at least "
                             f"{max(before, after) + 1} along axis {axis}, got {n}")
        if static:
            x = _blur_axis(x, f, axis, strides, padding)
        else:  # unknown size: pad (a copy), then a VALID pass
            channels = x.shape[-1]
            kshape = (filter_size, 1) if axis == 1 else (1, filter_size)
            kernel = tf.constant(np.broadcast_to(f.reshape(kshape + (1, 1)), kshape + (channels, 1)))
            x = pad_axis(x, axis, before, after, padding)
            step = (1, strides, 1, 1) if axis == 1 else (1, 1, strides, 1)
            x = tf.nn.depthwise_conv2d(x, kernel, step, "VALID")
    return x
