"""`OrbitMean`: the mean of the backbone's logits over the copies that `GroupOrbit` stacked (orbit averaging,
models/invariant.py)."""

from __future__ import annotations

import keras
from keras import ops

from layers.common import validation as check


@keras.saving.register_keras_serializable(package="invariant")
class OrbitMean(keras.layers.Layer):
    """[|G| B, K] -> [B, K]: the mean over the copies of each image (copy-major, as `GroupOrbit` stacks)."""

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = check.integer(size, "size", low=1, note="the number of copies per image, |G|")

    def build(self, input_shape):
        if input_shape[0] is not None and input_shape[0] % self.size:
            raise ValueError(f"OrbitMean({self.size}) needs a batch of {self.size} copies per image (a multiple of "
                             f"{self.size}), got shape {tuple(input_shape)}")

    def call(self, z):
        z = ops.reshape(z, (self.size, -1, z.shape[-1]))
        return ops.mean(ops.cast(z, "float32"), axis=0)

    def compute_output_shape(self, input_shape):
        b = None if input_shape[0] is None else input_shape[0] // self.size
        return (b, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}
