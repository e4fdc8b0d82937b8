"""Group pooling (Cohen & Welling, ICML 2016): max or mean over the orientation axis of C_N maps."""

from __future__ import annotations

import keras
from keras import ops

MODES = ("max", "mean")


@keras.saving.register_keras_serializable(package="invariant")
class GroupPooling(keras.layers.Layer):
    """Pooling over the N orientations of a C_N feature map: [B, H, W, N, C] -> [B, H, W, C].

    A rotation of the input by 2 pi s / N rotates a group convolution's maps
    and cyclically shifts their orientation axis; the maximum or mean over
    that axis does not see the shift, so the pooled maps only rotate: they
    are rotation-invariant features (exactly for np.rot90 of an exactly
    equivariant stack; approximately at other angles, with the error of the
    layers before it). Followed by a global average over positions, it gives
    a rotation-invariant vector (the readout of the `gcnn` builder).

    Args:
        mode: `max` (Cohen & Welling's choice) or `mean`.

    Input shape:
        [batch, H, W, N, channels].

    Output shape:
        [batch, H, W, channels].

    Example:
        >>> y = GroupConv2D(16, 3, group_order=8)(LiftingConv2D(8, 5, group_order=8)(keras.Input((28, 28, 1))))
        >>> z = GroupPooling("max")(y)   # [None, 28, 28, 16]

    Papers: T. S. Cohen, M. Welling, "Group Equivariant Convolutional
    Networks", ICML 2016; M. Weiler, G. Cesa, "General E(2)-Equivariant
    Steerable CNNs", NeurIPS 2019 (e2cnn).
    """

    def __init__(self, mode="max", **kwargs):
        super().__init__(**kwargs)
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.input_spec = keras.layers.InputSpec(ndim=5)

    def call(self, inputs):
        if self.mode == "max":
            return ops.max(inputs, axis=-2)
        return ops.mean(inputs, axis=-2)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:3]) + (input_shape[-1],)

    def get_config(self):
        config = super().get_config()
        config.update({"mode": self.mode})
        return config
