"""The gcnn builder: registry, size, float32 logits, exact rot90 invariance, options, save/reload, export."""

import os

import keras
import numpy as np
import pytest

import models
from models.gcnn import search_space
from tests.models.conftest import assert_float16_training_step


@pytest.fixture(scope="module")
def gcnn():
    keras.utils.set_random_seed(0)
    return models.build_model("gcnn", (28, 28, 1), 10)


def test_default_is_c8_at_about_hnets_size(gcnn):
    trainable = sum(int(np.prod(w.shape)) for w in gcnn.trainable_weights)
    assert 34_000 <= trainable <= 38_000, trainable
    convs = [l for l in gcnn.layers if type(l).__name__ in ("LiftingConv2D", "GroupConv2D")]
    assert type(convs[0]).__name__ == "LiftingConv2D" and len(convs) == 6
    assert [c.filters for c in convs] == [4, 4, 8, 8, 16, 16]
    assert all(c.group_order == 8 and c.kernel_size == 5 and c.resolved_basis == "harmonic" for c in convs)
    assert [tuple(c.output.shape[1:4]) for c in convs] == [(28, 28, 8)] * 2 + [(14, 14, 8)] * 2 + [(7, 7, 8)] * 2
    bns = [l for l in gcnn.layers if type(l).__name__ == "GroupBatchNormalization"]
    assert len(bns) == 6 and all(b.momentum == 0.9 for b in bns)


def test_output_is_float32_logits(gcnn):
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    y = gcnn(x)
    assert tuple(y.shape) == (2, 10) and keras.backend.standardize_dtype(y.dtype) == "float32"
    assert np.all(np.isfinite(np.asarray(y)))


@pytest.mark.parametrize("params", [{}, {"group_order": 4, "pooling": "max"}, {"group_order": 16, "pooling": "blur"},
                                    {"group_order": 4, "basis": "harmonic", "group_pool": "mean"}])
def test_logits_are_exactly_invariant_to_rot90(params):
    # 28 -> 14 -> 7: every pooled size is even, so the whole network commutes with rot90.
    keras.utils.set_random_seed(1)
    model = models.build_model("gcnn", (28, 28, 1), 10, filters=[3, 4, 5], **params)
    x = np.random.default_rng(1).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    y = np.asarray(model(x, training=False))
    for k in (1, 2, 3):
        yr = np.asarray(model(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max()
    assert np.abs(y[0] - y[1]).max() > 1e-4  # the logits do depend on the image


def test_widths_depth_and_options_are_config():
    m = models.build_model("gcnn", (16, 16, 3), 4, filters=[2, 3], kernel_size=[3, 5], convs_per_stage=1,
                           group_order=4, pooling="blur", blur_size=5, dropout=0.25)
    assert m.output_shape == (None, 4)
    convs = [l for l in m.layers if type(l).__name__ in ("LiftingConv2D", "GroupConv2D")]
    assert [(c.filters, c.kernel_size, c.resolved_basis) for c in convs] == [(2, 3, "pixel"), (3, 5, "pixel")]
    blur = m.get_layer("stage1_pool_blur").get_config()
    assert blur.get("blur_size", blur.get("filter_size")) == 5 and blur["strides"] == 1
    m = models.build_model("gcnn", (None, None, 1), 4, filters=[2, 3], convs_per_stage=1, group_order=4)
    x = np.random.default_rng(0).uniform(0, 1, (2, 12, 12, 1)).astype("float32")
    y = np.asarray(m(x, training=False))
    np.testing.assert_allclose(np.asarray(m(np.ascontiguousarray(np.rot90(x, 1, axes=(1, 2))), training=False)), y,
                               atol=1e-5 * np.abs(y).max())
    with pytest.raises(ValueError, match="unknown key"):
        models.check_params("gcnn", {"widths": [4]})


def test_search_space_gives_valid_params():
    import keras_tuner

    params = search_space(keras_tuner.HyperParameters())
    models.check_params("gcnn", params)
    m = models.build_model("gcnn", (12, 12, 1), 3, **params)
    assert m.output_shape == (None, 3)


@pytest.mark.parametrize("kwargs,needle", [({"filters": 8}, "8"), ({"filters": []}, r"\[\]"),
                                           ({"kernel_size": ["a", 5, 5]}, "'a'"),
                                           ({"convs_per_stage": 1.5}, "1.5"), ({"group_order": 0}, "0"),
                                           ({"pooling": "aps"}, "'aps'"), ({"blur_size": 2}, "2"),
                                           ({"group_pool": "sum"}, "'sum'"), ({"dropout": 1.0}, "1.0"),
                                           ({"group_order": 8, "basis": "pixel"}, "8"),
                                           ({"bn_momentum": 2}, "2")])
def test_bad_params_raise_value_error_echoing_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        models.build_model("gcnn", (16, 16, 1), 4, **kwargs)


def small_trained_gcnn():
    keras.utils.set_random_seed(2)
    m = models.build_model("gcnn", (12, 12, 1), 3, filters=[2, 3], convs_per_stage=1, pooling="blur")
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (16, 12, 12, 1)).astype("float32")
    m.fit(x, rng.integers(0, 3, 16), epochs=1, batch_size=8, verbose=0)
    return m, x


def test_trains_saves_and_reloads(tmp_path):
    m, x = small_trained_gcnn()
    path = os.path.join(tmp_path, "gcnn.keras")
    m.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(again(x, training=False), m(x, training=False), atol=1e-5)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the SavedModel export is TensorFlow's")
def test_exports_a_savedmodel(tmp_path):
    from pipelines.export import export_model, predict_savedmodel

    m, _ = small_trained_gcnn()
    images = np.random.default_rng(3).integers(0, 256, (4, 12, 12, 1)).astype("uint8")
    out = export_model(m, str(tmp_path / "exports"), "gcnn", check_images=images)
    probs = predict_savedmodel(out, images)["probabilities"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("group_order", [4, 8])
def test_trains_under_mixed_float16(mixed_float16, group_order):
    """The training job's `train.mixed_precision: true` sets this global policy (restored after)."""
    m = models.build_model("gcnn", (12, 12, 1), 3, filters=[2, 3], convs_per_stage=1, group_order=group_order,
                           pooling="blur")
    assert m.get_layer("stage0_gconv0").compute_dtype == "float16"
    assert_float16_training_step(m, (12, 12, 1))
