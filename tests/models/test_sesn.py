"""The sesn builder, the roto-scale hnet (`scales`), and the scale-equivariance helper the evaluation calls."""

import os

import keras
import numpy as np
import pytest
from scipy import ndimage

import models
from models.equivariance import elements, enlarge, equivariance, equivariance_errors, equivariant_layers
from models.sesn import search_space
from tests.models.conftest import assert_float16_training_step

SMALL = dict(filters=[4, 6, 8], kernel_size=5, max_order=2, dense_units=16)


def test_default_is_the_mnist_scale_network():
    keras.utils.set_random_seed(0)
    m = models.build_model("sesn", (28, 28, 1), 10)
    assert "sesn" in models.available_models()
    kinds = [type(l).__name__ for l in m.layers]
    assert kinds.count("ScaleLiftingConv2D") == 1 and kinds.count("ScaleConv2D") == 2 and "ScalePooling" in kinds
    convs = equivariant_layers(m)  # the scale family's layers (models/equivariance.py)
    assert [c.filters for c in convs] == [32, 63, 95]
    assert [tuple(c.output.shape[1:4]) for c in convs] == [(28, 28, 3), (14, 14, 3), (7, 7, 3)]
    assert all(c.exact_pairs == [(0, 2, 3)] for c in convs)
    assert 290_000 <= m.count_params() <= 315_000, m.count_params()
    assert m.output_shape == (None, 10)


def test_small_config_output_save_and_reload(tmp_path):
    keras.utils.set_random_seed(1)
    m = models.build_model("sesn", (16, 16, 1), 3, interscale=2, num_scales=4, **SMALL)
    x = np.random.default_rng(1).uniform(size=(2, 16, 16, 1)).astype("float32")
    y = np.asarray(m(x, training=False))
    assert y.shape == (2, 3) and np.all(np.isfinite(y))
    assert [c.interscale for c in equivariant_layers(m)[1:]] == [2, 2]
    path = os.path.join(tmp_path, "sesn.keras")
    m.save(path)
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(path)(x, training=False)), y, atol=1e-5)


def test_mixed_precision(mixed_float16):
    assert_float16_training_step(models.build_model("sesn", (16, 16, 1), 3, **SMALL), (16, 16, 1))


def test_search_space_gives_valid_params():
    import keras_tuner

    params = search_space(keras_tuner.HyperParameters())
    models.check_params("sesn", params)
    assert models.build_model("sesn", (12, 12, 1), 3, **params).output_shape == (None, 3)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(filters=[]), r"filters must name at least one stage, got \[\]"),
        (dict(filters=[4, 4], interscale=[1, 2]), r"interscale must have one entry per stage \(1\), got \[1, 2\]"),
        (dict(final_pool=0), "final_pool must be a positive integer, got 0"),
        (dict(kernel_size=4), "kernel_size must be an odd integer >= 3, got 4"),
        (dict(scale_step=0.5), "scale_step must be a number > 1, got 0.5"),
    ],
)
def test_bad_params_are_refused_with_the_value(params, match):
    with pytest.raises(ValueError, match=match):
        models.build_model("sesn", (16, 16, 1), 3, **{**SMALL, **params})


def test_equivariance_helper_per_layer_and_scale():
    keras.utils.set_random_seed(2)
    m = models.build_model("sesn", (32, 32, 1), 3, filters=[4, 4], kernel_size=7, max_order=2, dense_units=0)
    rng = np.random.default_rng(2)
    x = ndimage.gaussian_filter(rng.uniform(size=(2, 32, 32, 1)), (0, 2, 2, 0)).astype("float32")
    errors = equivariance(m, x, [])["scale"]  # the evaluation's call: one scale step up
    assert list(errors) == ["stage0_lift", "stage1_sconv"]
    assert set(errors["stage0_lift"]) == {"s0_s1", "s1_s2"}
    lift = equivariant_layers(m)[0]
    two = equivariance_errors(lift, x, elements(lift, steps=(1, 2)))
    assert set(two) == {"s0_s1", "s1_s2", "s0_s2"}
    assert all(0 < e < 0.1 for e in two.values()), two
    with pytest.raises(ValueError, match="steps must be integers from 1 to num_scales - 1 \\(2\\), got 3"):
        elements(lift, steps=(3,))
    # enlarge: factor 1 is the identity, and it enlarges about the centre
    np.testing.assert_allclose(enlarge(x, 1.0), x, atol=1e-6)
    dot = np.zeros((1, 9, 9, 1))
    dot[0, 4, 6] = 1.0
    assert np.unravel_index(np.argmax(enlarge(dot, 2.0, order=1)[0, :, :, 0]), (9, 9)) == (4, 8)


# ----------------------------------------------------------------------------- roto-scale hnet


def test_roto_scale_hnet_is_exactly_rot90_invariant_with_the_same_weights():
    keras.utils.set_random_seed(3)
    m = models.build_model("hnet", (16, 16, 1), 4, filters=[2, 4], convs_per_stage=1, kernel_size=3, scales=[1, 2])
    plain = models.build_model("hnet", (16, 16, 1), 4, filters=[2, 4], convs_per_stage=1, kernel_size=3)
    assert m.count_params() == plain.count_params()  # radial profiles shared by the scales
    convs = [l for l in m.layers if type(l).__name__ == "ScaleHarmonicConv2D"]
    assert len(convs) == 2 and all(c.dilations == (1, 2) for c in convs)
    x = np.random.default_rng(3).uniform(size=(2, 16, 16, 1)).astype("float32")
    y = np.asarray(m(x, training=False))
    for k in (1, 2, 3):
        yr = np.asarray(m(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max()
    models.check_params("hnet", {"scales": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"scales must be a list of positive integer dilations .*got \[1, 1.5\]"):
        models.build_model("hnet", (16, 16, 1), 4, scales=[1, 1.5])
