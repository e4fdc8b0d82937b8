"""Pooling over the scale axis of multi-scale feature maps (SESN, Sosnovik, Szmaja & Smeulders, ICLR 2020)."""

from __future__ import annotations

import keras

from layers.common.base import AxisPooling


@keras.saving.register_keras_serializable(package="invariant")
class ScalePooling(AxisPooling):
    """Max (or mean) over the scale axis: [batch, H, W, S, C] -> [batch, H, W, C].

    The invariant read-out of scale-equivariant maps (SESN's "scale
    projection"): if the input's scales are shifted (the image was rescaled by
    a step of the scale set, see `ScaleLiftingConv2D`), the pooled map is only
    rescaled spatially, not changed per channel, up to the scales pushed past
    either end of the finite scale range. No weights.

    Args:
        mode: 'max' (SESN's choice) or 'mean'.

    Input shape:
        [batch, H, W, S, C].

    Output shape:
        [batch, H, W, C].

    Example:
        >>> y = ScaleLiftingConv2D(16, 9)(keras.Input((28, 28, 1)))   # [None, 28, 28, 3, 16]
        >>> ScalePooling()(y).shape
        (None, 28, 28, 16)

    Paper: I. Sosnovik, M. Szmaja, A. Smeulders, "Scale-Equivariant Steerable
    Networks", ICLR 2020.
    """
