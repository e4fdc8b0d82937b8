"""`ConfidentPooling`: the input pyramid's `confident` pooling of its branches' logits (models/pyramid.py)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="invariant")
class ConfidentPooling(keras.layers.Layer):
    """Pool per-branch logits: their mean in training, the most confident branch's at inference.

    Inputs: a list of S logit tensors [batch, K]. In training the output is
    their mean (every branch gets gradient, as with `mean` pooling); at
    inference each row takes the logits of the branch whose softmax has the
    lowest entropy. Computed in float32 (its dtype policy is float32 whatever
    the global policy, so mixed-precision branches are cast up first). No weights.
    """

    def __init__(self, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def build(self, input_shape):
        shapes = list(input_shape) if isinstance(input_shape, (list, tuple)) else []
        if not shapes or not all(isinstance(s, (list, tuple)) for s in shapes):
            raise ValueError(f"ConfidentPooling takes a list of logit tensors [batch, K], one per branch, got one "
                             f"tensor of shape {input_shape}")
        if any(len(s) != 2 for s in shapes) or len({s[-1] for s in shapes}) != 1:
            raise ValueError(f"ConfidentPooling's branches must all be logits [batch, K] of the same K, got shapes "
                             f"{[tuple(s) for s in shapes]}")

    def call(self, inputs, training=None):
        z = ops.stack([ops.cast(t, "float32") for t in inputs], axis=1)  # [B, S, K]
        if training:
            return ops.mean(z, axis=1)
        logp = ops.log_softmax(z, axis=-1)
        entropy = -ops.sum(ops.exp(logp) * logp, axis=-1)  # [B, S]
        pick = ops.one_hot(ops.argmin(entropy, axis=1), len(inputs), dtype="float32")  # [B, S]
        return ops.sum(z * pick[:, :, None], axis=1)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])
