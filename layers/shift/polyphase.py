"""AdaptivePolyphaseSampling2D: truly shift-invariant stride-2 downsampling (Chaman & Dokmanic, CVPR 2021)."""

from __future__ import annotations

import keras
from keras import ops

from layers.common import validation as check
from layers.common._ops import PAD_MODES, blur2d
from layers.common.base import ConfigLayer

PHASES = ((0, 0), (0, 1), (1, 0), (1, 1))


@keras.saving.register_keras_serializable(package="invariant")
class AdaptivePolyphaseSampling2D(ConfigLayer):
    """Stride-2 subsampling that keeps the polyphase component of largest l2 norm.

    From A. Chaman and I. Dokmanic, "Truly Shift-Invariant Convolutional
    Neural Networks", CVPR 2021. The four components `x[:, i::2, j::2, :]`
    (i, j in {0, 1}) are compared by their l2 norm over all rows, columns and
    channels, once per sample, and the largest is kept. A circular shift of
    the input permutes the components and circularly shifts each, so the
    kept one is the same up to a circular shift: the layer is circular-shift
    equivariant (any shift in, a shift out), and a network of circularly
    padded convolutions, pointwise layers, these layers and a global average
    pool is exactly invariant to circular shifts (a flatten head is not).

    Ties go to the first component in the order (0,0), (0,1), (1,0), (1,1).
    That is deterministic, but it keeps the invariance only when the tied
    components are circular shifts of one another (as for a constant or
    all-zero map, where the choice does not matter). Two different components
    with exactly equal norms are a measure-zero event for generic float
    inputs; norms within float rounding of each other could also flip the
    choice under a shift, equally improbable in practice.

    Args:
        blur_size: 1 (no blur, plain APS) to 7: the binomial low-pass filter
            applied at stride 1 before sampling ("APS + LPF").
        padding: the blur's padding, `circular` (default: keeps exact
            circular-shift equivariance), `reflect` or `zero`.

    Input shape:
        4D tensor `(batch, height, width, channels)` with even height and width.

    Output shape:
        4D tensor `(batch, height / 2, width / 2, channels)`.

    Example:
        >>> x = keras.random.normal((2, 28, 28, 8))
        >>> AdaptivePolyphaseSampling2D()(x).shape
        (2, 14, 14, 8)
    """

    input_ndim = 4
    renamed_args = {"filter_size": "blur_size"}  # the argument's name in models saved before it was renamed

    def __init__(self, blur_size: int = 1, padding: str = "circular", **kwargs):
        super().__init__(**kwargs)
        self.blur_size = check.integer(blur_size, "blur_size", low=1, high=7)
        self.padding = check.choice(padding, "padding", PAD_MODES)

    def build(self, input_shape):
        for axis, name in ((1, "height"), (2, "width")):
            if input_shape[axis] is not None and input_shape[axis] % 2:
                raise ValueError(
                    f"AdaptivePolyphaseSampling2D needs an even {name} (polyphase components of equal size), "
                    f"got input shape {tuple(input_shape)}"
                )

    def call(self, inputs):
        x = blur2d(inputs, self.blur_size, 1, self.padding) if self.blur_size > 1 else inputs
        components = ops.stack([x[:, i::2, j::2, :] for i, j in PHASES], axis=1)  # [N, 4, H/2, W/2, C]
        norms = ops.sum(ops.square(ops.cast(components, "float32")), axis=(2, 3, 4))  # [N, 4]
        # First maximal index, explicitly (argmax does not promise which tie it returns on every backend).
        is_max = ops.equal(norms, ops.max(norms, axis=1, keepdims=True))
        index = ops.min(ops.where(is_max, ops.arange(4, dtype="int32")[None, :], 4), axis=1)  # [N]
        index = ops.reshape(index, (-1, 1, 1, 1, 1))
        return ops.squeeze(ops.take_along_axis(components, index, axis=1), axis=1)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (n, None if h is None else h // 2, None if w is None else w // 2, c)
