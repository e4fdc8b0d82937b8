"""Batch normalisation of C_N feature maps with statistics shared across orientations (Cohen & Welling, 2016)."""

from __future__ import annotations

import keras
from keras import ops

from layers.common.base import WrappedBatchNorm


@keras.saving.register_keras_serializable(package="invariant")
class GroupBatchNormalization(WrappedBatchNorm):
    """Batch normalisation of [B, H, W, N, C] maps: one mean, variance, gamma and beta per channel.

    The statistics are taken over batch, positions AND the N orientations,
    and gamma and beta are shared by the orientations, so the layer commutes
    exactly with rotations that permute pixels (np.rot90) and with cyclic
    shifts of the orientation axis: it keeps a group convolution's
    equivariance (per-orientation statistics would break it). The optional
    activation is pointwise and keeps it too. Keras' BatchNormalization
    (axis -1 of the 5-D map) does the work, in float32 under mixed precision.

    Args:
        momentum: momentum of the moving statistics.
        epsilon: the variance epsilon.
        center: learn beta.
        scale: learn gamma.
        activation: applied after the normalisation (None: identity).

    Input shape:
        [batch, H, W, N, channels].

    Output shape:
        Same as the input.

    Example:
        >>> y = LiftingConv2D(8, 5, group_order=8, use_bias=False)(keras.Input((28, 28, 1)))
        >>> y = GroupBatchNormalization(activation="relu")(y)

    Papers: T. S. Cohen, M. Welling, "Group Equivariant Convolutional
    Networks", ICML 2016 (batch norm per channel over the group); M. Weiler,
    G. Cesa, "General E(2)-Equivariant Steerable CNNs", NeurIPS 2019 (e2cnn's
    InnerBatchNorm).
    """

    input_ndim = 5

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError(f"the channel axis of the input must be known, got shape {input_shape}")
        self.bn.build((None, None, None, None, input_shape[-1]))

    def call(self, inputs, training=None):
        y = self.activation_fn(self.bn(ops.cast(inputs, "float32"), training=training))
        return ops.cast(y, self.compute_dtype)
