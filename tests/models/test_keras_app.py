"""`model.name: keras_app:<Name>`: a keras.applications backbone with a fresh head, from the registry.

Shapes and float32 logits on gray images, the anti-aliased backbone, a local
weights file read and surviving the rewrite, the preprocessing inside the
model, and the errors.
"""

import re

import keras
import numpy as np
import pytest

import models
from tests.models.antialias_checks import DOWNSAMPLERS, TF_ONLY, strided, walk

pytestmark = TF_ONLY  # keras.applications backbones: minutes under JAX's eager ops

RNG = np.random.default_rng(0)


def test_keras_app_builds_a_classifier_on_gray_images():
    m = models.build_model("keras_app:MobileNetV2", (28, 28, 1), 4, antialias="blur", blur_size=3)  # MNIST-sized
    assert m.output_shape == (None, 4) and m.output.dtype == "float32"
    backbone = next(l for l in m.layers if isinstance(l, keras.Model))
    assert not [l.name for l in walk(backbone) if strided(l) and not isinstance(l, DOWNSAMPLERS)]
    assert m.get_layer("pad_to_min").output.shape[1:3] == (32, 32)  # the applications' minimum
    y = np.asarray(m(RNG.uniform(0, 1, (2, 28, 28, 1)).astype("float32")))
    assert y.shape == (2, 4) and np.all(np.isfinite(y))
    models.check_params("keras_app:MobileNetV2", {"weights": None, "antialias": "aps", "blur_size": 1})
    with pytest.raises(ValueError, match="unknown key"):
        models.check_params("keras_app:MobileNetV2", {"alpha": 0.5})
    with pytest.raises(ValueError, match="unknown keras.applications model 'ResNet9'"):
        models.check_params("keras_app:ResNet9", {})
    with pytest.raises(ValueError, match="antialias.*'gauss'"):
        models.build_model("keras_app:VGG16", (32, 32, 3), 2, antialias="gauss")
    with pytest.raises(ValueError, match="weights.*missing.weights.h5"):
        models.build_model("keras_app:VGG16", (32, 32, 3), 2, weights="missing.weights.h5")


def test_keras_app_local_weights_survive_the_rewrite(tmp_path):
    keras.utils.set_random_seed(1)
    source = keras.applications.VGG16(weights=None, include_top=False, input_shape=(32, 32, 3))
    path = str(tmp_path / "vgg16_notop.weights.h5")
    source.save_weights(path)
    m = models.build_model("keras_app:VGG16", (32, 32, 3), 2, weights=path, antialias="blur")
    backbone = next(l for l in m.layers if isinstance(l, keras.Model))
    for layer in (l for l in source.layers if l.weights):
        for a, b in zip(layer.get_weights(), backbone.get_layer(layer.name).get_weights()):
            np.testing.assert_array_equal(a, b)
    # preprocessing is inside the model: [0, 1] images in, VGG's caffe preprocessing of [0, 255] applied
    plain = models.build_model("keras_app:VGG16", (32, 32, 3), 2, weights=path)
    x = RNG.uniform(0, 1, (1, 32, 32, 3)).astype("float32")
    features = keras.Model(plain.input, plain.get_layer("gap").output)(x)
    reference = keras.layers.GlobalAveragePooling2D()(source(keras.applications.vgg16.preprocess_input(x * 255.0)))
    np.testing.assert_allclose(np.asarray(features), np.asarray(reference), rtol=1e-5, atol=1e-5)


def test_trainable_backbone_takes_true_or_false_only():
    """`bool("false")` is True: a quoted "false" kept the backbone training."""
    with pytest.raises(ValueError, match=re.escape("trainable_backbone must be true or false, got 'false'")):
        models.build_model("keras_app:MobileNetV2", (32, 32, 3), 3, trainable_backbone="false")
