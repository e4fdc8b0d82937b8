"""SpatialSeparableConv2D: a k x k convolution factored into k x 1 and 1 x k passes of rank r."""

from __future__ import annotations

import math

import keras
from keras import ops

from layers.common import validation as check
from layers.common._ops import centered_pads, depthwise_1d, depthwise_along, is_half, pad_axis, tf_fast
from layers.common.conv import Conv2DBase

PADDINGS = ("valid", "same", "circular")


@keras.saving.register_keras_serializable(package="invariant")
class SpatialSeparableConv2D(Conv2DBase):
    """A k x 1 convolution to `rank * filters` channels, then a 1 x k filter per channel, summed in groups of `rank`.

    Output channel m is the sum over j < rank of pair j: a full k x 1
    convolution `v[j, m]` (all input channels) followed by a single-channel
    1 x k filter `h[j, m]`. Its effective k x k kernel from input channel c
    to output m is therefore `sum_j v[:, c, j, m] (outer) h[:, j, m]`, of rank
    at most `rank` (a full Conv2D kernel has rank up to k), with the
    horizontal factors shared across input channels: that sharing is what
    makes it cheap. Spatially separable factorisations go back to Jaderberg,
    Vedaldi & Zisserman, "Speeding up Convolutional Neural Networks with Low
    Rank Expansions", BMVC 2014 (and Szegedy et al.'s 1 x n / n x 1 Inception
    v3 factorisation, CVPR 2016). It approximates Conv2D: rank-1 (rank-r)
    kernels are represented exactly, others only approximately.

    Costs, with C_in input channels, M = filters, r = rank, a k x k kernel,
    an output of H_o x W_o and W_v the width the vertical pass runs on
    (W_v = W_o for padding `same`/`circular` at stride 1):

        parameters:  k * C_in * r * M + k * r * M  (+ M bias)
                     vs Conv2D  k * k * C_in * M   (+ M bias)
        multiply-adds: H_o * W_v * k * C_in * r * M + H_o * W_o * k * r * M
                     vs Conv2D  H_o * W_o * k * k * C_in * M

    so about r / k of Conv2D's for C_in >> 1 (rank 1, k = 5: 21% of the
    parameters and work at C_in = 32).

    Half-precision inputs (mixed precision) are computed in float32 and cast
    back: on CPU, TensorFlow's depthwise pass takes float16 only at equal
    strides and its grouped convolution (rank > 1) has no float16 gradient.

    Args:
        filters: output channels M (>= 1).
        kernel_size: k (>= 1), the kernel's height and width.
        rank: r (1 <= r <= k), the number of separable pairs summed.
        strides: the same along both axes (>= 1).
        padding: `valid`, `same` (TF's, identical to Conv2D's) or `circular`
            (wrap-around, ((k - 1) // 2, k // 2) per axis; exactly equivariant
            to circular shifts at stride 1).
        use_bias: add a bias per output channel.
        kernel_initializer: initializer of both factors, with fans taken from
            each factor's own shape (as Keras' DepthwiseConv2D does for its
            kernel; the product starts small, batch norm after it helps).
        bias_initializer: initializer of the bias.

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels last).

    Output shape:
        4D tensor `(batch, new_height, new_width, filters)`, sized like
        `Conv2D(filters, kernel_size, strides, padding)` (`circular` like `same`).

    Example:
        >>> layer = SpatialSeparableConv2D(16, 5, rank=2, padding="same")
        >>> layer(keras.random.normal((2, 28, 28, 8))).shape
        (2, 28, 28, 16)
    """

    paddings = PADDINGS
    odd_kernel_size = False
    input_ndim = 4

    def __init__(self, filters: int, kernel_size: int, rank: int = 1, strides: int = 1, padding: str = "valid",
                 use_bias: bool = True, kernel_initializer="glorot_uniform", bias_initializer="zeros", **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        self.rank = check.integer(rank, "rank", low=1, high=self.kernel_size,
                                  what="an integer from 1 to kernel_size", note=f"a {self.kernel_size} x "
                                  f"{self.kernel_size} kernel has rank <= {self.kernel_size}")

    def build(self, input_shape):
        channels = self._channels(input_shape)
        k, width = self.kernel_size, self.rank * self.filters
        if self.padding == "valid" and any(d is not None and d < k for d in input_shape[1:3]):
            raise ValueError(f"a {k}x{k} kernel with padding 'valid' needs an input of at least {k}x{k}, got shape "
                             f"{tuple(input_shape)}; use padding 'same' or a smaller kernel_size")
        # Channel m * rank + j of the intermediate holds pair j of output m.
        self.vertical_kernel = self.add_weight(
            name="vertical_kernel", shape=(k, 1, channels, width), initializer=self.kernel_initializer
        )
        self.horizontal_kernel = self.add_weight(
            name="horizontal_kernel", shape=(1, k, width, 1), initializer=self.kernel_initializer
        )
        self._add_bias()
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def _pads(self, size):
        """(before, after) padding of one axis of static `size` for this layer's padding."""
        k, s = self.kernel_size, self.strides
        if self.padding == "circular":
            return centered_pads(k)
        if self.padding == "valid":
            return 0, 0
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)  # TF's "SAME"
        return total // 2, total - total // 2

    def call(self, inputs):
        if is_half(inputs):  # mixed precision: TF's CPU kernels lack float16 here (layers/common/_ops.py)
            return ops.cast(self.call(ops.cast(inputs, "float32")), inputs.dtype)
        x = inputs
        s = self.strides
        mode = "circular" if self.padding == "circular" else "zero"
        if self.padding == "same" and (x.shape[1] is None or x.shape[2] is None):
            raise ValueError(f"padding 'same' needs static height and width, got input shape {x.shape}")
        rows, cols = self._pads(x.shape[1]), self._pads(x.shape[2])
        x = pad_axis(x, 1, rows[0], rows[1], mode)
        x = ops.conv(x, ops.cast(self.vertical_kernel, x.dtype), strides=(s, 1), padding="valid")
        x = pad_axis(x, 2, cols[0], cols[1], mode)
        horizontal = ops.cast(self.horizontal_kernel, x.dtype)
        fast = tf_fast()
        grouped = fast is not None and fast.grouped_conv_gradients()
        if fast is None and x.shape[2] is not None:
            # Portable: k shifted slices times per-channel taps, then the pairs summed. On JAX (CPU), forward +
            # backward of this pass on (32, 32, 36, 64), k = 5: 197 ms, against 1727 ms as ops.depthwise_conv and
            # 24.9 s as a grouped ops.conv (XLA's CPU grouped convolutions are slow; layers/common/_ops.py, depthwise_1d).
            x = depthwise_1d(x, ops.reshape(horizontal, (self.kernel_size, -1)), axis=2, stride=s)
            if self.rank > 1:
                shape = ops.shape(x)
                x = ops.sum(ops.reshape(x, (shape[0], shape[1], shape[2], self.filters, self.rank)), axis=-1)
        elif self.rank == 1:
            x = depthwise_along(x, horizontal, axis=2, stride=s)
        else:
            # A grouped convolution (groups = filters, `rank` inputs each) sums the pairs in one op:
            # measured 2.3x faster (forward+backward, TensorFlow with oneDNN) than a depthwise pass then a
            # reshape-and-sum. TensorFlow's own CPU kernels have no gradient for it: `grouped` is probed.
            kernel = ops.transpose(ops.reshape(horizontal, (1, self.kernel_size, self.filters, self.rank)), (0, 1, 3, 2))
            if grouped:  # keras.ops.conv compiles a grouped conv with XLA on TensorFlow: ~200x slower on CPU
                x = fast.grouped_conv2d(x, kernel, (1, s))
            else:  # no grouped gradients here: a depthwise pass, then the pairs summed
                x = depthwise_along(x, ops.reshape(horizontal, (1, self.kernel_size, -1, 1)), axis=2, stride=s)
                shape = ops.shape(x)
                x = ops.sum(ops.reshape(x, (shape[0], shape[1], shape[2], self.filters, self.rank)), axis=-1)
        return self._bias_add(x)

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape

        def size(d):
            if d is None:
                return None
            before, after = self._pads(d)
            return (d + before + after - self.kernel_size) // self.strides + 1

        return (n, size(h), size(w), self.filters)
