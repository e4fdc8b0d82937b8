"""Scale-to-scale equivariant convolution (SESN, Sosnovik, Szmaja & Smeulders, ICLR 2020)."""

from __future__ import annotations

import keras
from keras import ops

from layers.common import validation as check
from layers.scale._scale_common import ScaleConvBase


@keras.saving.register_keras_serializable(package="invariant")
class ScaleConv2D(ScaleConvBase):
    """Scale-equivariant convolution of multi-scale feature maps: [.., S, C] -> [.., S, C'].

    The layer after `ScaleLiftingConv2D`. Output scale s is
    out[s] = sum_{d < interscale} conv(in[s + d], K_s^d) (+ bias), where the
    filter K_s^d is a linear combination of the fixed Hermite-Gaussian basis
    at scale sigma_s = `sigma` * `scale_step`**s (see `ScaleLiftingConv2D` and
    `layers/scale/_scale_basis.py`) with coefficients learned per (function, d,
    C_in, C_out) and SHARED by all scales s. `interscale` > 1 lets a filter
    mix neighbouring scales (SESN's scale_size); scales past the last one
    read zeros. One convolution per output scale (its input: the interscale
    neighbouring scales stacked on the channel axis).

    Equivariance. If the input's scale s is moved to scale s + t and each map
    enlarged by a = scale_step**t (in'[s + t] = enlarge_a(in[s])), output
    scale s moves to s + t the same way:
    - EXACT (float rounding) when `a` is an odd integer and the enlargement is
      nearest-neighbour: out'[a i + (a - 1) / 2, a j + (a - 1) / 2, s + t] =
      out[i, j, s], for every s with s + t + interscale - 1 < num_scales
      (the others read scales past the end: the boundary of the scale range);
    - APPROXIMATE at every other ratio. Measured (`models/equivariance.py`:
      kernel 9, sigma 0.8, step sqrt(3), max_order 3, 8 -> 8 channels,
      random coefficients, 40 x 40 inputs blurred by a Gaussian of 2 px,
      cubic enlargement, central disk): interscale 1, one step (x1.73):
      scale 0 -> 1: 1.7%, 1 -> 2: 1.1%; two steps (x3, cubic) 0 -> 2: 1.8%;
      interscale 2, one step: 0 -> 1: 1.7%.
    A stack of layers is not exactly equivariant even at odd integer ratios:
    the output of a layer on an enlarged input is no longer blockwise
    constant, which is what the exact relation of the next layer needs.

    Args:
        filters: output channels per scale.
        kernel_size: odd kernel size shared by all scales.
        num_scales: number of scales S (the input's scale axis must match).
        scale_step: ratio q > 1 between neighbouring scales.
        sigma: the smallest scale, pixels.
        max_order: highest Hermite order per axis; (max_order + 1)^2 basis functions.
        interscale: how many neighbouring input scales each output scale reads (>= 1).
        strides: stride of the convolution.
        padding: 'same' or 'valid'.
        use_bias: add a learned bias per output channel (shared by the scales).
        kernel_initializer: initializer of the coefficients [functions, interscale, C_in, filters].
        bias_initializer: initializer of the bias.

    Input shape:
        [batch, H, W, num_scales, C_in].

    Output shape:
        [batch, H', W', num_scales, filters].

    Example:
        >>> x = keras.Input((28, 28, 1))
        >>> y = ScaleLiftingConv2D(16, 9)(x)                 # [None, 28, 28, 3, 16]
        >>> y = ScaleConv2D(32, 9, interscale=2)(y)          # [None, 28, 28, 3, 32]

    Paper: I. Sosnovik, M. Szmaja, A. Smeulders, "Scale-Equivariant Steerable
    Networks", ICLR 2020.
    """

    input_ndim = 5

    def __init__(self, filters, kernel_size=9, num_scales=3, scale_step=3**0.5, sigma=0.8, max_order=3, interscale=1,
                 strides=1, padding="same", use_bias=True, kernel_initializer="he_normal", bias_initializer="zeros",
                 **kwargs):
        super().__init__(filters, kernel_size, num_scales, scale_step, sigma, max_order, strides, padding, use_bias,
                         kernel_initializer, bias_initializer, **kwargs)
        self.interscale = check.integer(interscale, "interscale", low=1, high=self.num_scales,
                                        what=f"an integer from 1 to num_scales ({self.num_scales})")

    def check_input_shape(self, input_shape):
        if input_shape[-2] != self.num_scales:
            raise ValueError(
                f"the input's scale axis (-2) must have num_scales = {self.num_scales} entries, got shape {input_shape}"
            )

    def coefficient_shape(self, channels):
        return (self.num_functions, self.interscale, channels, self.filters)

    def build(self, input_shape):
        super().build(input_shape)
        self._basis = self.basis().transpose(0, 2, 3, 1).astype("float32")  # [S, k, k, F]

    def dense_kernel(self):
        """The kernels of the output scales, [num_scales, k, k, interscale * C_in, filters], from the coefficients."""
        w = ops.cast(self.kernel, "float32")
        k = ops.einsum("shwf,fdio->shwdio", ops.convert_to_tensor(self._basis), w)
        k = ops.reshape(k, (self.num_scales, self.kernel_size, self.kernel_size,
                            self.interscale * self._c_in, self.filters))
        return ops.cast(k, self.compute_dtype)

    def call(self, inputs, training=None):
        x = ops.cast(inputs, self.compute_dtype)
        shape = ops.shape(x)
        if self.interscale > 1:
            x = ops.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.interscale - 1), (0, 0)))
        kernels = self.call_kernel(x, training)
        outputs = []
        for s in range(self.num_scales):
            slab = x[:, :, :, s : s + self.interscale, :]
            slab = ops.reshape(slab, (shape[0], shape[1], shape[2], self.interscale * self._c_in))
            outputs.append(ops.conv(slab, kernels[s], strides=self.strides, padding=self.padding))
        return self._bias_add(ops.stack(outputs, axis=3))
