"""The input pyramid (models/pyramid.py) through any builder's `pyramid_scales`: baseline_cnn and hnet."""

import os

import keras
import numpy as np
import pytest

import models
from data.scale_augment import rescale_batch
from layers.scale.canvas_rescale import CanvasRescale2D
from tests.models.conftest import assert_float16_training_step

SMALL_CNN = dict(filters=[4, 8], dense_units=0, dropout=0.0)
SMALL_HNET = dict(filters=[2, 4], convs_per_stage=1, kernel_size=3, n_rings=2)


@pytest.fixture(scope="module")
def cnn_pyramid():
    keras.utils.set_random_seed(0)
    return models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[1.0, 0.7, 0.5], pyramid_pool="max",
                              **SMALL_CNN)


def test_shares_the_backbone_and_pools_logits_over_the_rescaled_inputs(cnn_pyramid):
    backbone = cnn_pyramid.get_layer("baseline_cnn")
    assert cnn_pyramid.count_params() == backbone.count_params()  # one set of weights
    assert cnn_pyramid.output_shape == (None, 5)
    x = np.random.default_rng(0).uniform(size=(3, 16, 16, 1)).astype("float32")
    branches = [np.asarray(backbone(rescale_batch(x, f), training=False)) for f in (1.0, 0.7, 0.5)]
    got = np.asarray(cnn_pyramid(x, training=False))
    np.testing.assert_allclose(got, np.max(branches, axis=0), atol=1e-5)
    assert keras.backend.standardize_dtype(got.dtype) == "float32"


def test_mean_pool_is_the_default_and_a_single_scale():
    keras.utils.set_random_seed(1)
    m = models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[1.0, 1.5], **SMALL_CNN)
    assert any(l.name == "pyramid_mean" for l in m.layers)
    x = np.random.default_rng(1).uniform(size=(2, 16, 16, 1)).astype("float32")
    b = m.get_layer("baseline_cnn")
    want = (np.asarray(b(x, training=False)) + np.asarray(b(rescale_batch(x, 1.5), training=False))) / 2
    np.testing.assert_allclose(np.asarray(m(x, training=False)), want, atol=1e-5)
    single = models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[0.5], **SMALL_CNN)
    assert [type(l).__name__ for l in single.layers][:2] == ["InputLayer", "CanvasRescale2D"]


def test_bandlimit_passes_each_branch_through_the_most_enlarging_resolution():
    keras.utils.set_random_seed(5)
    m = models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[1.0, 2.0, 0.5], pyramid_bandlimit=True,
                           **SMALL_CNN)
    x = np.random.default_rng(5).uniform(size=(3, 16, 16, 1)).astype("float32")
    b = m.get_layer("baseline_cnn")
    seen = [rescale_batch(rescale_batch(x, 0.5), 2.0), rescale_batch(x, 2.0),
            rescale_batch(rescale_batch(x, 0.25), 2.0)]
    want = np.mean([np.asarray(b(v, training=False)) for v in seen], axis=0)
    np.testing.assert_allclose(np.asarray(m(x, training=False)), want, atol=1e-5)
    # without it the same weights see the sharp image and its plain rescalings, and answer differently
    plain = models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[1.0, 2.0, 0.5], **SMALL_CNN)
    plain.set_weights(m.get_weights())
    sharp = np.mean([np.asarray(b(rescale_batch(x, f), training=False)) for f in (1.0, 2.0, 0.5)], axis=0)
    got = np.asarray(plain(x, training=False))
    np.testing.assert_allclose(got, sharp, atol=1e-5)
    assert np.abs(got - want).max() > 1e-3


def test_confident_pool_trains_on_the_mean_and_answers_with_the_surest_branch(tmp_path):
    keras.utils.set_random_seed(6)
    m = models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[1.0, 2.0], pyramid_pool="confident",
                           **SMALL_CNN)
    b = m.get_layer("baseline_cnn")
    x = np.random.default_rng(6).uniform(size=(16, 16, 16, 1)).astype("float32")
    z = np.stack([np.asarray(b(x, training=False)), np.asarray(b(rescale_batch(x, 2.0), training=False))], 1)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    pick = (-(np.exp(logp) * logp).sum(-1)).argmin(1)
    assert 0 < pick.sum() < len(pick)  # both branches chosen for some rows, so the choice is exercised
    np.testing.assert_allclose(np.asarray(m(x, training=False)), z[np.arange(len(z)), pick], atol=1e-5)
    # in training the pool is the mean, so every branch learns (no dropout; batch norm uses each branch's batch)
    zt = [np.asarray(b(v, training=True)) for v in (x, rescale_batch(x, 2.0))]
    np.testing.assert_allclose(np.asarray(m(x, training=True)), np.mean(zt, 0), atol=1e-5)
    # saved and reloaded, it picks the same way
    path = os.path.join(tmp_path, "confident.keras")
    m.save(path)
    np.testing.assert_allclose(np.asarray(keras.saving.load_model(path)(x, training=False)),
                               np.asarray(m(x, training=False)), atol=1e-5)


def test_model_rescale_agrees_with_the_data_op():
    x = np.random.default_rng(2).uniform(size=(2, 28, 28, 1)).astype("float32")
    for f in (0.3, 0.5, 0.7, 1.3, 2.0):
        np.testing.assert_allclose(np.asarray(CanvasRescale2D(f)(x)), rescale_batch(x, f), atol=2e-6)


