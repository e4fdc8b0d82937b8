"""C-ReLU of Harmonic Networks (Worrall et al., CVPR 2017): a nonlinearity on magnitudes, phase kept."""

from __future__ import annotations

import keras
from keras import ops

from layers.common import validation as check
from layers.common.base import ConfigLayer
from layers.harmonic._harmonic_common import harmonic_map_shape


@keras.saving.register_keras_serializable(package="invariant")
class HarmonicReLU(ConfigLayer):
    """Complex nonlinearity of harmonic maps: f(|z| + b) z / |z|, C-ReLU with f = ReLU.

    The bias b is learned per rotation order and channel. The magnitude is
    computed as sqrt(re^2 + im^2 + epsilon), so the output and its gradient
    stay finite at z = 0 (the output there is 0). Since it acts on magnitudes
    only and keeps each value's phase, it is exactly rotation-equivariant:
    it commutes with any rotation of the map and with the per-order phase
    factor e^{i m theta}.

    Layout (all harmonic layers): a real tensor
    [batch, height, width, orders, 2, channels]; axis -2 holds the real (0)
    and imaginary (1) parts. Computed in float32 under mixed precision.

    Args:
        activation: the function f applied to |z| + b (a Keras activation
            name or callable; default "relu").
        epsilon: added to |z|^2 under the square root (> 0).
        bias_initializer: initializer of the bias [orders, channels].

    Input shape:
        [batch, H, W, orders, 2, channels].

    Output shape:
        Same as the input.

    Example:
        >>> y = HarmonicConv2D(8, 5)(keras.Input((28, 28, 1)))
        >>> y = HarmonicReLU()(y)                # [None, 28, 28, 2, 2, 8]

    Paper: D. E. Worrall, S. J. Garbin, D. Turmukhambetov, G. J. Brostow,
    "Harmonic Networks: Deep Translation and Rotation Equivariance", CVPR 2017.
    """

    def __init__(self, activation="relu", epsilon=1e-8, bias_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.activation_fn = check.activation(activation)
        self.activation = activation
        self.epsilon = check.number(epsilon, "epsilon", low=0, what="a number > 0")
        self.bias_initializer = check.initializer(bias_initializer, "bias_initializer")

    def build(self, input_shape):
        self.bias = self.add_weight(name="bias", shape=harmonic_map_shape(input_shape),
                                    initializer=self.bias_initializer)

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        mag = ops.sqrt(ops.sum(ops.square(x), axis=-2, keepdims=True) + self.epsilon)
        bias = ops.expand_dims(ops.cast(self.bias, "float32"), -2)  # [M, 1, C]
        y = x * (self.activation_fn(mag + bias) / mag)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)
