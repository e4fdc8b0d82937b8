"""Average pooling of harmonic maps (Worrall et al., CVPR 2017), optionally anti-aliased (Zhang, ICML 2019)."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from layers.common import validation as check
from layers.common._ops import binomial_filter
from layers.common.base import ConfigLayer
from layers.harmonic._harmonic_common import harmonic_map_shape


def binomial_kernel(pool_size: int, blur_size: int) -> np.ndarray:
    """1-D pooling filter: a box of `pool_size` convolved with row `blur_size - 1` of Pascal's triangle, sum 1."""
    k = np.convolve(np.ones(pool_size), binomial_filter(blur_size))
    return k / k.sum()


@keras.saving.register_keras_serializable(package="invariant")
class HarmonicAveragePooling2D(ConfigLayer):
    """Average pooling of complex, multi-order streams; `blur_size > 1` gives its anti-aliased form.

    Averaging is linear and real, so pooling the real and imaginary parts of
    each stream separately pools the complex values. With `blur_size = 1` this is
    average pooling over `pool_size` windows ('valid'). With an odd
    `blur_size > 1` it is anti-aliased pooling as in Zhang's BlurPool: a box
    average over `pool_size` at stride 1, then a binomial blur of length
    `blur_size` (Pascal's triangle) with symmetric zero padding (blur_size - 1) / 2,
    subsampled at `strides`; both are done as one depthwise filter of length
    pool_size + blur_size - 1. The output size is that of plain pooling.

    Exactness under np.rot90: pooling commutes exactly with 90-degree
    rotations when the pooling grid is symmetric, i.e. when
    (size - pool_size) is a multiple of `strides` (for 2x2 pooling at
    stride 2: even sizes); 28 -> 14 -> 7 is exact. On other sizes the last
    row/column is dropped on one side only and the commutation is approximate.

    Layout (all harmonic layers): a real tensor
    [batch, height, width, orders, 2, channels]; axis -2 holds the real (0)
    and imaginary (1) parts.

    Args:
        pool_size: side of the pooling window.
        strides: subsampling step (default: pool_size).
        blur_size: odd length of the binomial anti-aliasing filter; 1 turns it off.

    Input shape:
        [batch, H, W, orders, 2, channels].

    Output shape:
        [batch, (H - pool_size) // strides + 1, (W - pool_size) // strides + 1, orders, 2, channels].

    Example:
        >>> y = HarmonicConv2D(8, 5)(keras.Input((28, 28, 1)))
        >>> y = HarmonicAveragePooling2D(2, blur_size=3)(y)   # [None, 14, 14, 2, 2, 8]

    Papers: D. E. Worrall et al., "Harmonic Networks: Deep Translation and
    Rotation Equivariance", CVPR 2017; R. Zhang, "Making Convolutional
    Networks Shift-Invariant Again", ICML 2019.
    """

    renamed_args = {"blur": "blur_size"}  # the argument's name in models saved before it was renamed

    def __init__(self, pool_size=2, strides=None, blur_size=1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = check.integer(pool_size, "pool_size", low=1)
        self.strides = check.integer(strides, "strides", low=1, allow_none=True)
        self.blur_size = check.integer(blur_size, "blur_size", low=1, odd=True, note="1: no blur")

    @property
    def _stride(self):
        return self.strides if self.strides is not None else self.pool_size

    def build(self, input_shape):
        orders, channels = harmonic_map_shape(input_shape)
        self._channels = orders * 2 * channels
        if self.blur_size > 1:
            k1 = binomial_kernel(self.pool_size, self.blur_size)
            k2 = np.outer(k1, k1).astype("float32")
            self._kernel = np.tile(k2[:, :, None, None], (1, 1, self._channels, 1))

    def call(self, inputs):
        s = ops.shape(inputs)
        x = ops.reshape(inputs, (s[0], s[1], s[2], self._channels))
        if self.blur_size == 1:
            y = ops.average_pool(x, self.pool_size, strides=self._stride, padding="valid")
        else:
            p = (self.blur_size - 1) // 2
            x = ops.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
            kernel = ops.cast(ops.convert_to_tensor(self._kernel), x.dtype)
            y = ops.depthwise_conv(x, kernel, strides=self._stride, padding="valid")
        t = ops.shape(y)
        return ops.reshape(y, (t[0], t[1], t[2], s[3], 2, s[5]))

    def compute_output_shape(self, input_shape):
        def out(n):
            return None if n is None else (n - self.pool_size) // self._stride + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), *input_shape[3:])
