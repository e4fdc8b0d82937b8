"""The parts shared by `ScaleLiftingConv2D` and `ScaleConv2D` (not public API).

Both layers hold `sigma`, `scale_step`, `num_scales`, `kernel_size`,
`max_order`, `strides`, `padding` and `filters`; this mixin derives the
basis scales, the fixed Hermite-Gaussian basis and the output shape from
them. Constructor arguments, their checks and `get_config` stay in each
layer, where the public signature is read.
"""

from __future__ import annotations

from layers._scale_basis import exact_pairs, hermite_basis, scale_set


class ScaleBasisMixin:
    """Scales, basis and output shape of a scale-equivariant convolution; mixed in before keras.layers.Layer."""

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

    def _spatial(self, n):
        if n is None:
            return None
        if self.padding == "same":
            return -(-n // self.strides)
        return (n - self.kernel_size) // self.strides + 1

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self._spatial(input_shape[1]), self._spatial(input_shape[2]),
                self.num_scales, self.filters)
