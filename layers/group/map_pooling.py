"""Stride-2 pooling of group feature maps, exactly equivariant to quarter turns and mirrors at any size."""

from __future__ import annotations

import keras
from keras import ops

from layers.common import validation as check
from layers.common._ops import blur2d
from layers.common.base import ConfigLayer


@keras.saving.register_keras_serializable(package="invariant")
class GroupMapPooling2D(ConfigLayer):
    """Pooling of [B, H, W, |G|, C] maps at stride 2, per group element and channel, for sizes known or not.

    Along an even side the windows are 2 wide; along an odd one they are 3
    wide and centred on pixels 0, 2, ..., the last (the border ones a pixel
    short, averaging the real pixels only). Both sets of windows are mapped
    onto themselves by `np.rot90` and flips, so pooled maps turn with the
    input exactly; 2x2 windows on an odd side would leave its last pixel out,
    and a flip would then pool other pixels. The parity is read when the
    layer runs, so a model built for unknown sizes (`(None, None, C)`) stays
    exact at every size. `blur_size` > 1 blurs first (binomial, stride 1,
    reflect padding), as `gcnn`'s `pooling: blur`; the reflection needs each
    side longer than the padding (2 px for `blur_size` 3, 3 for 5, 4 for 7),
    which is checked where the size is known and not in a function traced
    for unknown sizes.

    The `gcnn` builder pools with this layer where the sizes are unknown and
    with Keras' 2-D pooling layers (the same windows) where they are known.

    Args:
        mode: `avg` or `max`.
        blur_size: 1 (no blur) to 7, the binomial filter's length.

    Input shape:
        [batch, H, W, |G|, channels].

    Output shape:
        [batch, ceil(H / 2), ceil(W / 2), |G|, channels].
    """

    input_ndim = 5

    def __init__(self, mode: str = "avg", blur_size: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.mode = check.choice(mode, "mode", ("avg", "max"))
        self.blur_size = check.integer(blur_size, "blur_size", low=1, high=7)

    def call(self, inputs):
        b, h, w, n, c = ops.shape(inputs)
        x = ops.reshape(inputs, (b, h, w, n * c))
        if self.blur_size > 1:
            x = blur2d(x, self.blur_size, 1, "reflect")
        x = self._pool_axis(self._pool_axis(x, 1, h), 2, w)
        return ops.reshape(x, (b, ops.shape(x)[1], ops.shape(x)[2], n, c))

    def _pool_axis(self, x, axis: int, size):
        pool = ops.max_pool if self.mode == "max" else ops.average_pool
        along = (lambda k: (k, 1)) if axis == 1 else (lambda k: (1, k))
        even = lambda: pool(x, along(2), along(2), padding="valid")  # noqa: E731
        odd = lambda: pool(x, along(3), along(2), padding="same")  # noqa: E731 - "same": the real pixels only
        if isinstance(size, int):  # known when the layer runs (always on JAX and PyTorch)
            return odd() if size % 2 else even()
        return ops.cond(ops.equal(size % 2, 1), odd, even)

    def compute_output_shape(self, input_shape):
        b, h, w, n, c = input_shape
        half = lambda d: None if d is None else (d + 1) // 2  # noqa: E731
        return (b, half(h), half(w), n, c)
