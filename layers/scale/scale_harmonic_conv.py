"""Roto-scale harmonic convolution: harmonic filters at several dilations sharing radial profiles, pooled over scales."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from layers.common import validation as check
from layers.harmonic.harmonic_conv import HarmonicConv2D

POOLINGS = ("max", "mean")


def triangle_filter(dilation: int) -> np.ndarray:
    """1-D linear-interpolation filter of an integer `dilation` a: (a - |j|) / a^2, |j| < a (sums to 1)."""
    j = np.arange(-(dilation - 1), dilation)
    return (dilation - np.abs(j)) / float(dilation) ** 2


@keras.saving.register_keras_serializable(package="invariant")
class ScaleHarmonicConv2D(HarmonicConv2D):
    """A harmonic convolution applied at several integer dilations, pooled over the scales.

    The filters are those of `HarmonicConv2D` (the same weights: radial
    profiles on rings and phases, `dense_kernel()`), used at each dilation a in
    `dilations`: the input is blurred by the separable triangle filter of
    width 2a - 1 ((a - |j|) / a^2) and convolved with the filter dilated by a.
    Together this is the filter linearly interpolated onto an a-times larger
    grid: the same radial profile R(r / a), same phase, same rotation orders
    (shared radial profiles), at the cost of one dilated convolution plus a
    small depthwise blur per scale. The per-scale outputs are pooled per
    position, order and channel: `max` keeps the complex value of the scale
    with the largest magnitude (SI-ConvNet style, Kanazawa et al. 2014),
    `mean` averages them.

    Rotation: every scale is a centred, steerable filter, and magnitudes do
    not change under the phase factor e^{i q theta}, so the layer keeps
    HarmonicConv2D's rotation equivariance: exact for multiples of 90 degrees
    (square inputs), approximate at other angles.

    Scale, per dilation, EXACT for integer factors: with Down_a = the triangle
    blur of width 2a - 1 (zero padding, cut to the canvas) followed by
    subsampling by a (sizes divisible by a): an anti-aliased a-fold
    reduction, the dilation-a output at positions a*i equals the dilation-1
    output of Down_a(x) at i, at every position (tested to float rounding).
    Between two dilations a*d and d the relation also holds away from the
    border (linear interpolation composes: triangle_a then triangle_d at
    stride a is triangle_{a d}), where the canvas cut differs. Pooled over the
    scales the layer is approximately scale-INVARIANT across the range of
    `dilations`: a reduction by a moves dilation a*d to d, and the scales
    that leave the set are the boundary. Non-integer scales are not offered
    (dilation needs integers).

    Args:
        filters, kernel_size, orders, input_orders, n_rings, phase,
        radial_initializer, phase_initializer: as `HarmonicConv2D`.
        dilations: distinct positive integers, the scales (default (1, 2, 3)).
        pooling: 'max' (by magnitude) or 'mean' over the scales.
        strides: must be 1 (dilated convolutions do not stride).
        padding: must be 'same' (the scales must keep one size).

    Input shape:
        [batch, H, W, C_in] (real images) or [batch, H, W, M_in, 2, C_in].

    Output shape:
        [batch, H, W, len(orders), 2, filters].

    Example:
        >>> x = keras.Input((28, 28, 1))
        >>> y = ScaleHarmonicConv2D(8, 5, dilations=(1, 2, 3))(x)   # [None, 28, 28, 2, 2, 8]

    Papers: D. E. Worrall et al., "Harmonic Networks: Deep Translation and
    Rotation Equivariance", CVPR 2017; A. Kanazawa, A. Sharma, D. Jacobs,
    "Locally Scale-Invariant Convolutional Neural Networks", NIPS workshop 2014;
    I. Sosnovik, M. Szmaja, A. Smeulders, "Scale-Equivariant Steerable
    Networks", ICLR 2020 (scale-equivariant filters from one shared profile).
    """

    def __init__(self, filters, kernel_size=5, dilations=(1, 2, 3), pooling="max", **kwargs):
        strides, padding = kwargs.get("strides", 1), kwargs.get("padding", "same")
        super().__init__(filters, kernel_size, **kwargs)
        if strides != 1:
            raise ValueError(f"strides must be 1 for ScaleHarmonicConv2D (dilated convolutions), got {strides!r}")
        if padding != "same":
            raise ValueError(f"padding must be 'same' for ScaleHarmonicConv2D, got {padding!r}")
        self.dilations = check.integers(dilations, "dilations", low=1,
                                        what="a list of distinct positive integers")
        self.pooling = check.choice(pooling, "pooling", POOLINGS)

    def scale_outputs(self, inputs, training=None):
        """The per-dilation outputs before pooling: [S, batch, H, W, len(orders), 2, filters]."""
        if not self.built:
            self.build(tuple(inputs.shape))
        x = self.fold_input(ops.cast(inputs, self.compute_dtype))
        channels = x.shape[-1]
        kernel = self.call_kernel(x, training)
        outs = []
        for a in self.dilations:
            xa = x
            if a > 1:
                t = triangle_filter(a)
                blur = np.broadcast_to(np.outer(t, t)[:, :, None, None], (len(t), len(t), channels, 1))
                xa = ops.depthwise_conv(x, ops.cast(ops.convert_to_tensor(blur.astype("float32")), x.dtype),
                                        strides=1, padding="same")
            outs.append(self.unfold_output(ops.conv(xa, kernel, strides=1, padding="same", dilation_rate=a)))
        return ops.stack(outs, axis=0)

    def call(self, inputs, training=None):
        y = self.scale_outputs(inputs, training)
        if len(self.dilations) == 1:
            return y[0]
        if self.pooling == "mean":
            return ops.mean(y, axis=0)
        magnitude = ops.sum(ops.square(y), axis=-2, keepdims=True)  # [S, B, H, W, M, 1, C]
        # The scale of largest magnitude, taken along the scale axis. (Not a one_hot of the argmax, multiplied
        # and summed: jaxlib 0.10's CPU compiler crashes the process on that under jit, measured.)
        pick = ops.expand_dims(ops.argmax(magnitude, axis=0), 0)  # [1, B, H, W, M, 1, C]
        return ops.squeeze(ops.take_along_axis(y, pick, axis=0), axis=0)
