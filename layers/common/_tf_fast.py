"""TensorFlow-only fast paths of `layers/common/_ops.py`: padding and border corrections with hand-written gradients.

Private, and imported only by `layers.common._ops` (and by `layers.common.conv`
for `eager_without_tape`) when `keras.backend.backend()` is "tensorflow" (so
`layers/` imports no TensorFlow on other backends). Every function here but
`eager_without_tape` computes exactly what its portable twin in `_ops.py` computes;
the tests run both against the same NumPy references
(tests/layers/shift/test_blurpool.py, test_circular_pad.py).

Why it stays: on TensorFlow's CPU kernels, `tf.pad(mode="REFLECT")`'s own
gradient (MirrorPadGrad) and the gradients of the slices a padded copy is
made of (StridedSliceGrad, a full-size tensor per slice) were measured 3-4x
slower than the depthwise convolution they feed, and explicit-padding
convolutions have a slow generic CPU gradient (2-3x the "SAME" one). Here a
1-D blur pass pads inside a "SAME" convolution (aligned to Zhang's split by
zero taps) and adds a correction to the few border outputs; the hand-written
gradient does the same backwards. `bench/bench_backends.py` prints both
paths' ratios against DepthwiseConv2D: on TensorFlow's CPU, BlurPool2D took
0.6-1.2x a DepthwiseConv2D here and 13-27x on the portable path, which is
why this module exists.
"""

from __future__ import annotations

import contextlib
import os
import threading

import numpy as np
import tensorflow as tf

from layers.common._geometry import PAD_MODES, border_correction, centered_pads, same_alignment, take


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
    """`_ops.pad_axis` with a hand-written gradient (arguments already checked there)."""
    if mode == "zero":
        pads = [[0, 0]] * len(x.shape)
        pads[axis] = [before, after]
        return tf.pad(x, pads)  # its gradient is a slice: fast
    n = x.shape[axis]
    if n is None or n < before + after + 2:
        # Unknown or tiny extent: the general (slower) path.
        return _gather_pad(x, axis, before, after, mode)

    @tf.custom_gradient
    def padded(x):
        if mode == "circular":
            parts = ([take(x, axis, n - before, n)] if before else []) + [x] + ([take(x, axis, 0, after)] if after else [])
        else:
            top = [take(x, axis, i, i + 1) for i in range(before, 0, -1)]
            bottom = [take(x, axis, n - 2 - i, n - 1 - i) for i in range(after)]
            parts = top + [x] + bottom
        y = tf.concat(parts, axis)

        def grad(g):
            center = take(g, axis, before, before + n)
            head = take(g, axis, 0, before)
            tail = take(g, axis, before + n, before + n + after)
            if mode == "circular":  # head came from the last rows, tail from the first
                parts = [take(center, axis, 0, after) + tail, take(center, axis, after, n - before),
                         take(center, axis, n - before, n) + head]
            else:  # head row i (from the edge) came from row i, tail row j from row n-1-j
                parts = [take(center, axis, 0, 1),
                         take(center, axis, 1, before + 1) + tf.reverse(head, [axis]),
                         take(center, axis, before + 1, n - 1 - after),
                         take(center, axis, n - 1 - after, n - 1) + tf.reverse(tail, [axis]),
                         take(center, axis, n - 1, n)]
            return tf.concat([p for p in parts if p.shape[axis] != 0], axis)

        return y, grad

    return padded(x)


def _apply_rows(matrix, x, rows, axis):
    """sum_s matrix[r, s] * x[rows[s]] along `axis` for each r, stacked on `axis` (small tensors)."""
    out = []
    for r in range(matrix.shape[0]):
        acc = None
        for s, row in enumerate(rows):
            w = matrix[r, s]
            if w == 0.0:
                continue
            term = take(x, axis, row, row + 1) * tf.constant(w, x.dtype)
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


def _blur_rows(x, f: np.ndarray, stride: int, mode: str, axis: int = 1):
    """One 1-D depthwise pass of `f` along `axis` of [B, H, W, C] with Zhang's padding split, subsampled by `stride`.

    No padded copy of `x`: the convolution pads with zeros itself ("SAME",
    aligned to Zhang's split by zero taps, `_ops.same_alignment`), and reflect
    and circular padding add a correction to the few border outputs only
    (`_ops.border_correction`), scattered in; the hand-written gradient does
    the same backwards.

    The strides are (stride, stride) on an input of width 1, never (stride, 1):
    TensorFlow's own DepthwiseConv2dNative kernels (CPU Eigen and GPU) accept
    only equal row and column strides, and only the oneDNN rewrite (on by
    default on CPUs with AVX-512 VNNI/AMX alone) takes unequal ones
    (tensorflow/tensorflow#33005, #53055). A width of 1 under "SAME" stays 1.
    Where a probe finds unequal strides (`unequal_depthwise_strides`), `axis`
    2 and strides (1, stride) run directly instead (measured about 20% faster
    with oneDNN at k = 5, 7).
    """
    n, k = x.shape[axis], len(f)
    before, _ = centered_pads(k)
    z, e = same_alignment(n, k, stride, before)
    taps = np.concatenate([np.zeros(z), f, np.zeros(e)]).astype(f.dtype)
    channels = x.shape[-1]
    kshape = (len(taps), 1, channels, 1) if axis == 1 else (1, len(taps), channels, 1)
    kernel = tf.constant(np.broadcast_to(taps.reshape(kshape[:2] + (1, 1)), kshape), x.dtype)
    if x.shape[3 - axis] == 1:  # folded: the other axis is 1 wide, equal strides keep it so
        strides = [1, stride, stride, 1]
    else:
        strides = [1, stride, 1, 1] if axis == 1 else [1, 1, stride, 1]
    outputs, sources, matrix = ([], [], None) if mode == "zero" else border_correction(n, f, stride, before, mode)

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


