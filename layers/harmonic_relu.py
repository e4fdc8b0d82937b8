"""C-ReLU of Harmonic Networks (Worrall et al., CVPR 2017): a nonlinearity on magnitudes, phase kept."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="invariant")
class HarmonicReLU(keras.layers.Layer):
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
        try:
            self._fn = keras.activations.get(activation)
        except (ValueError, TypeError):
            raise ValueError(f"activation must be a Keras activation, got {activation!r}") from None
        if not isinstance(epsilon, (int, float)) or isinstance(epsilon, bool) or not epsilon > 0:
            raise ValueError(f"epsilon must be a number > 0, got {epsilon!r}")
        self.activation = activation
        self.epsilon = float(epsilon)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape):
        if len(input_shape) != 6 or input_shape[-2] != 2:
            raise ValueError(f"input must be [batch, H, W, orders, 2, channels], got shape {input_shape}")
        self.bias = self.add_weight(
            name="bias", shape=(input_shape[-3], input_shape[-1]), initializer=self.bias_initializer
        )

    def call(self, inputs):
        x = ops.cast(inputs, "float32")
        mag = ops.sqrt(ops.sum(ops.square(x), axis=-2, keepdims=True) + self.epsilon)
        bias = ops.expand_dims(ops.cast(self.bias, "float32"), -2)  # [M, 1, C]
        y = x * (self._fn(mag + bias) / mag)
        return ops.cast(y, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        activation = self.activation
        if not isinstance(activation, str):
            activation = keras.activations.serialize(activation)
        config.update(
            {
                "activation": activation,
                "epsilon": self.epsilon,
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            }
        )
        return config
