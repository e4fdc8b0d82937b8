"""CanvasRescale2D (the input pyramid's rescaling): shared checks, the matrix, identity, rot90, validation."""

import numpy as np
import pytest

from layers.scale.canvas_rescale import CanvasRescale2D, canvas_resample_matrix
from tests.autodiff import to_numpy
from tests.layers.layer_checks import check_layer


def test_shared_layer_checks():
    check_layer(lambda: CanvasRescale2D(0.6), (2, 10, 12, 2), (2, 10, 12, 2), expects_trainable_weights=False)
    check_layer(lambda: CanvasRescale2D(1.7, antialias=False), (1, 9, 9, 1), (1, 9, 9, 1))


def test_matrix_identity_interpolation_and_antialiasing():
    np.testing.assert_allclose(canvas_resample_matrix(7, 1.0), np.eye(7), atol=1e-12)
    # enlarging by 2 about the centre of 4 pixels: output 1 reads u = 1.5 - 0.25 = 1.25
    m = canvas_resample_matrix(4, 2.0)
    np.testing.assert_allclose(m[1], [0, 0.75, 0.25, 0], atol=1e-12)
    # shrinking by 1/2: every output inside reads a triangle of half-width 2, weights summing to 1
    m = canvas_resample_matrix(12, 0.5)
    # output 5 reads u = 5.5 + (5 - 5.5) * 2 = 4.5: taps 3, 4, 5, 6 at distances 1.5, .5, .5, 1.5
    np.testing.assert_allclose(m[5], np.array([0, 0, 0, 1, 3, 3, 1, 0, 0, 0, 0, 0]) / 8, atol=1e-12)
    assert abs(m[5].sum() - 1) < 1e-12 and np.count_nonzero(m[5]) == 4
    assert np.all(m[0] == 0) and np.all(m[-1] == 0)  # the border outside the shrunk image is zero
    np.testing.assert_allclose(m, m[::-1, ::-1], atol=1e-15)  # symmetric about the centre


def test_commutes_with_rot90_and_identity_at_one():
    x = np.random.default_rng(0).uniform(size=(2, 12, 12, 3)).astype("float32")
    layer = CanvasRescale2D(0.7)
    y = to_numpy(layer(x))
    yr = to_numpy(layer(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2)))))
    np.testing.assert_allclose(yr, np.rot90(y, 1, axes=(1, 2)), atol=1e-6)
    np.testing.assert_array_equal(to_numpy(CanvasRescale2D(1.0)(x)), x)


@pytest.mark.parametrize("factor", [0, -1.0, float("nan"), True, "2"])
def test_bad_factor_is_refused_with_the_value(factor):
    with pytest.raises(ValueError, match=f"factor must be a positive number, got {factor!r}"):
        CanvasRescale2D(factor)
    with pytest.raises(ValueError, match="antialias must be True or False, got 1"):
        CanvasRescale2D(0.5, antialias=1)
