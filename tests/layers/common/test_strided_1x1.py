"""A 1x1 convolution at stride 2 with few input channels (layers/common/_ops.py `conv2d`): the values and both
gradients of NumPy's, on every backend and with TensorFlow's oneDNN on and off.

oneDNN's own strided 1x1 backward-weights corrupts the heap at 4, 8 or 12 input channels on an AMX Xeon (the
process dies: "free(): invalid size") and gives wrong weight gradients on other CPUs (uxlfoundation/oneDNN#6035);
`conv2d` runs it as the stride-1 convolution of every second pixel. (The group convolutions, where the crash was
first seen at stride 2, now refuse a stride: tests/layers/group/test_group_layers.py.)
"""

import numpy as np
import pytest
from keras import ops

from layers.common._ops import conv2d
from tests.autodiff import gradients, to_numpy


def reference(x, w, s):
    """y = x[::s, ::s] @ w."""
    sub = x[:, ::s, ::s, :]
    return np.einsum("nhwc,cm->nhwm", sub, w[0, 0])


@pytest.mark.parametrize("channels", [4, 8, 12, 16])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("side", [8, 9])
def test_values_and_gradients_match_numpy(channels, padding, side):
    rng = np.random.default_rng(channels)
    x = rng.normal(size=(3, side, side, channels)).astype("float32")
    w = rng.normal(size=(1, 1, channels, 6)).astype("float32")
    want = reference(x, w, 2)
    g = rng.normal(size=want.shape).astype("float32")
    y = to_numpy(conv2d(ops.convert_to_tensor(x), ops.convert_to_tensor(w), 2, padding))
    assert y.shape == (3, (side + 1) // 2, (side + 1) // 2, 6)  # ceil(side / 2), as the strided conv gives
    np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)
    gt = ops.convert_to_tensor(g)
    (gx, gw), _ = gradients(lambda a, b: ops.sum(conv2d(a, b, 2, padding) * gt), [x, w])
    want_gx = np.zeros_like(x)
    want_gx[:, ::2, ::2, :] = np.einsum("nhwm,cm->nhwc", g, w[0, 0])
    want_gw = np.einsum("nhwc,nhwm->cm", x[:, ::2, ::2, :], g)[None, None]
    np.testing.assert_allclose(gx, want_gx, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(gw, want_gw, rtol=1e-4, atol=1e-3)
