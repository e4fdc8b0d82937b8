"""BlurPool2D: anti-aliased downsampling (Zhang, ICML 2019)."""

from __future__ import annotations

import math

import keras

from layers.common import validation as check
from layers.common._ops import PAD_MODES, _check_reflect, binomial_filter, blur2d
from layers.common.base import ConfigLayer


@keras.saving.register_keras_serializable(package="invariant")
class BlurPool2D(ConfigLayer):
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
    (`layers/common/_tf_fast.py`), computing the same values.

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

    input_ndim = 4
    renamed_args = {"filter_size": "blur_size"}  # the argument's name in models saved before it was renamed

    def __init__(self, blur_size: int = 3, strides: int = 2, padding: str = "reflect", **kwargs):
        super().__init__(**kwargs)
        self.blur_size = check.integer(blur_size, "blur_size", low=1, high=7)
        self.strides = check.integer(strides, "strides", low=1)
        self.padding = check.choice(padding, "padding", PAD_MODES)

    @property
    def kernel(self):
        """The 2-D filter (blur_size x blur_size, NumPy float64) the layer applies per channel."""
        f = binomial_filter(self.blur_size)
        return f[:, None] * f[None, :]

    def build(self, input_shape):
        if self.padding == "reflect":  # a size known here is refused now, not at the first call
            for axis in (1, 2):
                _check_reflect(input_shape[axis], (self.blur_size - 1) // 2, self.blur_size // 2, axis)

    def call(self, inputs):
        return blur2d(inputs, self.blur_size, self.strides, self.padding)

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        size = lambda d: None if d is None else math.ceil(d / self.strides)
        return (n, size(h), size(w), c)
