"""Restriction of a regular group feature map to a subgroup (e2cnn's `RestrictionModule`), e.g. D8 -> C8 or -> trivial."""

from __future__ import annotations

import keras
from keras import ops

from layers.common.base import ConfigLayer
from layers.group._groups import parse_group


@keras.saving.register_keras_serializable(package="invariant")
class GroupRestriction(ConfigLayer):
    """[B, H, W, |G|, C] maps of G -> [B, H, W, |H|, |G|/|H| * C] maps of a subgroup H (no weights, no loss).

    The regular representation of G, seen by H only, is |G|/|H| copies of
    H's regular representation, one per coset H c of G: the layer gathers
    the group axis coset by coset and folds the cosets into the channels
    (layers/group/_groups.py `Group.restriction`). What follows is a network on H:
    it stays exactly equivariant to H and may tell apart what G identified
    (an upright direction after D4 -> D1 or -> trivial; handedness after
    D8 -> C8), as e2cnn's restriction does for data that is symmetric at
    small scales only (Weiler & Cesa, NeurIPS 2019, section 3.6).

    Args:
        group: the input's group ('C<N>', 'D<N>').
        subgroup: a subgroup: 'C<M>' or, from D_N, 'D<M>' with M dividing N;
            'trivial' (C1) turns the maps into plain ones with one group element.

    Input shape:
        [batch, H, W, |G|, channels].

    Output shape:
        [batch, H, W, |H|, |G| / |H| * channels].

    Example:
        >>> y = LiftingConv2D(8, 3, group="D8")(keras.Input((64, 64, 3)))   # [None, 64, 64, 16, 8]
        >>> z = GroupRestriction("D8", "C8")(y)                               # [None, 64, 64, 8, 16]
        >>> z = GroupConv2D(8, 3, group="C8")(z)
    """

    def __init__(self, group, subgroup, **kwargs):
        super().__init__(**kwargs)
        g, h = parse_group(group), parse_group(subgroup)
        self._index = g.restriction(h)  # ValueError if h is not a subgroup of g
        self.group, self.subgroup = g.name, h.name
        self._sizes = (g.order, h.order, g.order // h.order)
        self.input_spec = keras.layers.InputSpec(ndim=5)

    def build(self, input_shape):
        if input_shape[-2] != self._sizes[0]:
            raise ValueError(f"input must be [batch, H, W, {self._sizes[0]} ({self.group}'s elements), channels], "
                             f"got shape {input_shape}")

    def call(self, inputs):
        _, h, cosets = self._sizes
        y = ops.take(inputs, ops.convert_to_tensor(self._index.reshape(-1)), axis=3)  # [B, H, W, |H| * cosets, C]
        s = ops.shape(y)
        return ops.reshape(y, (s[0], s[1], s[2], h, cosets * s[4]))

    def compute_output_shape(self, input_shape):
        c = input_shape[-1]
        return tuple(input_shape[:3]) + (self._sizes[1], None if c is None else self._sizes[2] * c)
