"""The invariance metrics of pipelines/invariance.py on cases whose answer is known by hand."""

import keras
import numpy as np
import pytest

from pipelines import invariance as inv
from models import equivariance as eq


def images(n=60, size=12, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, size, size, 1)).astype("float32")


def keras_predict(model):
    return lambda x: np.argmax(np.asarray(model(np.asarray(x, "float32"))), axis=-1)


def rot90_invariant_model():
    """Class 0 if the image's darkest pixel is below 0.3, else class 1, computed as
    1x1 convolution [x, -x] -> global max -> Dense. rot90 and circular shifts only permute
    the pixels the max runs over, so the output is bit-for-bit invariant to them."""
    x = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(2, 1, use_bias=False, kernel_initializer=keras.initializers.Constant([[[[1.0, -1.0]]]]))(x)
    h = keras.layers.GlobalMaxPooling2D()(h)  # [max x, -min x]
    logits = keras.layers.Dense(
        2, kernel_initializer=keras.initializers.Constant([[0.0, 0.0], [1.0, 0.0]]),
        bias_initializer=keras.initializers.Constant([0.0, -0.3]),
    )(h)  # [-min x, -0.3]
    return keras.Model(x, logits)


def offset_images(n=200, seed=3):
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.0, 0.6, (n, 1, 1, 1)) + rng.uniform(0.0, 0.2, (n, 12, 12, 1))).astype("float32")


def dense_model(classes=3):
    """Flatten + Dense: every pixel position has its own weight, so no invariance at all."""
    keras.utils.set_random_seed(2)
    x = keras.Input((12, 12, 1))
    return keras.Model(x, keras.layers.Dense(classes)(keras.layers.Flatten()(x)))


def constant_predict(x):
    return np.full(len(x), 1)


# ----------------------------------------------------------------------------- transforms


def test_rotation_is_counter_clockwise_and_exact_at_multiples_of_90():
    x = np.zeros((1, 5, 5, 1), "float32")
    x[0, 2, 4, 0] = 1.0  # right of the centre
    up = inv.rotate(x, 90)
    assert up[0, 0, 2, 0] == 1.0 and up.sum() == 1.0  # now above the centre
    np.testing.assert_array_equal(inv.rotate(x, 180)[0, 2, 0, 0], 1.0)
    np.testing.assert_array_equal(inv.rotate(x, -90), inv.rotate(x, 270))
    # the bilinear path (a hair off 90 degrees) agrees with the exact one
    np.testing.assert_allclose(inv.rotate(x, 90.0001), up, atol=1e-4)
    # a 45-degree turn puts the pixel at (row, col) = (2 - sqrt 2, 2 + sqrt 2), between grid points
    r45 = inv.rotate(x, 45)
    assert 0.0 < r45.max() < 1.0
    assert r45[0, :2, 3:].sum() == pytest.approx(r45.sum())  # all of it up and to the right


def test_shift_pad_and_circular_by_hand():
    x = np.arange(2 * 4 * 4, dtype="float32").reshape(2, 4, 4, 1)
    offsets = np.array([[1, -2], [0, 3]])
    padded = inv.shift(x, offsets, "pad")
    want0 = np.zeros((4, 4), "float32")
    want0[1:, :2] = x[0, :3, 2:, 0]  # down 1, left 2, zeros come in
    np.testing.assert_array_equal(padded[0, ..., 0], want0)
    want1 = np.zeros((4, 4), "float32")
    want1[:, 3:] = x[1, :, :1, 0]
    np.testing.assert_array_equal(padded[1, ..., 0], want1)
    circular = inv.shift(x, offsets, "circular")
    for i, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(circular[i], np.roll(x[i], (dy, dx), axis=(0, 1)))


def test_random_offsets_cover_the_stated_range_only():
    off = inv.random_offsets(2000, 3, np.random.default_rng(0))
    assert off.min() == -3 and off.max() == 3


def test_elastic_warp_is_seeded_and_alpha_zero_is_identity():
    x = images(8, 16)
    np.testing.assert_array_equal(inv.elastic_warp(x, 0.0, 4.0), x)
    a = inv.elastic_warp(x, 8.0, 4.0, seed=3)
    np.testing.assert_array_equal(a, inv.elastic_warp(x, 8.0, 4.0, seed=3))
    assert np.abs(a - x).mean() > 1e-2
    assert np.abs(a - inv.elastic_warp(x, 8.0, 4.0, seed=4)).mean() > 1e-3


# ----------------------------------------------------------------------------- metrics


def test_a_model_that_ignores_its_input_is_perfectly_consistent():
    x = images()
    y = np.random.default_rng(1).integers(0, 3, len(x))
    assert inv.shift_consistency(constant_predict, x, 4, mode="pad") == 1.0
    assert inv.shift_consistency(constant_predict, x, 4, mode="circular") == 1.0
    curve = inv.rotation_curve(constant_predict, x, y, inv.rotation_angles(15))
    assert list(curve) == list(range(0, 360, 15))
    assert len(set(curve.values())) == 1 and curve[0] == np.mean(y == 1)
    elastic = inv.elastic_curve(constant_predict, x, y, [0, 8, 34], 4.0)
    assert len(set(elastic.values())) == 1


