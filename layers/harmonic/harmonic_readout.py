"""Rotation-invariant readout of harmonic maps (Worrall et al., CVPR 2017)."""

from __future__ import annotations

import keras
from keras import ops

from layers.common import validation as check
from layers.common.base import ConfigLayer
from layers.harmonic._harmonic_common import harmonic_map_shape

_EPS = 1e-8  # under the square root of |z|^2: finite gradient at z = 0


@keras.saving.register_keras_serializable(package="invariant")
class HarmonicMagnitudeReadout(ConfigLayer):
    """Invariant readout: magnitudes |z| summed over rotation orders, then averaged over positions.

    The magnitude of every stream is invariant to the phase factors
    e^{i m theta} that rotations bring, so summing them over orders gives a
    map that rotates with the input, and its global average is rotation
    invariant (exactly for np.rot90 of a map whose stack is exactly
    equivariant; approximately at other angles). Magnitudes are computed as
    sqrt(re^2 + im^2 + 1e-8). An optional bias per channel follows (the
    paper's final layer adds one to the class scores).

    Layout (all harmonic layers): a real tensor
    [batch, height, width, orders, 2, channels]; axis -2 holds the real (0)
    and imaginary (1) parts. Computed in float32 under mixed precision.

    Args:
        pool: average over positions (False: return the invariant map).
        use_bias: add a learned bias per channel.
        bias_initializer: initializer of that bias.

    Input shape:
        [batch, H, W, orders, 2, channels].

    Output shape:
        [batch, channels] (pool=True) or [batch, H, W, channels].

    Example:
        >>> y = HarmonicConv2D(10, 5, phase=False)(keras.Input((28, 28, 1)))
        >>> logits = HarmonicMagnitudeReadout(use_bias=True)(y)   # [None, 10]

    Paper: D. E. Worrall, S. J. Garbin, D. Turmukhambetov, G. J. Brostow,
    "Harmonic Networks: Deep Translation and Rotation Equivariance", CVPR 2017.
    """

    def __init__(self, pool=True, use_bias=False, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.pool = check.boolean(pool, "pool")
        self.use_bias = check.boolean(use_bias, "use_bias")
        self.bias_initializer = check.initializer(bias_initializer, "bias_initializer")

    def build(self, input_shape):
        _, channels = harmonic_map_shape(input_shape)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(channels,), initializer=self.bias_initializer)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        mag = ops.sqrt(ops.sum(ops.square(x), axis=-2) + _EPS)  # [B, H, W, M, C]
        y = ops.sum(mag, axis=-2)  # [B, H, W, C]
        if self.pool:
            y = ops.mean(y, axis=(1, 2))
        if self.use_bias:
            y = y + ops.cast(self.bias, "float32")
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        if self.pool:
            return (input_shape[0], input_shape[-1])
        return (*input_shape[:3], input_shape[-1])
