"""models.antialias: Zhang's rewrites of any functional model, weights carried over.

Equality at blur_size=1 (TensorFlow's 'same' offsets included), weights and
parameter count kept, no strided layer left outside a blur or polyphase step,
nested models, .keras save/reload and SavedModel export, exact circular-shift
invariance where the construction promises it, the keras.applications
backbones at small sizes, and the errors.
"""

import warnings

import keras
import numpy as np
import pytest
from keras import layers

import models
from models.antialias import same_offset
from tests.models.antialias_checks import (TF_ONLY, assert_rewritten, assert_same_outputs, randomize_batch_norms,
                                           strided, walk)

RNG = np.random.default_rng(0)


def toy(input_shape=(22, 21, 3)):
    """Every kind of strided layer, odd and even sizes, a branch, and a nested Sequential model."""
    keras.utils.set_random_seed(1)
    inner = keras.Sequential([
        keras.Input((6, 6, 8)),
        layers.Conv2D(8, 3, strides=2, padding="same", name="inner_conv"),
        layers.BatchNormalization(name="inner_bn"),
        layers.ReLU(name="inner_relu"),
    ], name="inner")
    x = inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", name="conv_same")(x)          # 22x21 -> 11x11
    x = layers.BatchNormalization(name="bn0")(x)
    x = layers.Activation("relu", name="act0")(x)
    x = layers.ZeroPadding2D(((0, 1), (0, 1)), name="pad1")(x)                       # 12x12
    x = layers.DepthwiseConv2D(3, strides=2, padding="valid", name="dw_valid")(x)   # 5x5
    x = layers.BatchNormalization(name="bn1")(x)
    y = layers.ReLU(6.0, name="relu1")(x)
    z = layers.SeparableConv2D(8, 4, strides=2, padding="same", name="sep_same")(y)  # 3x3: even kernel
    z = layers.UpSampling2D(2, name="up")(z)                                          # 6x6
    y = layers.Cropping2D(((0, 0), (0, 0)), name="noop")(y)
    y = layers.ZeroPadding2D(((1, 0), (1, 0)), name="pad2")(y)                       # 6x6
    x = layers.Concatenate(name="cat")([y, z])                                        # two branches from relu1
    x = layers.Conv2D(8, 1, name="mix")(x)
    x = inner(x)                                                                      # 3x3
    w = layers.ZeroPadding2D(((3, 4), (3, 4)), name="pad3")(x)                        # 10x10
    a = layers.MaxPooling2D(2, name="max2")(w)                                        # 5x5
    b = layers.MaxPooling2D(3, strides=2, padding="same", name="max3")(w)            # 5x5
    c = layers.AveragePooling2D(2, name="avg2")(w)                                    # 5x5
    d = layers.AveragePooling2D(3, strides=2, padding="same", name="avg3")(w)        # 5x5
    x = layers.Add(name="add")([a, b, c, d])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(5, name="logits")(x)
    model = keras.Model(inputs, outputs, name="toy")
    randomize_batch_norms(model)
    return model


@pytest.fixture(scope="module")
def toy_model():
    return toy()


# ----------------------------------------------------------------------------- the rewrite


def test_same_offset_matches_tensorflow():
    # TF pads total // 2 before: stride 2 on an even size samples the stride-1 map at 2i + 1
    assert same_offset(32, 3, 2) == 1 and same_offset(31, 3, 2) == 0 and same_offset(32, 1, 2) == 0
    assert same_offset(32, 7, 2) == 1 and same_offset(10, 4, 2) == 0 and same_offset(9, 4, 3) == 1


def test_blur_size_1_computes_exactly_what_the_original_did(toy_model):
    new = models.antialias(toy_model, "blur", blur_size=1)
    assert_rewritten(toy_model, new)
    x = RNG.uniform(0, 1, (3, 22, 21, 3)).astype("float32")
    assert_same_outputs(toy_model, new, x, rtol=1e-6)


@pytest.mark.parametrize("method", ["blur", "aps"])
def test_rewrite_structure_and_weights(toy_model, method):
    new = models.antialias(toy_model, method, blur_size=3)
    assert_rewritten(toy_model, new)
    assert new.output_shape == toy_model.output_shape
    kinds = {type(l).__name__ for l in walk(new)}
    assert ("MaxBlurPool2D" in kinds) == (method == "blur")
    # Zhang's ConvBlurPool order: the conv at stride 1, then its norm and activation, then the step
    order = [l.name for l in new.layers]
    assert order.index("conv_same") < order.index("bn0") < order.index("act0") < order.index(
        next(n for n in order if n.startswith("conv_same_")))
    # the original is untouched, and training the copy would not change it
    assert toy_model.get_layer("conv_same").strides == (2, 2) and new.get_layer("conv_same").strides == (1, 1)
    assert new.get_layer("conv_same").kernel is not toy_model.get_layer("conv_same").kernel


