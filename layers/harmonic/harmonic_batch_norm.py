"""Batch normalisation of the magnitudes of harmonic maps (Worrall et al., CVPR 2017), phase kept."""

from __future__ import annotations

import keras
from keras import ops

from layers.common.base import WrappedBatchNorm
from layers.harmonic._harmonic_common import harmonic_map_shape

_EPS = 1e-8  # under the square root of |z|^2: finite output and gradient at z = 0


@keras.saving.register_keras_serializable(package="invariant")
class HarmonicBatchNormalization(WrappedBatchNorm):
    """Batch normalisation of magnitudes: z -> f(BN(|z|)) z / |z|.

    Keras' BatchNormalization runs on the magnitudes |z| with one mean,
    variance, gamma and beta per (rotation order, channel); each value is
    then rescaled to the new magnitude, its phase kept. With
    `activation=None` the new "magnitude" BN(|z|) can be negative, which
    turns the phase by pi (still a real rescaling, so still equivariant);
    the paper's networks use `activation="relu"`. The statistics are taken
    over batch and positions, so the layer commutes exactly with rotations
    of the map that permute pixels (np.rot90) and with the per-order phase
    factors e^{i m theta}.

    Layout (all harmonic layers): a real tensor
    [batch, height, width, orders, 2, channels]; axis -2 holds the real (0)
    and imaginary (1) parts. Computed in float32 under mixed precision.

    Args:
        momentum: momentum of the moving statistics.
        epsilon: BN's variance epsilon.
        center: learn beta.
        scale: learn gamma.
        activation: f applied to the normalised magnitudes (None: identity).

    Input shape:
        [batch, H, W, orders, 2, channels].

    Output shape:
        Same as the input.

    Example:
        >>> y = HarmonicConv2D(8, 5)(keras.Input((28, 28, 1)))
        >>> y = HarmonicBatchNormalization(activation="relu")(y)

    Paper: D. E. Worrall, S. J. Garbin, D. Turmukhambetov, G. J. Brostow,
    "Harmonic Networks: Deep Translation and Rotation Equivariance", CVPR 2017.
    """

    bn_name = "magnitude_bn"

    def build(self, input_shape):
        self._m, self._c = harmonic_map_shape(input_shape)
        self.bn.build((None, None, None, self._m * self._c))

    def call(self, inputs, training=None):
        x = ops.cast(inputs, "float32")
        mag = ops.sqrt(ops.sum(ops.square(x), axis=-2) + _EPS)  # [B, H, W, M, C]
        s = ops.shape(mag)
        normed = self.bn(ops.reshape(mag, (s[0], s[1], s[2], self._m * self._c)), training=training)
        normed = self.activation_fn(ops.reshape(normed, s))
        y = x * ops.expand_dims(normed / mag, -2)
        return ops.cast(y, self.compute_dtype)
