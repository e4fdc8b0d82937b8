"""bench_invariant.py's true-pose floor: the rotated protocol's digits turned back by their own angle, exactly or
with a stated noise, are the upright digits again (up to two bilinear resamplings); and its split of a
canonicalized model's errors by each digit's offset from its class's pose."""

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


def test_class_modes_are_circular_means_per_class():
    rel = np.array([350.0, 10.0, 5.0, 90.0, 100.0, 80.0, 300.0])
    y = np.array([0, 0, 0, 1, 1, 1, 1])
    mode, off = b.class_modes(rel, y)
    t = np.radians(rel[:3])
    np.testing.assert_allclose(mode[:3], np.degrees(np.arctan2(np.sin(t).mean(), np.cos(t).mean())))
    assert abs(mode[0] - 5.0 / 3.0) < 0.1  # 350 and 10 average to 0 on the circle, not to 180
    assert mode[3] == mode[6] and 0.0 < mode[3] < 90.0  # 300 pulls class 1's mean below 90
    assert np.all(off <= 180.0) and off[6] > 90.0 and off[1] < 10.0


def _linear_canonicalized():
    """A linear backbone (its argmax varies from digit to digit) behind a small polar canonicalizer, untrained."""
    import keras

    from models.invariant import invariant

    keras.utils.set_random_seed(0)
    inp = keras.Input((28, 28, 1))
    backbone = keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))
    return invariant(backbone, "C8", "canonicalize", relaxation="continuous", network="polar", filters=8,
                     kernel_size=3, downscale=1)


def _turned_strokes():
    digits = {k: v[..., None] if k.startswith("x") else v for k, v in _strokes(10).items()}  # [N, 28, 28, 1]
    return rotated_mnist(digits, 10, angles=True)[0]


def test_error_by_class_pose_turns_back_as_the_model_does():
    """The backbone on each digit turned back by its own pose errs exactly where the wrapped model does: the
    split's turning convention is the model's (the opposite turn gives other answers on these digits)."""
    model = _linear_canonicalized()
    x, _, ang = _turned_strokes()
    pred = b.predicted(model, x)
    assert len(set(pred.tolist())) > 3
    y = pred.copy()
    y[::2] = (y[::2] + 1) % 10  # half of them wrong
    split = b.error_by_class_pose(model, x, y, ang, pred)
    assert split["own pose error %"] == 50.0


def test_error_by_class_pose_splits_by_the_class_mode(monkeypatch):
    """With poses given (the protocol's angle plus 30 degrees, and then one digit 90 degrees further), the class
    mode is their circular mean, that digit is the off-mode one, and the errors split accordingly; at one pose
    per class the class-mode error is the own-pose error."""
    import keras

    from bench_rotated_mnist import CNN_PARAMS

    import models

    model = _linear_canonicalized()
    x, _, ang = _turned_strokes()
    pred = b.predicted(model, x)
    y = np.zeros(10, int)  # one class
    monkeypatch.setattr(b, "_pose", lambda canon, u: ang + 30.0)
    split = b.error_by_class_pose(model, x, y, ang, pred)
    assert split["off-mode fraction"] == 0.0 and split["class mode error %"] == split["own pose error %"]
    assert split["in-mode error %"] == 100.0 * np.mean(pred != 0)
    monkeypatch.setattr(b, "_pose", lambda canon, u: ang + 30.0 + 90.0 * (np.arange(10) == 0))
    split = b.error_by_class_pose(model, x, y, ang, pred)
    assert split["off-mode fraction"] == 0.1
    assert split["off-mode error %"] == 100.0 * (pred[0] != 0)
    assert split["in-mode error %"] == 100.0 * np.mean(pred[1:] != 0)
    keras.utils.set_random_seed(0)
    plain = models.build_model("baseline_cnn", (28, 28, 1), 10, **CNN_PARAMS)
    assert b.error_by_class_pose(plain, x, y, ang, pred) is None  # no canonicalizer, no split


def test_error_at_pose_offsets_turns_as_the_model_does_and_combines_the_offsets(monkeypatch):
    """At offset 0 the backbone errs exactly where the wrapped model does (the model's turning convention); each
    offset turns the digits further by it; the mean of the logits and the oracle ("right at none") are those of
    the per-offset logits."""
    model = _linear_canonicalized()
    x, _, ang = _turned_strokes()
    pred = b.predicted(model, x)
    y = pred.copy()
    y[::2] = (y[::2] + 1) % 10  # half of them wrong
    assert b.error_at_pose_offsets(model, x, y, offsets=(-10, 0, 10))["+0"] == 50.0
    monkeypatch.setattr(b, "_pose", lambda canon, u: ang - 10.0)  # every pose 10 degrees short of the true angle
    out = b.error_at_pose_offsets(model, x, y, offsets=(-10, 0, 10))
    logits = [b._backbone_logits(model, x, ang + d) for d in (-20, -10, 0)]
    assert out["+10"] == 100.0 * np.mean(np.argmax(logits[2], -1) != y)
    assert out["-10"] == 100.0 * np.mean(np.argmax(logits[0], -1) != y)
    assert out["mean of the logits"] == 100.0 * np.mean(np.argmax(np.mean(logits, 0), -1) != y)
    right = np.stack([np.argmax(v, -1) == y for v in logits])
    assert out["right at none"] == 100.0 * np.mean(~right.any(0)) <= min(out["-10"], out["+0"], out["+10"])
