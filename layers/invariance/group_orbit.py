"""`GroupOrbit`: the transformed copies of each image under C4, C8, D4 or D8, stacked along the batch for one
backbone call (orbit averaging, models/invariant.py)."""

from __future__ import annotations

import keras
from keras import ops

from layers.invariance._options import GROUPS, check_invariant
from layers.invariance._transforms import _rot90, _rotate


@keras.saving.register_keras_serializable(package="invariant")
class GroupOrbit(keras.layers.Layer):
    """[B, H, W, C] -> [|G| B, H, W, C]: the transformed copies of each image, stacked copy-major.

    Copy g = (k, m): rotation by k * 360/N degrees (k < N), then, for a dihedral
    group, a left-right mirror when m = 1; copy index k + N * m.
    """

    def __init__(self, group: str = "C4", **kwargs):
        super().__init__(**kwargs)
        check_invariant({"group": group})
        self.group = group
        self.order, self.mirrors = GROUPS[group]
        # TensorFlow's image transform (the 45-degree turns of C8, D8) has no XLA kernel: a model holding it is
        # not compiled by XLA there (Keras then runs jit_compile=True/"auto" as False); JAX's compiles.
        self.supports_jit = self.order == 4 or keras.backend.backend() != "tensorflow"

    @property
    def size(self) -> int:
        return self.order * (2 if self.mirrors else 1)

    def build(self, input_shape):
        if input_shape[1] is None or input_shape[1] != input_shape[2]:
            raise ValueError(f"{self.group} orbit averaging needs square images of known size, got {input_shape}")

    def call(self, x):
        copies = []
        for k in range(self.order):
            deg = k * 360.0 / self.order
            copies.append(_rot90(x, int(deg // 90)) if deg % 90 == 0 else _rotate(x, deg))
        if self.mirrors:
            copies += [ops.flip(c, axis=2) for c in copies]
        return ops.concatenate(copies, axis=0)

    def compute_output_shape(self, input_shape):
        b = None if input_shape[0] is None else input_shape[0] * self.size
        return (b, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "group": self.group}
