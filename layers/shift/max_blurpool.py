"""MaxBlurPool2D: Zhang's anti-aliased replacement of a 2x2 max pool."""

from __future__ import annotations

import math

import keras
from keras import ops

from layers.common._ops import blur2d, pad2d
from layers.shift.blurpool import BlurPool2D


@keras.saving.register_keras_serializable(package="invariant")
class MaxBlurPool2D(BlurPool2D):
    """Max over 2x2 windows at stride 1, then `BlurPool2D` (blur, subsample).

    Zhang's rewrite of `MaxPooling2D(2)` (R. Zhang, "Making Convolutional
    Networks Shift-Invariant Again", ICML 2019): the max is evaluated densely,
    and only the low-passed result is subsampled. Shift invariance is
    approximate (see `BlurPool2D`).

    Args:
        blur_size: 1 to 7, the binomial filter's length.
        strides: subsampling factor (>= 1).
        padding: `reflect`, `zero` or `circular`. With `circular` the 2x2 max
            window wraps around the border (keeping circular-shift
            equivariance up to the subsampling), so the max keeps the size H;
            otherwise it is Zhang's `valid` max (size H - 1).

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels last).

    Output shape:
        `(batch, ceil(h / strides), ceil(w / strides), channels)` with h = height
        for `circular` padding and height - 1 otherwise (same for w). For even
        sizes both equal `MaxPooling2D(2)`'s.

    Example:
        >>> MaxBlurPool2D()(keras.random.normal((2, 28, 28, 8))).shape
        (2, 14, 14, 8)
    """

    def call(self, inputs):
        x = inputs
        if self.padding == "circular":
            x = pad2d(x, (0, 1), (0, 1), "circular")
        x = ops.max_pool(x, 2, strides=1, padding="valid")
        return blur2d(x, self.blur_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        shrink = 0 if self.padding == "circular" else 1
        size = lambda d: None if d is None else math.ceil((d - shrink) / self.strides)
        return (n, size(h), size(w), c)
