"""Group pooling (Cohen & Welling, ICML 2016): max or mean over the orientation axis of C_N maps."""

from __future__ import annotations

import keras

from layers.common.base import AxisPooling


@keras.saving.register_keras_serializable(package="invariant")
class GroupPooling(AxisPooling):
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
