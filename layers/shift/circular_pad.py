"""CircularPad2D: wrap-around padding, which `keras.layers.ZeroPadding2D` lacks."""

from __future__ import annotations

import keras

from layers.common import validation as check
from layers.common._ops import pad2d
from layers.common.base import ConfigLayer


def _normalize(padding):
    """An int, (rows, cols) or ((top, bottom), (left, right)) of non-negative ints as ((top, bottom), (left, right))."""
    def is_pair(p):
        return isinstance(p, (tuple, list)) and len(p) == 2 and all(check.is_integer(q) for q in p)

    if check.is_integer(padding):
        pairs = ((padding, padding),) * 2
    elif is_pair(padding):
        pairs = ((padding[0], padding[0]), (padding[1], padding[1]))
    elif isinstance(padding, (tuple, list)) and len(padding) == 2 and all(map(is_pair, padding)):
        pairs = (tuple(padding[0]), tuple(padding[1]))
    else:
        raise ValueError(f"padding must be an int, (rows, cols) or ((top, bottom), (left, right)), got {padding!r}")
    if min(min(p) for p in pairs) < 0:
        raise ValueError(f"padding must be non-negative, got {padding!r}")
    return tuple((int(a), int(b)) for a, b in pairs)


@keras.saving.register_keras_serializable(package="invariant")
class CircularPad2D(ConfigLayer):
    """Pads rows and columns circularly: the image wraps around like a torus.

    A convolution applied with `padding="valid"` after `CircularPad2D` of
    ((k - 1) // 2, k // 2) per axis is a circular convolution: it commutes
    exactly with a circular shift of its input (`keras.ops.roll`) (at stride 1), which zero or reflect
    padding break at the borders. The argument convention follows
    `keras.layers.ZeroPadding2D`. See Chaman & Dokmanic, "Truly Shift-Invariant
    Convolutional Neural Networks", CVPR 2021, for its use in shift-invariant
    networks.

    Args:
        padding: an int (same on all four sides), `(rows, cols)` (symmetric),
            or `((top, bottom), (left, right))`.

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels last).

    Output shape:
        4D tensor `(batch, height + top + bottom, width + left + right, channels)`.

    Example:
        >>> CircularPad2D(((0, 1), (2, 2)))(keras.ops.ones((1, 4, 4, 3))).shape
        (1, 5, 8, 3)
    """

    input_ndim = 4

    def __init__(self, padding=1, **kwargs):
        super().__init__(**kwargs)
        self._pairs = _normalize(padding)
        self.padding = padding

    def call(self, inputs):
        return pad2d(inputs, self._pairs[0], self._pairs[1], "circular")

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        (t, b), (l, r) = self._pairs
        return (n, None if h is None else h + t + b, None if w is None else w + l + r, c)
