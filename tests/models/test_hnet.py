"""The hnet builder: registry, size, output, exact rot90 invariance, save/reload and SavedModel export."""

import os
import re

import keras
import numpy as np
import pytest

import models
from models.hnet import search_space
from tests.models.conftest import assert_float16_training_step


@pytest.fixture(scope="module")
def hnet():
    keras.utils.set_random_seed(0)
    return models.build_model("hnet", (28, 28, 1), 10)


def test_default_is_the_papers_network(hnet):
    trainable = sum(int(np.prod(w.shape)) for w in hnet.trainable_weights)
    # the paper reports about 33k parameters for its rotated-MNIST H-Net
    assert 31_000 <= trainable <= 36_000, trainable
    convs = [l for l in hnet.layers if type(l).__name__ == "HarmonicConv2D"]
    assert [c.filters for c in convs] == [8, 8, 16, 16, 32, 32, 10]
    assert all(c.kernel_size == 5 and c.rings == 4 and c.orders == (0, 1) for c in convs)
    assert [c.phase for c in convs] == [True] * 6 + [False]
    assert [tuple(c.output.shape[1:3]) for c in convs] == [(28, 28)] * 2 + [(14, 14)] * 2 + [(7, 7)] * 3
    # moving statistics at momentum 0.9 (Keras' 0.99 lags behind on short runs)
    bns = [l for l in hnet.layers if type(l).__name__ == "HarmonicBatchNormalization"]
    assert len(bns) == 3 and all(b.momentum == 0.9 and b.bn.momentum == 0.9 for b in bns)


def test_output_is_float32_logits(hnet):
    x = np.random.default_rng(0).uniform(0, 1, (2, 28, 28, 1)).astype("float32")
    y = hnet(x)
    assert tuple(y.shape) == (2, 10) and keras.backend.standardize_dtype(y.dtype) == "float32"
    assert np.all(np.isfinite(np.asarray(y)))


def assert_logits_invariant_to_rot90(model, seed):
    x = np.random.default_rng(seed).uniform(0, 1, (3, 28, 28, 1)).astype("float32")
    y = np.asarray(model(x, training=False))
    for k in (1, 2, 3):
        yr = np.asarray(model(np.ascontiguousarray(np.rot90(x, k, axes=(1, 2))), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max()
    # not trivially: the logits do depend on the image
    assert np.abs(y[0] - y[1]).max() > 1e-4


def test_logits_are_exactly_invariant_to_rot90(hnet):
    # 28 -> 14 -> 7: every pooled size is even, so the whole network commutes with rot90.
    assert_logits_invariant_to_rot90(hnet, seed=1)


def test_widths_depth_and_options_are_config():
    m = models.build_model("hnet", (16, 16, 3), 4, filters=[4, 8], convs_per_stage=1, max_order=2, blur_size=3, kernel_size=3)
    assert m.output_shape == (None, 4)
    convs = [l for l in m.layers if type(l).__name__ == "HarmonicConv2D"]
    assert len(convs) == 3 and convs[0].orders == (0, 1, 2)
    with pytest.raises(ValueError, match="unknown key"):
        models.check_params("hnet", {"widths": [4]})
    with pytest.raises(ValueError, match="filters"):
        models.build_model("hnet", (16, 16, 1), 4, filters=[])


def test_dense_readout_is_invariant_and_replaces_the_class_convolution():
    keras.utils.set_random_seed(3)
    m = models.build_model("hnet", (28, 28, 1), 10, readout="dense")
    assert "class_hconv" not in [l.name for l in m.layers]
    assert m.get_layer("classifier").kernel.shape == (32, 10)  # the last stage's 32 magnitudes -> 10 classes
    assert_logits_invariant_to_rot90(m, seed=4)


def test_radial_initializer_reaches_every_harmonic_convolution():
    def radial_std(init):
        keras.utils.set_random_seed(5)
        m = models.build_model("hnet", (28, 28, 1), 10, filters=[16, 16], radial_initializer=init)
        convs = [l for l in m.layers if type(l).__name__ == "HarmonicConv2D"]
        return np.array([np.std(np.asarray(c.radial)) for c in convs])

    # lecun_normal draws with half he_normal's variance: every layer's std shrinks by sqrt(2), the class layer's too
    np.testing.assert_allclose(radial_std("he_normal") / radial_std("lecun_normal"), np.sqrt(2), rtol=0.15)


def test_search_space_gives_valid_params():
    import keras_tuner

    params = search_space(keras_tuner.HyperParameters())
    models.check_params("hnet", params)
    m = models.build_model("hnet", (12, 12, 1), 3, **params)
    assert m.output_shape == (None, 3)


def test_trains_saves_reloads_and_exports(tmp_path):
    from pipelines.export import export_model, predict_savedmodel

    keras.utils.set_random_seed(2)
    m = models.build_model("hnet", (12, 12, 1), 3, filters=[4, 4], convs_per_stage=1)
    m.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, (16, 12, 12, 1)).astype("float32")
    m.fit(x, rng.integers(0, 3, 16), epochs=1, batch_size=8, verbose=0)
    path = os.path.join(tmp_path, "hnet.keras")
    m.save(path)
    again = keras.saving.load_model(path)
    np.testing.assert_allclose(again(x, training=False), m(x, training=False), atol=1e-5)
    images = rng.integers(0, 256, (4, 12, 12, 1)).astype("uint8")
    out = export_model(m, str(tmp_path / "exports"), "hnet", check_images=images)
    probs = predict_savedmodel(out, images)["probabilities"]
    np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,message",
    [({"filters": 8}, "filters must name at least one stage, got 8"),
     ({"kernel_size": ["a", 5, 5]}, "kernel_size must hold int values, got ['a', 5, 5]"),
     ({"convs_per_stage": 1.5}, "convs_per_stage must be an integer >= 1, got 1.5"),
     ({"convs_per_stage": True}, "convs_per_stage must be an integer >= 1, got True"),
     ({"readout": "gap"}, "readout must be 'class_conv' or 'dense', got 'gap'"),
     ({"batch_norm": "maybe"}, "batch_norm must be True or False, got 'maybe'"),
     ({"radial_initializer": "he_normall"}, "radial_initializer: not a Keras initializer: 'he_normall'")],
)
def test_bad_params_raise_value_error_echoing_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        models.build_model("hnet", (16, 16, 1), 4, **kwargs)


def test_trains_under_mixed_float16(mixed_float16):
    """The training job's `train.mixed_precision: true` sets this global policy (restored after)."""
    m = models.build_model("hnet", (12, 12, 1), 3, filters=[4, 4], convs_per_stage=1, blur_size=3)
    assert m.get_layer("stage0_hconv0").compute_dtype == "float16"
    assert_float16_training_step(m, (12, 12, 1))
