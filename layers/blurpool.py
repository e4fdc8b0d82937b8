"""BlurPool2D: anti-aliased downsampling (Zhang, ICML 2019)."""

from __future__ import annotations

import math

import keras

from layers._ops import PAD_MODES, binomial_filter, blur2d


@keras.saving.register_keras_serializable(package="invariant")
class BlurPool2D(keras.layers.Layer):
    """Binomial low-pass filter per channel, then subsampling by `strides`.

    From R. Zhang, "Making Convolutional Networks Shift-Invariant Again",
    ICML 2019: blurring before subsampling removes most of the aliasing that
    makes a strided layer's output jump when its input shifts by one pixel.
    The filter is the outer product of row `blur_size - 1` of Pascal's
    triangle with itself, normalised to sum to 1 (size 1: none; 2: box;
    3: [1, 2, 1]/4; 5: [1, 4, 6, 4, 1]/16). It is fixed: the layer has no
    weights. Being separable, it runs as two 1-D depthwise passes (vertical,
    subsampling rows, then horizontal on the smaller result).

    Shift invariance is approximate: the blur attenuates but does not remove
    the frequencies above the new Nyquist limit, so a one-pixel shift still
    changes the output a little (exactly so only for stride 1).

    Half-precision inputs (mixed precision) are blurred in float32 and cast
    back: TensorFlow's CPU depthwise kernel takes float16 only at equal row
    and column strides.

    Written in `keras.ops` (every backend); on TensorFlow, with static
    spatial sizes, a faster path with hand-written gradients runs
    (`layers/_tf_fast.py`), computing the same values.

    Args:
        blur_size: 1 to 7, the binomial filter's length.
        strides: subsampling factor (>= 1), the same along both axes.
        padding: `reflect` (Zhang's default), `zero` or `circular`, split as
            ((blur_size - 1) // 2 before, the rest after). `reflect` needs
            every spatial size to exceed the padding (size >= 4 for size 7).

    Input shape:
        4D tensor `(batch, height, width, channels)` (channels last).

    Output shape:
        4D tensor `(batch, ceil(height / strides), ceil(width / strides), channels)`.

    Example:
        >>> x = keras.random.normal((2, 28, 28, 8))
        >>> BlurPool2D(blur_size=3, strides=2)(x).shape
        (2, 14, 14, 8)
    """

    def __init__(self, blur_size: int = 3, strides: int = 2, padding: str = "reflect", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(blur_size, int) or isinstance(blur_size, bool) or not 1 <= blur_size <= 7:
            raise ValueError(f"blur_size must be an integer from 1 to 7, got {blur_size!r}")
        if not isinstance(strides, int) or isinstance(strides, bool) or strides < 1:
            raise ValueError(f"strides must be a positive integer, got {strides!r}")
        if padding not in PAD_MODES:
            raise ValueError(f"padding must be one of {PAD_MODES}, got {padding!r}")
        self.blur_size = blur_size
        self.strides = strides
        self.padding = padding
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def kernel(self):
        """The 2-D filter (blur_size x blur_size, NumPy float64) the layer applies per channel."""
        f = binomial_filter(self.blur_size)
        return f[:, None] * f[None, :]

    def call(self, inputs):
        return blur2d(inputs, self.blur_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        size = lambda d: None if d is None else math.ceil(d / self.strides)
        return (n, size(h), size(w), c)

    def get_config(self):
        config = super().get_config()
        config.update({"blur_size": self.blur_size, "strides": self.strides, "padding": self.padding})
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if "filter_size" in config:  # the argument's name in models saved before it was renamed
            config["blur_size"] = config.pop("filter_size")
        return super().from_config(config)
