"""The base of `LiftingConv2D` and `GroupConv2D` (not public API).

Both layers take `filters`, `kernel_size`, `group_order`, `basis`,
`padding`, `use_bias`, the initializers and `group`; this base checks the
group's (the rest is `BasisConv2D`'s, layers/common/conv.py), resolves the
group (C_N or D_N, layers/group/_groups.py) and the basis transformed by each of
its elements, and gives the output's axes (the group's elements, the
filters). Each layer builds its kernel and states its promise.
"""

from __future__ import annotations

from layers.common import validation as check
from layers.common.conv import BasisConv2D
from layers.group._group_basis import BASES, group_basis, resolve_basis
from layers.group._groups import parse_group


class GroupConvBase(BasisConv2D):
    """Arguments, config, group, basis and output split of a regular C_N / D_N convolution (stride 1).

    Its `__init__` is LiftingConv2D's (kernel_size 5); GroupConv2D's differs in its default kernel_size, 3.
    """

    def __init__(self, filters, kernel_size=5, group_order=None, basis="auto", padding="same", use_bias=True,
                 kernel_initializer="he_normal", bias_initializer="zeros", group=None, **kwargs):
        if "strides" in kwargs and kwargs["strides"] != 1:  # taken by Conv2DBase, neither kept in the config nor exact
            raise ValueError(f"{type(self).__name__} has stride 1 only (subsampling on a fixed grid breaks the "
                             f"equivariance to quarter turns), got strides {kwargs['strides']!r}; downsample its maps "
                             "with GroupMapPooling2D")
        super().__init__(filters, kernel_size, padding=padding, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, bias_initializer=bias_initializer, **kwargs)
        if group is None:
            group_order = check.integer(4 if group_order is None else group_order, "group_order", low=1,
                                        note="N of C_N")
            g = parse_group(f"C{group_order}")
        else:
            g = parse_group(group)
            if group_order is not None and group_order != g.rotations:
                raise ValueError(f"group_order {group_order!r} disagrees with group {g.name!r} "
                                 f"({g.rotations} rotations); give one of them")
        self.basis = check.choice(basis, "basis", BASES)
        if basis == "pixel" and 4 % g.rotations:
            raise ValueError(f"basis 'pixel' rotates by np.rot90 only: group_order must be 1, 2 or 4, "
                             f"got {g.rotations!r}")
        self._group = g
        self.group = g.name
        self.group_order = g.rotations  # N, the rotations (C_N and D_N alike)
        self.group_size = g.order  # |G|, the length of the maps' group axis (N, or 2N with mirrors)
        # [|G|, k*k, J]: the basis transformed by each element, exact constants (float64 -> float32)
        self._basis = group_basis(self.kernel_size, g, basis).astype("float32")

    @property
    def resolved_basis(self) -> str:
        return resolve_basis(self.basis, self.group_order)

    @property
    def output_axes(self):
        return (self.group_size, self.filters)

