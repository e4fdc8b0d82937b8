"""`CanonicalMarginal`: the output of a canonicalized model trained on the exact marginal over the group's
elements (`relaxation: marginal`, models/invariant.py)."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="invariant")
class CanonicalMarginal(keras.layers.Layer):
    """The output of a `canonicalize` model trained with `relaxation="marginal"` (module docstring).

    Call: [backbone logits, element logits [B, |G|]] -> logits [B, K]. In
    training the backbone saw the |G| transformed-back copies of each image
    ([|G| B, K], copy-major) and the output is log sum_g p(g | x) q(y | copy g):
    the log-probabilities of the exact marginal over the elements (so that
    a cross-entropy from logits is -log of the marginal likelihood). At
    inference the backbone saw the one canonical image and its logits pass through.
    """

    def __init__(self, size: int, **kwargs):
        super().__init__(**kwargs)
        self.size = int(size)

    def call(self, inputs, training=False):
        logits, scores = inputs
        logits = ops.cast(logits, "float32")
        if not training:
            return logits
        log_q = ops.log_softmax(ops.reshape(logits, (self.size, -1, logits.shape[-1])), axis=-1)  # [|G|, B, K]
        log_p = ops.transpose(ops.log_softmax(ops.cast(scores, "float32"), axis=-1))[:, :, None]  # [|G|, B, 1]
        return ops.logsumexp(log_q + log_p, axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[1][0], input_shape[0][-1])

    def get_config(self):
        return {**super().get_config(), "size": self.size}
