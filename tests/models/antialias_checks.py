"""Checks shared by the anti-aliasing tests (test_antialias.py, test_resnet.py)."""

import keras
import numpy as np
import pytest
from keras import layers

from layers.shift.blurpool import BlurPool2D
from layers.shift.polyphase import AdaptivePolyphaseSampling2D

DOWNSAMPLERS = (BlurPool2D, AdaptivePolyphaseSampling2D)  # MaxBlurPool2D is a BlurPool2D

# make test runs tests/models again on JAX, whose eager ops make big models slow to build and run
# (minutes for the keras.applications); the rewrite itself is backend-independent Keras, so the
# JAX pass keeps the small models and one application, and these run on TensorFlow only.
TF_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                             reason="big model: TensorFlow pass only (see antialias_checks.TF_ONLY)")


def walk(model):
    """Every layer of `model`, nested models' layers included (and the nested models)."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from walk(layer)


def randomize_batch_norms(model, seed=0):
    """Random BN statistics and affine parameters, so that outputs are far from degenerate."""
    rng = np.random.default_rng(seed)
    for layer in walk(model):
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0] if layer.gamma is not None else layer.moving_mean.shape[0]
            values = []
            for w in layer.weights:
                name = w.path.rsplit("/", 1)[-1]
                if name == "moving_variance" or name == "gamma":
                    values.append(rng.uniform(0.5, 1.5, c).astype("float32"))
                else:
                    values.append(rng.normal(0, 0.2, c).astype("float32"))
            layer.set_weights(values)


def strided(layer):
    s = getattr(layer, "strides", None)
    s = (s, s) if isinstance(s, int) else s
    return s is not None and max(s) > 1


def assert_rewritten(original, new):
    """Same parameters; every original weight unchanged under its layer's name; no strided layer left
    outside a blur/polyphase step; one step per strided layer of the original."""
    assert new.count_params() == original.count_params()
    assert new is not original
    _assert_weights_carried(original, new)
    left = [l.name for l in walk(new) if strided(l) and not isinstance(l, DOWNSAMPLERS)]
    assert not left, f"strided layers left: {left}"
    before = sum(strided(l) and not isinstance(l, DOWNSAMPLERS) for l in walk(original))
    steps = lambda m: sum(isinstance(l, DOWNSAMPLERS) for l in walk(m))  # noqa: E731
    after = steps(new) - steps(original)
    assert after == before > 0


def _assert_weights_carried(original, new):
    for layer in original.layers:
        copy = new.get_layer(layer.name)
        assert copy is not layer, f"{layer.name} is shared with the original"
        if isinstance(layer, keras.Model):
            _assert_weights_carried(layer, copy)
            continue
        old_w, new_w = layer.get_weights(), copy.get_weights()
        assert len(old_w) == len(new_w), layer.name
        for a, b in zip(old_w, new_w):
            np.testing.assert_array_equal(a, b, err_msg=layer.name)


def assert_same_outputs(a, b, x, rtol=1e-5):
    ya, yb = np.asarray(a(x, training=False)), np.asarray(b(x, training=False))
    assert ya.shape == yb.shape
    scale = np.abs(ya).max()
    assert scale > 1e-3, "degenerate outputs: the comparison would prove nothing"
    assert np.abs(ya - yb).max() <= rtol * scale, (np.abs(ya - yb).max(), scale)