def _blur_axis(x, f: np.ndarray, axis: int, stride: int, mode: str):
    """`_blur_rows` along `axis` (1 or 2) of [N, H, W, C] (static H, W, C), through free reshapes:
    rows as [N, H, 1, W * C], columns as [N * H, W, 1, C], so every call strides equally."""
    _, h, w, c = x.shape
    if unequal_depthwise_strides():
        return _blur_rows(x, f, stride, mode, axis)
    if axis == 1:
        y = _blur_rows(tf.reshape(x, [-1, h, 1, w * c]), f, stride, mode)
        return tf.reshape(y, [-1, y.shape[1], w, c])
    y = _blur_rows(tf.reshape(x, [-1, w, 1, c]), f, stride, mode)
    return tf.reshape(y, [-1, h, y.shape[1], c])


def blur2d(x, f: np.ndarray, strides: int, padding: str):
    """`_ops.blur2d` for static height, width and channels (checked there): two `_blur_axis` passes."""
    assert padding in PAD_MODES
    f = f.astype(x.dtype.as_numpy_dtype)
    for axis in (1, 2):
        x = _blur_axis(x, f, axis, strides, padding)
    return x


_PROBED: dict = {}


_PROBE_LOCK = threading.Lock()  # one probe at a time: each swaps file descriptor 2


@contextlib.contextmanager
def _probe_quietly():
    """The capability probes below run an op that may refuse: TensorFlow's C++ runtime then writes a warning
    (`Local rendezvous is aborting with status: INVALID_ARGUMENT ...`) to the process's stderr, which reads as a
    failure in a user's script though the refusal is the answer. Its log level is fixed at start-up, so the
    probe runs with file descriptor 2 on /dev/null (what other threads write to it meanwhile is lost: the probes
    run once, when the first layer is built); Python's own `sys.stderr` object is left alone."""
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (some embedded interpreters): nothing to hide
        yield
        return
    try:
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        os.close(saved)
        yield
        return
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def unequal_depthwise_strides() -> bool:
    """Whether depthwise convolutions (and their input gradient) take unequal strides here: probed once,
    eagerly, on the CPU, and only where no GPU is visible (the GPU's kernels refuse them). oneDNN's CPU
    kernels take them; TensorFlow's own refuse ("only supports equal length strides")."""
    with _PROBE_LOCK:
        if "unequal" not in _PROBED:
            _PROBED["unequal"] = not tf.config.list_logical_devices("GPU") and _runs(_unequal_strides)
    return _PROBED["unequal"]


def grouped_conv_gradients() -> bool:
    """Whether TensorFlow's kernels here differentiate grouped convolutions; probed once, eagerly, on the CPU.

    The oneDNN kernels and the GPU's (cuDNN) do; TensorFlow's own CPU kernels
    (Eigen: oneDNN off, as on AMD and older Intel CPUs) refuse with "Gradients
    for grouped convolutions are not supported on CPU". The probe runs the two
    gradient ops on a tiny input instead of guessing from the machine; a False
    answer sends callers to a depthwise pass that every kernel set has (on a
    GPU of a machine whose CPU refuses, that slower path is taken too: correct).
    """
    with _PROBE_LOCK:
        if "grouped" not in _PROBED:
            _PROBED["grouped"] = _runs(_grouped_gradients)
    return _PROBED["grouped"]


def _runs(ops) -> bool:
    """Whether `ops()` runs here, eagerly on the CPU; a kernel's refusal is False, and quiet (`_probe_quietly`)."""
    with tf.init_scope(), tf.device("/CPU:0"), _probe_quietly():
        try:
            ops()
            return True
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError):
            return False


def _unequal_strides() -> None:
    common = dict(filter=tf.ones((3, 1, 2, 1)), strides=[1, 2, 1, 1], padding="SAME")
    tf.raw_ops.DepthwiseConv2dNative(input=tf.ones((1, 4, 4, 2)), **common)
    tf.raw_ops.DepthwiseConv2dNativeBackpropInput(input_sizes=[1, 4, 4, 2], out_backprop=tf.ones((1, 2, 4, 2)),
                                                  **common)


def _grouped_gradients() -> None:
    # The two gradient ops themselves (a GradientTape records nothing under init_scope).
    g, common = tf.ones((1, 1, 2, 2)), dict(strides=[1, 1, 1, 1], padding="VALID")
    tf.raw_ops.Conv2DBackpropInput(input_sizes=[1, 1, 3, 4], filter=tf.ones((1, 2, 2, 2)), out_backprop=g, **common)
    tf.raw_ops.Conv2DBackpropFilter(input=tf.ones((1, 1, 3, 4)), filter_sizes=[1, 2, 2, 2], out_backprop=g,
                                    **common)


def grouped_conv2d(x, kernel, strides):
    """A VALID grouped convolution (groups = channels // kernel.shape[2]) on TensorFlow's own CPU kernel.

    `keras.ops.conv` compiles grouped convolutions with XLA on TensorFlow
    (`jit_compile=True` inside the op), which does not run under every caller;
    `tf.nn.conv2d` takes the grouped kernel directly.
    """
    return tf.nn.conv2d(x, kernel, (1,) + tuple(strides) + (1,), "VALID")


def eager_without_tape() -> bool:
    """Executing eagerly with no GradientTape or ForwardAccumulator that could record (BasisConv2D's kernel cache).

    `could_possibly_record` is TensorFlow's own test (private); where it is
    missing the answer is no, and the kernel is rebuilt at every call.
    """
    if not tf.executing_eagerly():
        return False
    try:
        from tensorflow.python.eager import record
    except ImportError:
        return False
    return not record.could_possibly_record()
