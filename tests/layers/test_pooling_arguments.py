"""The poolings of branches and copies refuse what they cannot pool, at build and naming it: ConfidentPooling (the
input pyramid's branches) given one tensor or logits of different widths, OrbitMean (orbit averaging's copies)
given no copies or a batch that is not whole orbits. They failed at call with a backend's words, or silently."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from layers.invariance.orbit_mean import OrbitMean
from layers.scale.confident_pooling import ConfidentPooling
from tests.autodiff import to_numpy


def test_confident_pooling_refuses_one_tensor_and_branches_of_different_widths():
    a, b = keras.Input((5,)), keras.Input((5,))
    x = [np.random.default_rng(0).random((3, 5)).astype("float32") for _ in range(2)]
    model = keras.Model([a, b], ConfidentPooling()([a, b]))
    np.testing.assert_allclose(model.predict(x, verbose=0), to_numpy(ConfidentPooling()(x)), atol=1e-6)
    with pytest.raises(ValueError, match=r"takes a list of logit tensors \[batch, K\], one per branch, got one "
                                         r"tensor of shape \(None, 5\)"):
        ConfidentPooling()(a)
    with pytest.raises(ValueError, match=r"the same K, got shapes \[\(None, 5\), \(None, 6\)\]"):
        ConfidentPooling()([a, keras.Input((6,))])
    with pytest.raises(ValueError, match=r"the same K"):
        ConfidentPooling()([keras.Input((5, 2)), a])


@pytest.mark.parametrize("size", [0, -4, 2.5, True])
def test_orbit_mean_refuses_a_size_that_is_not_a_positive_integer(size):
    with pytest.raises(ValueError, match=f"size must be a positive integer .*got {size}"):
        OrbitMean(size)


def test_orbit_mean_refuses_a_batch_that_is_not_whole_orbits_and_averages_each_images_copies():
    with pytest.raises(ValueError, match=r"OrbitMean\(4\) needs a batch of 4 copies per image .*got shape \(6, 3\)"):
        OrbitMean(4)(np.zeros((6, 3), "float32"))
    z = np.arange(12, dtype="float32").reshape(4, 3)  # copy-major: copies 0 and 1 of images 0 and 1
    np.testing.assert_allclose(to_numpy(OrbitMean(2)(z)), (z[:2] + z[2:]) / 2)
