"""The base of `ScaleLiftingConv2D` and `ScaleConv2D` (not public API).

Both layers take `filters`, `kernel_size`, `num_scales`, `scale_step`,
`sigma`, `max_order`, `strides`, `padding`, `use_bias` and the
initializers; this base checks the scale arguments (the rest is
`BasisConv2D`'s, layers/common/conv.py) and derives the basis scales, the
fixed Hermite-Gaussian basis and the output's axes (the scales, the filters).
"""

from __future__ import annotations

from layers.common import validation as check
from layers.common.conv import BasisConv2D
from layers.scale._scale_basis import exact_pairs, hermite_basis, scale_set


class ScaleConvBase(BasisConv2D):
    """Arguments, scales, basis and output split of a scale-equivariant convolution."""

    min_kernel_size = 3

    def __init__(self, filters, kernel_size=9, num_scales=3, scale_step=3**0.5, sigma=0.8, max_order=3, strides=1,
                 padding="same", use_bias=True, kernel_initializer="he_normal", bias_initializer="zeros", **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        self.num_scales = check.integer(num_scales, "num_scales", low=1)
        self.scale_step = check.number(scale_step, "scale_step", low=1)
        self.sigma = check.number(sigma, "sigma", low=0)
        self.max_order = check.integer(max_order, "max_order", low=0)

    @property
    def scales(self):
        """The basis scales sigma * scale_step**s (NumPy float64)."""
        return scale_set(self.sigma, self.scale_step, self.num_scales)

    @property
    def exact_pairs(self):
        """(s, t, a): scale t = a * scale s for an odd integer a: exactly equivariant under a-fold enlargement."""
        return exact_pairs(self.scales)

    def basis(self):
        """The fixed basis [num_scales, functions, k, k] (NumPy float64)."""
        return hermite_basis(self.kernel_size, self.scales, self.max_order)

    @property
    def num_functions(self) -> int:
        """(max_order + 1)^2 basis functions."""
        return (self.max_order + 1) ** 2

    @property
    def output_axes(self):
        return (self.num_scales, self.filters)
