"""Pooling over the scale axis of multi-scale feature maps (SESN, Sosnovik, Szmaja & Smeulders, ICLR 2020)."""

from __future__ import annotations

import keras
from keras import ops

MODES = ("max", "mean")


@keras.saving.register_keras_serializable(package="invariant")
class ScalePooling(keras.layers.Layer):
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

    def __init__(self, mode="max", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.input_spec = keras.layers.InputSpec(ndim=5)

    def call(self, inputs):
        if self.mode == "max":
            return ops.max(inputs, axis=3)
        return ops.mean(inputs, axis=3)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (input_shape[4],)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