def test_a_rot90_invariant_model_has_equal_accuracy_at_quarter_turns():
    predict = keras_predict(rot90_invariant_model())
    x = offset_images()
    y = np.random.default_rng(4).integers(0, 2, len(x))
    assert 0.2 < np.mean(predict(x)) < 0.8  # both classes occur
    curve = inv.rotation_curve(predict, x, y, inv.rotation_angles(15))
    assert curve[0] == curve[90] == curve[180] == curve[270]
    # ... but not at other angles: the zero-filled corners of a rotated image are its darkest pixels
    y0 = predict(x)
    off_grid = inv.rotation_curve(predict, x, y0, [45])
    assert off_grid[45] == pytest.approx(np.mean(y0 == 0))
    # it is also exactly invariant to circular shifts, and not to zero-filled ones
    assert inv.shift_consistency(predict, x, 4, mode="circular") == 1.0
    assert inv.shift_consistency(predict, x, 4, mode="pad") < 1.0


def test_a_position_sensitive_model_is_neither_rotation_nor_shift_invariant():
    predict = keras_predict(dense_model())
    x = images(200)
    y = predict(x)  # labels: its own predictions, so accuracy at 0 degrees is 1
    curve = inv.rotation_curve(predict, x, y, [0, 90, 180, 270])
    assert curve[0] == 1.0 and max(curve[90], curve[180], curve[270]) < 0.9
    assert inv.shift_consistency(predict, x, 4, mode="pad") < 0.9
    assert inv.shift_consistency(predict, x, 4, mode="circular") < 0.9
    assert inv.shift_consistency(predict, x, 0, mode="pad") == 1.0  # no shift, no change


# ----------------------------------------------------------------------------- harmonic layers


def smooth(x, sigma=1.5):
    from scipy import ndimage

    return ndimage.gaussian_filter(x, (0, sigma, sigma) + (0,) * (x.ndim - 3)).astype("float32")


def test_phase_factor_of_rotated_streams():
    z = np.zeros((1, 3, 3, 2, 2, 1))
    z[0, 1, 1, :, 0, 0] = 1.0  # orders 0 and 1, value 1 + 0i at the centre
    r = eq._rotate_streams(z, 90, (0, 1))
    np.testing.assert_allclose(r[0, 1, 1, 0, :, 0], [1.0, 0.0], atol=1e-12)  # order 0: unchanged
    np.testing.assert_allclose(r[0, 1, 1, 1, :, 0], [0.0, 1.0], atol=1e-12)  # order 1: times i


def test_harmonic_conv_is_exactly_equivariant_at_90_and_approximately_at_other_angles():
    from layers.harmonic.harmonic_conv import HarmonicConv2D

    keras.utils.set_random_seed(0)
    x = smooth(images(4, 20, seed=5))
    first = HarmonicConv2D(3, 5, orders=(0, 1))
    promised = eq.elements(first, [90, 180, 270, 45])
    assert [(e.label, e.exact) for e in promised] == [("rot90", True), ("rot180", True), ("rot270", True),
                                                       ("rot45", False)]
    err = eq.equivariance_errors(first, x, promised)
    assert max(err["rot90"], err["rot180"], err["rot270"]) < 1e-5
    assert 1e-5 < err["rot45"] < 0.1  # sampled filters: approximate only
    assert eq.equivariance_error(first, x, promised[3]) == err["rot45"]
    second = HarmonicConv2D(3, 3, orders=(0, 1, 2), input_orders=(0, 1))
    z = keras.ops.convert_to_numpy(first(x))
    err2 = eq.equivariance_errors(second, z, eq.elements(second, [90, 30]))
    assert err2["rot90"] < 1e-5 and err2["rot30"] < 0.1


def test_the_protocol_visits_each_harmonic_conv_of_a_model():
    from layers.harmonic.harmonic_conv import HarmonicConv2D
    from layers.harmonic.harmonic_readout import HarmonicMagnitudeReadout
    from layers.harmonic.harmonic_relu import HarmonicReLU

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 1))
    h = HarmonicConv2D(2, 3, name="hc1")(inp)
    h = HarmonicReLU()(h)
    h = HarmonicConv2D(2, 3, name="hc2")(h)
    model = keras.Model(inp, HarmonicMagnitudeReadout()(h))
    errs = eq.equivariance(model, smooth(images(3, 16)), [45, 90])
    assert list(errs) == ["harmonic"] and list(errs["harmonic"]) == ["hc1", "hc2"]
    for e in errs["harmonic"].values():
        assert e["rot90"] < 1e-5 and e["rot45"] > e["rot90"]
    assert eq.equivariant_layers(dense_model()) == []


def test_scale_curve_rescales_the_inputs_and_scores_each_factor():
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(12, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 3, 12)

    def only_unchanged(images):  # right only on the untouched images
        same = np.all(np.isclose(images, x, atol=1e-6), axis=(1, 2, 3))
        return np.where(same, y, -1)

    curve = inv.scale_curve(only_unchanged, x, y, [0.5, 1.0, 2.0])
    assert curve == {0.5: 0.0, 1.0: 1.0, 2.0: 0.0}


def test_the_evaluation_reports_the_scale_curve_as_metrics():
    from pipelines.config import EvaluateConfig
    from pipelines.evaluation import evaluate

    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (10, 12, 12, 1), dtype=np.uint8)
    y = rng.integers(0, 3, 10)
    ecfg = EvaluateConfig(max_images=10, rotation_step=90, elastic_alphas=[0.0], scale_factors=[0.5, 1.0])
    ev = evaluate(lambda im: np.zeros(len(im), int), x, y, ecfg)
    m = ev.metrics()
    assert set(ev.scale) == {0.5, 1.0}
    assert m["scale_acc_0.5"] == m["scale_acc_1"] == pytest.approx(np.mean(y == 0))
    assert any("scale curve" in row[0] for row in ev.rows())
