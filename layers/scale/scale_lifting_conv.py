"""Scale-equivariant lifting convolution (SESN, Sosnovik, Szmaja & Smeulders, ICLR 2020)."""

from __future__ import annotations

import keras
from keras import ops

from layers.scale._scale_common import ScaleConvBase


@keras.saving.register_keras_serializable(package="invariant")
class ScaleLiftingConv2D(ScaleConvBase):
    """Lifting scale-equivariant convolution: images -> one feature map per scale.

    The filters are linear combinations of a FIXED multi-scale basis,
    Hermite polynomials times a Gaussian,
    psi_{sigma, n, m}(x, y) = H_n(x / sigma) H_m(y / sigma) exp(-(x^2 + y^2) / sigma^2) / sigma^2,
    0 <= n, m <= `max_order`, at the scales sigma_s = `sigma` * `scale_step`**s,
    s = 0 .. `num_scales` - 1. The learned coefficients (one per basis
    function, input and output channel) are SHARED by all scales, so output
    scale s holds the same filters dilated by scale_step**s. Every kernel tap
    is the basis integrated over its pixel cell (closed form; see
    `layers/scale/_scale_basis.py`), and scale s is cut to |x|, |y| <= rho sigma_s with
    rho = kernel_size / (2 sigma_max): the largest scale fills the kernel. All
    scales run as ONE convolution with num_scales * filters output channels.
    The bias is shared by the scales too.

    Equivariance. Enlarging the input by a factor a = sigma_t / sigma_s moves
    output scale s to scale t:
    out(enlarge_a x)[scale t] = enlarge_a(out(x)[scale s]).
    - EXACT (float rounding) when `a` is an odd integer (3, 5, ...) and the
      enlargement is nearest-neighbour (each pixel becomes an a x a block):
      out(U_a x)[a i + (a - 1) / 2, a j + (a - 1) / 2, t] = out(x)[i, j, s] at
      every position, borders included ('same', stride 1). Exact pairs of
      the defaults (sigma 0.8, step sqrt(3), 3 scales): scale 0 -> scale 2, a = 3.
    - APPROXIMATE at every other ratio (non-integer steps such as sqrt(3),
      even integers), where the pixel grids of the two scales do not nest.
      Measured (`models/equivariance.py`: kernel 9, sigma 0.8, step
      sqrt(3), max_order 3, 2 -> 8 channels, random coefficients; inputs
      40 x 40 white noise blurred by a Gaussian of 2 px, enlarged by cubic
      splines; relative L2 error on the central disk): one step (x1.73)
      scale 0 -> 1: 2.2%, scale 1 -> 2: 1.3%; two steps (x3 by cubic
      splines, not the exact nearest-neighbour enlargement) 0 -> 2: 2.6%.
      On MNIST digits (padded to 40 x 40) the same figures are 11.8%, 4.0%
      and 13.4%: sharp strokes are where both the basis at the small scale
      and the cubic resampling itself are off.
    - Inputs larger than the largest scale covers, or shrunk below one
      pixel per feature, leave the scale range: the scales at the ends of the
      range have no neighbour to move to (the usual boundary of a finite scale set).

    Args:
        filters: output channels per scale.
        kernel_size: odd kernel size shared by all scales.
        num_scales: number of scales S.
        scale_step: ratio q > 1 between neighbouring scales.
        sigma: the smallest scale, pixels.
        max_order: highest Hermite order per axis; (max_order + 1)^2 basis functions.
        strides: stride of the convolution.
        padding: 'same' or 'valid'.
        use_bias: add a learned bias per output channel (shared by the scales).
        kernel_initializer: initializer of the coefficients [functions, C_in, filters].
        bias_initializer: initializer of the bias.

    Input shape:
        [batch, H, W, C_in].

    Output shape:
        [batch, H', W', num_scales, filters] (H' = H for 'same' at stride 1).

    Example:
        >>> x = keras.Input((28, 28, 1))
        >>> y = ScaleLiftingConv2D(16, 9)(x)          # [None, 28, 28, 3, 16]

    Paper: I. Sosnovik, M. Szmaja, A. Smeulders, "Scale-Equivariant Steerable
    Networks", ICLR 2020.
    """

    input_ndim = 4

    def coefficient_shape(self, channels):
        return (self.num_functions, channels, self.filters)

    def build(self, input_shape):
        super().build(input_shape)
        self._basis = self.basis().transpose(2, 3, 0, 1).astype("float32")  # [k, k, S, F], a constant of the graph

    def dense_kernel(self):
        """The convolution kernel [k, k, C_in, num_scales * filters] made from the coefficients."""
        w = ops.cast(self.kernel, "float32")
        k = ops.einsum("hwsf,fio->hwiso", ops.convert_to_tensor(self._basis), w)
        k = ops.reshape(k, (self.kernel_size, self.kernel_size, self._c_in, self.num_scales * self.filters))
        return ops.cast(k, self.compute_dtype)
