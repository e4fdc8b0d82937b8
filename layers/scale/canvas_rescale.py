"""Rescaling of images about their centre on the same canvas, anti-aliased when shrinking."""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from layers.common import validation as check
from layers.common.base import ConfigLayer


def canvas_resample_matrix(n: int, factor: float, antialias: bool = True) -> np.ndarray:
    """[n, n] matrix M (float64): M @ v rescales the length-n signal v by `factor` about its centre.

    Output pixel p reads the input around u = c + (p - c) / factor
    (c = (n - 1) / 2, pixel centres at integers) with a triangle (linear
    interpolation) kernel; when shrinking (factor < 1) and `antialias`, the
    kernel is widened by 1 / factor (area-style low-pass, as
    `tf.image.resize(..., antialias=True)` does), so detail finer than the new
    pixel spacing is averaged out instead of aliased. Each row is normalised
    by the kernel's sum over ALL integer positions, so content near the edge
    fades into zero rather than being re-weighted, and outputs whose window
    lies outside the input are 0 (shrinking: a zero border around the centre;
    enlarging: the centre is cropped). factor 1 gives the identity. The matrix
    is symmetric under reversal (M[n-1-p, n-1-j] = M[p, j]), so the 2-D
    rescaling commutes with flips and 90-degree rotations of square images.
    """
    check.number(factor, "factor", low=0)
    c = (n - 1) / 2.0
    u = c + (np.arange(n) - c) / float(factor)
    s = min(float(factor), 1.0) if antialias else 1.0
    k = int(math.ceil(1.0 / s)) + 1
    taps = np.floor(u)[:, None] + np.arange(-k, k + 1)[None, :]  # [n, 2k+1] integer positions
    w = np.maximum(0.0, 1.0 - s * np.abs(taps - u[:, None]))
    w /= w.sum(axis=1, keepdims=True)
    m = np.zeros((n, n))
    rows = np.broadcast_to(np.arange(n)[:, None], taps.shape)
    inside = (taps >= 0) & (taps < n)
    np.add.at(m, (rows[inside], taps[inside].astype(int)), w[inside])
    return m


@keras.saving.register_keras_serializable(package="invariant")
class CanvasRescale2D(ConfigLayer):
    """Rescale images by a fixed factor about their centre, keeping the canvas size.

    factor < 1 shrinks the content into the centre (zero border), anti-aliased
    by a triangle filter widened by 1 / factor; factor > 1 enlarges it
    (bilinear) and crops to the canvas; factor 1 is the identity. Separable:
    one constant [H, H] and one [W, W] matrix (`canvas_resample_matrix`),
    applied by two matrix products, so it is exact linear algebra on every
    backend and commutes with 90-degree rotations of square images. No weights.
    Used by the input pyramid (`models/pyramid.py`), and the same as
    `data.scale_augment.rescale_batch` at a fixed factor.

    Args:
        factor: the rescaling factor (> 0).
        antialias: widen the kernel when shrinking (default True).

    Input shape:
        [batch, H, W, C] with H and W known.

    Output shape:
        The same.

    Example:
        >>> x = keras.random.uniform((2, 28, 28, 1))
        >>> CanvasRescale2D(0.5)(x).shape            # the digit at half size, centred
        (2, 28, 28, 1)
    """

    input_ndim = 4

    def __init__(self, factor, antialias=True, **kwargs):
        super().__init__(**kwargs)
        self.factor = check.number(factor, "factor", low=0)
        self.antialias = check.boolean(antialias, "antialias")

    def build(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        if h is None or w is None:
            raise ValueError(f"CanvasRescale2D needs known height and width, got shape {input_shape}")
        self._rows = canvas_resample_matrix(int(h), self.factor, self.antialias).astype("float32")
        self._cols = canvas_resample_matrix(int(w), self.factor, self.antialias).astype("float32")

    def call(self, inputs):
        if self.factor == 1.0:
            return inputs
        x = ops.cast(inputs, self.compute_dtype)
        rows = ops.cast(ops.convert_to_tensor(self._rows), self.compute_dtype)
        cols = ops.cast(ops.convert_to_tensor(self._cols), self.compute_dtype)
        x = ops.einsum("ph,bhwc->bpwc", rows, x)
        return ops.einsum("qw,bpwc->bpqc", cols, x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)