def test_hnet_pyramid_keeps_exact_rot90_invariance():
    keras.utils.set_random_seed(3)
    m = models.build_model("hnet", (16, 16, 1), 4, pyramid_scales=[1.0, 0.6], **SMALL_HNET)
    x = np.random.default_rng(3).uniform(size=(2, 16, 16, 1)).astype("float32")
    y = np.asarray(m(x, training=False))
    for k in (1, 2, 3):
        yr = np.asarray(m(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max()
    assert np.abs(y[0] - y[1]).max() > 1e-5


def test_saves_and_reloads(cnn_pyramid, tmp_path):
    x = np.random.default_rng(4).uniform(size=(8, 16, 16, 1)).astype("float32")
    path = os.path.join(tmp_path, "pyramid.keras")
    cnn_pyramid.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), np.asarray(cnn_pyramid(x, training=False)),
                               atol=1e-5)


@pytest.mark.parametrize("pool", ["mean", "confident"])
def test_mixed_precision(mixed_float16, pool):
    m = models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[1.0, 2.0], pyramid_pool=pool,
                           pyramid_bandlimit=True, **SMALL_CNN)
    assert_float16_training_step(m, (16, 16, 1))
    # inference (where the confident pool picks a branch): float16 branches, float32 logits, the pool as specified
    x = np.random.default_rng(8).uniform(size=(8, 16, 16, 1)).astype("float32")
    y = m(x, training=False)
    assert keras.backend.standardize_dtype(y.dtype) == "float32"
    b = m.get_layer("baseline_cnn")
    z = np.stack([keras.ops.convert_to_numpy(b(v, training=False)).astype("float32")
                  for v in (rescale_batch(rescale_batch(x, 0.5), 2.0), rescale_batch(x, 2.0))], 1)
    y = keras.ops.convert_to_numpy(y)
    if pool == "mean":
        np.testing.assert_allclose(y, z.mean(1), atol=2e-3)
    else:  # each row is one branch's logits (not their mean: rows whose branches differ by more than the rounding)
        apart = np.abs(z[:, 0] - z[:, 1]).max(-1) > 0.01
        assert apart.sum() >= 4
        assert np.all(np.abs(y[:, None] - z).max(-1).min(1) < 2e-3)
        assert np.all(np.abs(y - z.mean(1)).max(-1)[apart] > 4e-3)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(pyramid_scales=[]), r"model.params.pyramid_scales must be a non-empty list of distinct positive numbers, got \[\]"),
        (dict(pyramid_scales=[1.0, -0.5]), r"got \[1.0, -0.5\]"),
        (dict(pyramid_scales=[1.0, 1.0]), r"got \[1.0, 1.0\]"),
        (dict(pyramid_scales=0.5), "pyramid_scales must be a list of positive numbers, got 0.5"),
        (dict(pyramid_scales=[1.0], pyramid_pool="sum"),
         r"model.params.pyramid_pool must be one of \('mean', 'max', 'confident'\), got 'sum'"),
        (dict(pyramid_pool="max"), "model.params.pyramid_pool \\('max'\\) needs pyramid_scales"),
        (dict(pyramid_scales=[1.0, 2.0], pyramid_bandlimit="yes"), "model.params.pyramid_bandlimit must be true or false, got 'yes'"),
        (dict(pyramid_bandlimit=True), "model.params.pyramid_bandlimit \\(True\\) needs pyramid_scales"),
        (dict(pyramid_scales=[1.0, 0.5], pyramid_bandlimit=True), r"needs a factor > 1 in pyramid_scales, got \[1.0, 0.5\]"),
    ],
)
def test_bad_pyramid_params_are_config_errors(params, match):
    with pytest.raises(ValueError, match=match):
        models.check_params("baseline_cnn", params)
    with pytest.raises(ValueError, match=match):
        models.build_model("baseline_cnn", (16, 16, 1), 5, **params, **SMALL_CNN)
    with pytest.raises(ValueError, match="unknown key"):
        models.check_params("baseline_cnn", {"pyramid": [1.0]})


@pytest.mark.parametrize("scales, useless", [([1.0, 0.1], "0.1"), ([1.0, 9.0], "9"), ([0.05, 1.0, 20.0], "0.05, 20")])
def test_a_factor_that_leaves_under_2_pixels_of_the_image_is_refused(scales, useless):
    """On a 16-pixel side, 0.1 shrinks the image to 1.6 pixels and 9 shows 1.8 of them: nothing to classify.
    Before: built, trained and exported without a word."""
    with pytest.raises(ValueError, match=rf"pyramid_scales: {useless} on a 16-pixel side leaves under 2 pixels .*"
                                         rf"from 2/16 to 16/2\)"):
        models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=scales, **SMALL_CNN)
    models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[0.125, 1.0, 8.0], **SMALL_CNN)  # the edges
    with pytest.raises(ValueError, match=r"pyramid_scales: 0.125 on a 16-pixel side .*from 2/16 of the largest with "
                                         r"pyramid_bandlimit"):
        models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[0.125, 1.0, 8.0], pyramid_bandlimit=True,
                           **SMALL_CNN)  # through 8x's resolution, 0.125 is 1/64 of it: a quarter pixel


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the SavedModel export is TensorFlow's")
def test_confident_bandlimited_pyramid_exports_its_inference_choice(tmp_path):
    from pipelines.export import export_model, predict_savedmodel

    keras.utils.set_random_seed(7)
    m = models.build_model("baseline_cnn", (16, 16, 1), 5, pyramid_scales=[1.0, 2.0], pyramid_pool="confident",
                           pyramid_bandlimit=True, **SMALL_CNN)
    images = np.random.default_rng(7).integers(0, 256, (6, 16, 16, 1)).astype("uint8")
    out = export_model(m, str(tmp_path / "exports"), "pyramid", check_images=images)
    probs = predict_savedmodel(out, images)["probabilities"]
    want = keras.ops.softmax(m(images.astype("float32") / 255.0, training=False))  # the picked branch, not the mean
    np.testing.assert_allclose(probs, np.asarray(want), atol=1e-5)
