"""The parts shared by `LiftingConv2D` and `GroupConv2D` (not public API).

Both layers hold `basis`, `group_order`, `kernel_size`, `padding`,
`filters`, `use_bias` (and `bias` when built); this mixin resolves the
basis, splits the convolution's output into orientations (plus the bias)
and gives the output shape. Constructor arguments, their checks and
`get_config` stay in each layer, where the public signature is read.
"""

from __future__ import annotations

from keras import ops

from layers._group_basis import resolve_basis


class GroupConvMixin:
    """Basis name, orientation split and output shape of a C_N convolution; mixed in before keras.layers.Layer."""

    @property
    def resolved_basis(self) -> str:
        return resolve_basis(self.basis, self.group_order)

    def _orientation_maps(self, y):
        """[batch, H, W, N * filters] (orientation-major) -> [batch, H, W, N, filters], plus the bias."""
        s = ops.shape(y)
        y = ops.reshape(y, (s[0], s[1], s[2], self.group_order, self.filters))
        if self.use_bias:
            y = y + ops.cast(self.bias, self.compute_dtype)
        return y

    def compute_output_shape(self, input_shape):
        def out(d):
            if d is None or self.padding == "same":
                return d
            return d - self.kernel_size + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.group_order, self.filters)
