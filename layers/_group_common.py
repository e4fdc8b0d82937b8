"""The base of `LiftingConv2D` and `GroupConv2D` (not public API).

Both layers take `filters`, `kernel_size`, `group_order`, `basis`,
`padding`, `use_bias`, the initializers and `group`; this base checks and
stores them, writes `get_config`, resolves the group (C_N or D_N,
layers/_groups.py) and the basis transformed by each of its elements,
splits the convolution's output into the group axis (plus the bias) and
gives the output shape. Each layer builds its kernel and states its promise.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from layers._group_basis import check_args, group_basis, resolve_basis
from layers._groups import parse_group


class GroupConvBase(keras.layers.Layer):
    """Arguments, config, group, basis and output split of a regular C_N / D_N convolution."""

    def __init__(self, filters, kernel_size, group_order=None, basis="auto", padding="same", use_bias=True,
                 kernel_initializer="he_normal", bias_initializer="zeros", group=None, **kwargs):
        super().__init__(**kwargs)
        if group is None:
            group_order = 4 if group_order is None else group_order
            if not isinstance(group_order, (int, np.integer)) or isinstance(group_order, bool) or group_order < 1:
                raise ValueError(f"group_order must be a positive integer (N of C_N), got {group_order!r}")
            g = parse_group(f"C{int(group_order)}")
        else:
            g = parse_group(group)
            if group_order is not None and group_order != g.rotations:
                raise ValueError(f"group_order {group_order!r} disagrees with group {g.name!r} "
                                 f"({g.rotations} rotations); give one of them")
        check_args(filters, kernel_size, g.rotations, basis, padding, use_bias)
        self.filters = int(filters)
        self.kernel_size = int(kernel_size)
        self._group = g
        self.group = g.name
        self.group_order = g.rotations  # N, the rotations (C_N and D_N alike)
        self.group_size = g.order  # |G|, the length of the maps' group axis (N, or 2N with mirrors)
        self.basis = basis
        self.padding = padding
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        # [|G|, k*k, J]: the basis transformed by each element, exact constants (float64 -> float32)
        self._basis = group_basis(self.kernel_size, g, basis).astype("float32")

    @property
    def resolved_basis(self) -> str:
        return resolve_basis(self.basis, self.group_order)

    def _add_bias(self):
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer)

    def _orientation_maps(self, y):
        """[batch, H, W, |G| * filters] (element-major) -> [batch, H, W, |G|, filters], plus the bias."""
        s = ops.shape(y)
        y = ops.reshape(y, (s[0], s[1], s[2], self.group_size, self.filters))
        if self.use_bias:
            y = y + ops.cast(self.bias, self.compute_dtype)
        return y

    def compute_output_shape(self, input_shape):
        def out(d):
            if d is None or self.padding == "same":
                return d
            return d - self.kernel_size + 1

        return (input_shape[0], out(input_shape[1]), out(input_shape[2]), self.group_size, self.filters)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "kernel_size": self.kernel_size,
                "group_order": self.group_order,
                "group": self.group,
                "basis": self.basis,
                "padding": self.padding,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