def test_baseline_max_rewritten_is_the_baseline_blur_variant():
    keras.utils.set_random_seed(3)
    plain = models.build_model("baseline_cnn", (16, 16, 1), 4, filters=[4, 8], downsample="max", dropout=0.0)
    randomize_batch_norms(plain)
    blur = models.build_model("baseline_cnn", (16, 16, 1), 4, filters=[4, 8], downsample="blur", dropout=0.0)
    blur.set_weights(plain.get_weights())
    new = models.antialias(plain, "blur", blur_size=3)
    assert_rewritten(plain, new)
    assert_same_outputs(new, blur, RNG.uniform(0, 1, (2, 16, 16, 1)).astype("float32"), rtol=1e-6)


def test_aps_rewrite_of_a_circular_chain_is_exactly_circular_shift_invariant():
    # circular convs, pointwise layers, polyphase steps and a GAP head: the construction promises exactness
    keras.utils.set_random_seed(4)
    plain = models.build_model("baseline_cnn", (16, 16, 3), 4, filters=[4, 8, 8], downsample="strided",
                               padding="circular", head="gap", dropout=0.0)
    randomize_batch_norms(plain)
    new = models.antialias(plain, "aps", blur_size=3)
    assert_rewritten(plain, new)
    x = RNG.uniform(0, 1, (3, 16, 16, 3)).astype("float32")
    y = np.asarray(new(x, training=False))
    for dy, dx in ((1, 0), (3, 5), (7, 13)):
        yr = np.asarray(new(np.roll(x, (dy, dx), (1, 2)), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max()
    plain_shifted = np.asarray(plain(np.roll(x, (1, 1), (1, 2)), training=False))
    assert np.abs(plain_shifted - np.asarray(plain(x, training=False))).max() > 1e-4  # the plain one is not


def test_hnet_pooling_takes_its_own_blur():
    keras.utils.set_random_seed(5)
    hnet = models.build_model("hnet", (16, 16, 3), 3, filters=[2, 4], convs_per_stage=1, kernel_size=3, n_rings=2)
    x = RNG.uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    assert_same_outputs(hnet, models.antialias(hnet, "blur", blur_size=1), x, rtol=1e-6)
    new = models.antialias(hnet, "blur", blur_size=3)
    pool = new.get_layer("stage1_pool").get_config()
    assert pool.get("blur_size", pool.get("blur")) == 3
    y = np.asarray(new(x, training=False))
    yr = np.asarray(new(np.ascontiguousarray(np.rot90(x, 1, (1, 2))), training=False))
    assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max()  # 16 -> 8 pools evenly: exact rot90 invariance
    with pytest.raises(ValueError, match="stage1_pool.*HarmonicAveragePooling2D"):
        models.antialias(hnet, "aps")


# ----------------------------------------------------------------------------- saving


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the SavedModel export is TensorFlow's")
def test_keras_save_reload_and_savedmodel_export(toy_model, tmp_path):
    import tensorflow as tf

    new = models.antialias(toy_model, "blur", blur_size=3)
    x = RNG.uniform(0, 1, (2, 22, 21, 3)).astype("float32")
    y = np.asarray(new(x, training=False))
    new.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(reloaded(x, training=False)), y, rtol=1e-6, atol=1e-6)
    new.export(str(tmp_path / "saved"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(np.asarray(served.serve(tf.constant(x))), y, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- keras.applications


APPS = [pytest.param("ResNet50", 32, marks=TF_ONLY, id="ResNet50"),
        pytest.param("MobileNetV2", 32, marks=TF_ONLY, id="MobileNetV2"),
        pytest.param("EfficientNetB0", 32, marks=TF_ONLY, id="EfficientNetB0"),
        pytest.param("VGG16", 32, id="VGG16"),  # every backend
        pytest.param("DenseNet121", 32, marks=TF_ONLY, id="DenseNet121")]


@pytest.mark.parametrize("name,size", APPS)
def test_keras_applications(name, size):
    keras.utils.set_random_seed(6)
    base = getattr(keras.applications, name)(weights=None, include_top=False, input_shape=(size, size, 3))
    randomize_batch_norms(base)
    new = models.antialias(base, "blur", blur_size=1)
    assert_rewritten(base, new)
    x = RNG.uniform(0, 255, (1, size, size, 3)).astype("float32")
    assert_same_outputs(base, new, x, rtol=1e-5)
    if name == "MobileNetV2":  # odd maps after correct_pad: polyphase sampling pads them even
        aps = models.antialias(base, "aps", blur_size=3)
        assert_rewritten(base, aps)
        assert aps(x).shape == base(x).shape


def test_nested_backbone_in_a_classifier_is_rewritten(toy_model):
    inputs = keras.Input((22, 21, 3))
    classifier = keras.Model(inputs, layers.Dense(3, name="head")(toy_model(inputs)), name="classifier")
    new = models.antialias(classifier, "blur", blur_size=1)
    assert_rewritten(classifier, new)
    assert isinstance(new.get_layer("toy"), keras.Model) and new.get_layer("toy") is not toy_model
    assert isinstance(new.get_layer("toy").get_layer("inner"), keras.Model)  # two levels down
    assert_same_outputs(classifier, new, RNG.uniform(0, 1, (2, 22, 21, 3)).astype("float32"), rtol=1e-6)


# ----------------------------------------------------------------------------- errors


class Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv = layers.Conv2D(2, 3, strides=2, padding="same")

    def call(self, x):
        return self.conv(x)


class Subsample(layers.Layer):
    def __init__(self, strides=2, **kwargs):
        super().__init__(**kwargs)
        self.strides = strides

    def call(self, x):
        return x[:, :: self.strides, :: self.strides, :]

    def get_config(self):
        return {**super().get_config(), "strides": self.strides}


def test_errors_name_what_cannot_be_rewritten():
    sub = Subclassed(name="my_subclassed")
    sub(np.zeros((1, 8, 8, 1), "float32"))
    with pytest.raises(ValueError, match="my_subclassed.*subclassed"):
        models.antialias(sub)

    inputs = keras.Input((8, 8, 1))
    nested = keras.Model(inputs, layers.Dense(2)(layers.Flatten()(sub(inputs))))
    with pytest.raises(ValueError, match="my_subclassed.*strict=False"):
        models.antialias(nested)

    inputs = keras.Input((8, 8, 1))
    x = Subsample(name="my_subsample")(inputs)
    x = layers.MaxPooling2D(2, name="pool")(x)
    custom = keras.Model(inputs, x)
    with pytest.raises(ValueError, match=r"my_subsample.*Subsample.*: a custom layer with strides \(2,\)"):
        models.antialias(custom)
    inputs = keras.Input((8, 3))  # a stock Keras layer the rewrite does not take: named as Keras', not custom
    conv1d = keras.Model(inputs, layers.Conv1D(4, 3, strides=2, name="c1")(inputs))
    with pytest.raises(ValueError, match=r"'c1' \(Conv1D\): a Keras layer with strides \(2,\)"):
        models.antialias(conv1d)
    with pytest.warns(UserWarning, match="my_subsample"):
        kept = models.antialias(custom, strict=False)
    assert isinstance(kept.get_layer("my_subsample"), Subsample)
    assert type(kept.get_layer("pool")).__name__ == "MaxBlurPool2D"  # the rest is still rewritten

    with pytest.raises(ValueError, match="method.*'gauss'"):
        models.antialias(custom, method="gauss")
    with pytest.raises(ValueError, match="blur_size.*8"):
        models.antialias(custom, blur_size=8)
    with pytest.raises(ValueError, match="keras.Model"):
        models.antialias(layers.Dense(2))


def test_same_padding_needs_static_sizes():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layers.Conv2D(2, 3, strides=2, padding="same", name="conv")(inputs))
    with pytest.raises(ValueError, match="'conv'.*unknown spatial size"):
        models.antialias(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert models.antialias(model, strict=False).get_layer("conv").strides == (2, 2)
    valid = keras.Model(inputs, layers.Conv2D(2, 3, strides=2, padding="valid")(inputs))
    x = RNG.uniform(0, 1, (1, 9, 12, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(models.antialias(valid, blur_size=1)(x)), np.asarray(valid(x)), atol=1e-6)


def test_mixed_precision_policy_is_kept(mixed_float16):
    keras.utils.set_random_seed(8)
    plain = models.build_model("baseline_cnn", (16, 16, 1), 3, filters=[4, 8], downsample="strided", head="gap")
    new = models.antialias(plain, "blur", blur_size=3)
    added = [l for l in new.layers if l.name.endswith("_blurpool")]
    assert added and all(l.dtype_policy.name == "mixed_float16" for l in added)
    y = new(RNG.uniform(0, 1, (2, 16, 16, 1)).astype("float32"), training=False)
    assert keras.backend.standardize_dtype(y.dtype) == "float32" and np.all(np.isfinite(np.asarray(y)))


def test_a_layer_called_twice_is_rewritten_at_each_call():
    keras.utils.set_random_seed(9)
    pool, conv = layers.MaxPooling2D(2, name="pool"), layers.Conv2D(3, 3, strides=2, padding="same", name="conv")
    a, b = keras.Input((8, 8, 3), name="a"), keras.Input((8, 8, 3), name="b")
    model = keras.Model([a, b], layers.Add(name="add")([conv(pool(a)), conv(pool(b))]))
    new = models.antialias(model, "blur", blur_size=1)
    assert new.count_params() == model.count_params()
    assert sorted(l.name for l in new.layers if type(l).__name__ == "MaxBlurPool2D") == ["pool", "pool_2"]
    x = [RNG.uniform(0, 1, (2, 8, 8, 3)).astype("float32") for _ in range(2)]
    assert_same_outputs(model, new, x, rtol=1e-6)
