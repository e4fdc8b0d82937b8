"""What the harmonic layers share (not public API): the layout of a harmonic map.

A harmonic map is a real tensor [batch, height, width, orders, 2, channels]:
axis -3 runs over the rotation orders, axis -2 holds the real (0) and
imaginary (1) parts (layers/harmonic/harmonic_conv.py).
"""

from __future__ import annotations


def harmonic_map_shape(input_shape) -> tuple:
    """(orders, channels) of a harmonic map's shape; ValueError for any other shape."""
    if len(input_shape) != 6 or input_shape[-2] != 2:
        raise ValueError(f"input must be [batch, H, W, orders, 2, channels], got shape {tuple(input_shape)}")
    return input_shape[-3], input_shape[-1]
