"""bench_invariant.py's true-pose floor: the rotated protocol's digits turned back by their own angle, exactly or
with a stated noise, are the upright digits again (up to two bilinear resamplings)."""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "bench"))

import bench_invariant as b  # noqa: E402
from common import rotate_images, rotated_mnist  # noqa: E402


def _strokes(n=24):
    """Asymmetric bright shapes on 28x28 (an L of random arm lengths), as uint8 digits are."""
    rng = np.random.default_rng(0)
    x = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        a, c = rng.integers(6, 10, 2)
        x[i, 8:8 + a, 10:13] = 255
        x[i, 8 + a - 3:8 + a, 10:10 + c + 3] = 255
    return {"x_train": x, "y_train": np.arange(n) % 10, "x_test": x[::-1].copy(), "y_test": np.arange(n)[::-1] % 10}


def _corr(u, v):
    u, v = u.reshape(len(u), -1).astype(float), v.reshape(len(v), -1).astype(float)
    u, v = u - u.mean(1, keepdims=True), v - v.mean(1, keepdims=True)
    return (u * v).sum(1) / np.sqrt((u * u).sum(1) * (v * v).sum(1))


def test_rotated_protocol_angles_are_those_it_turned_by():
    m = _strokes()
    plain = rotated_mnist(m, 16)
    (x, y, ang), (xt, yt, at) = rotated_mnist(m, 16, angles=True)
    np.testing.assert_array_equal(x, plain[0][0])
    np.testing.assert_array_equal(xt, plain[1][0])
    np.testing.assert_array_equal(x, rotate_images(m["x_train"][:16], ang))
    assert ang.shape == (16,) and at.shape == (24,) and (0 <= ang).all() and (ang < 360).all()


def test_turned_back_restores_the_upright_digits():
    m = _strokes()
    train, _ = rotated_mnist(m, 24, angles=True)
    back, y = b.turned_back(train, 0.0, seed=0)
    np.testing.assert_array_equal(y, m["y_train"][:24])
    upright = m["x_train"][:24]
    assert _corr(back, upright).min() > 0.8  # two bilinear resamplings blur the strokes, nothing more
    assert np.median(_corr(train[0], upright)) < 0.5  # the rotated digits themselves are not upright


def test_turned_back_noise_turns_by_the_stated_spread():
    m = _strokes()
    x, y, _ = rotated_mnist(m, 24, angles=True)[0]
    zero = (x, y, np.zeros(24))  # turned back by 0: the result is x turned by the noise alone
    noisy, _ = b.turned_back(zero, 10.0, seed=3)
    off = np.random.default_rng(3).normal(0.0, 10.0, 24)
    np.testing.assert_array_equal(noisy, rotate_images(x, off))
    np.testing.assert_array_equal(b.turned_back(zero, 10.0, seed=3)[0], noisy)  # the same draw for the same seed
    assert not np.array_equal(b.turned_back(zero, 10.0, seed=4)[0], noisy)
