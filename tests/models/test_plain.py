"""`models.to_plain`: the same outputs from stock Keras layers only, loadable without this project's code.

Every comparison is in inference mode on random inputs, within 1e-5 of the
original's outputs; batch norms get random affine parameters and moving
statistics taken from a batch, so that folding them is exercised on outputs
of order one.
"""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import models
from layers.group.lifting_conv import LiftingConv2D
from layers.shift.blurpool import BlurPool2D
from layers.shift.circular_pad import CircularPad2D
from layers.shift.max_blurpool import MaxBlurPool2D
from layers.shift.spatial_separable_conv import SpatialSeparableConv2D
from models.plain import to_plain

SHAPE = (28, 28, 1)
TF = keras.backend.backend() == "tensorflow"


def _images(n=6, shape=SHAPE, seed=0):
    return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype("float32")


def _calibrate(model, x, seed=0):
    """Random gamma and beta for every batch norm, and moving statistics from one training-mode pass on `x`."""
    rng = np.random.default_rng(seed)
    norms = [v for v in model.weights if v.path.endswith(("gamma", "beta"))]
    for v in norms:
        v.assign(rng.uniform(0.5, 1.5, v.shape) if v.path.endswith("gamma") else rng.normal(0, 0.2, v.shape))
    bns = [l for l in _all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0
    model(x, training=True)
    for bn, m in zip(bns, momenta):
        bn.momentum = m


def _all_layers(model):
    return list(model._flatten_layers(include_self=False, recursive=True))


def _out(model, x):
    return keras.ops.convert_to_numpy(model(x, training=False))


def assert_stock(model):
    """Every layer a class of keras.layers (no nested model, nothing of this project)."""
    for layer in model.layers:
        module = type(layer).__module__
        assert module.startswith("keras.src.layers."), f"{layer.name}: {type(layer).__name__} from {module}"
        assert not isinstance(layer, keras.Model), layer.name


def assert_same(plain, model, x, atol=1e-5):
    expected = _out(model, x)
    assert np.abs(expected).max() > 1e-3  # not a vacuous comparison
    np.testing.assert_allclose(_out(plain, x), expected, rtol=0, atol=atol)


GCNN_CASES = {
    "default": {},
    "pooling_blur": {"pooling": "blur"},
    "pooling_max": {"pooling": "max"},
    "c4_pixel_blur5_mean": {"group_order": 4, "pooling": "blur", "blur_size": 5, "group_pool": "mean",
                            "filters": [4, 6], "kernel_size": 3},
    "d4_restricted_to_c4": {"group": "D4", "filters": [3, 4, 4], "kernel_size": 3, "restrict_to": "C4",
                            "restrict_stage": 1},
    "d4_residual_stem_pool_restricted": {"group": "D4", "block": "residual", "filters": [3, 6, 6], "kernel_size": 3,
                                         "stem_pool": True, "pooling": "max", "restrict_to": "D1",
                                         "restrict_stage": 2},
}


@pytest.mark.parametrize("case", list(GCNN_CASES))
def test_gcnn_same_outputs_stock_layers_only(case):
    keras.utils.set_random_seed(0)
    model = models.build_model("gcnn", SHAPE, 10, **GCNN_CASES[case])
    x = _images()
    _calibrate(model, x)
    plain = models.to_plain(model)
    assert_stock(plain)
    assert_same(plain, model, _images(seed=1))
    convs = [l for l in plain.layers if isinstance(l, keras.layers.Conv2D)]
    assert len(convs) == sum(isinstance(l, LiftingConv2D) or type(l).__name__ == "GroupConv2D" for l in model.layers)
    assert not any(isinstance(l, keras.layers.Reshape) and len(l.output.shape) == 5 for l in plain.layers)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in plain.layers)  # folded
    assert all(not l.trainable for l in convs)  # the frozen dense kernels


def test_gcnn_unfolded_batch_norm_same_outputs():
    keras.utils.set_random_seed(1)
    model = models.build_model("gcnn", SHAPE, 10, pooling="blur")
    _calibrate(model, _images())
    plain = to_plain(model, fold_batch_norm=False)
    assert_stock(plain)
    assert sum(isinstance(l, keras.layers.BatchNormalization) for l in plain.layers) == 6
    assert_same(plain, model, _images(seed=2))


def test_dihedral_group_and_restriction_convert():
    """D4 layers; a restriction read by batch norm and pooling (its channel order made by a 1x1 permutation)."""
    from layers.group.group_batch_norm import GroupBatchNormalization
    from layers.group.group_conv import GroupConv2D
    from layers.group.group_pooling import GroupPooling
    from layers.group.group_restriction import GroupRestriction

    keras.utils.set_random_seed(2)
    inputs = keras.Input((12, 12, 2))
    y = LiftingConv2D(3, 3, group="D4", name="lift")(inputs)
    y = GroupBatchNormalization(activation="relu", name="bn0")(y)
    y = GroupConv2D(4, 3, group="D4", padding="valid", name="gconv")(y)  # [.., 8, 4]
    r = GroupRestriction("D4", "C4", name="restrict")(y)  # [.., 4, 8], channels reordered
    r = GroupBatchNormalization(activation="relu", name="bn_r")(r)
    r = keras.layers.Add(name="add")([r, r])
    pooled = [GroupPooling("mean", name="rpool")(r), GroupPooling("max", name="gpool")(y)]
    outputs = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(p) for p in pooled])
    model = keras.Model(inputs, outputs)
    x = _images(4, (12, 12, 2))
    _calibrate(model, x)
    plain = to_plain(model)
    assert_stock(plain)
    assert [l.name for l in plain.layers if l.name.endswith("_order")] == ["add_order"]
    assert_same(plain, model, _images(4, (12, 12, 2), seed=3))


def test_shift_invariance_layers_same_outputs():
    """Reflect, zero and circular blur padding, MaxBlurPool2D, CircularPad2D and SpatialSeparableConv2D."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((15, 14, 3))
    branches = [
        BlurPool2D(3, strides=2, padding="reflect")(inputs),
        BlurPool2D(5, strides=1, padding="reflect")(inputs),
        BlurPool2D(4, strides=2, padding="zero")(inputs),
        BlurPool2D(3, strides=3, padding="circular")(inputs),
        BlurPool2D(1, strides=2)(inputs),
        MaxBlurPool2D(3, strides=2, padding="reflect")(inputs),
        MaxBlurPool2D(5, strides=2, padding="circular")(inputs),
        SpatialSeparableConv2D(4, 5, rank=2, strides=2, padding="same")(inputs),
        SpatialSeparableConv2D(4, 3, rank=1, padding="circular")(inputs),
        SpatialSeparableConv2D(4, 3, rank=3, strides=2, padding="valid")(inputs),
        keras.layers.Conv2D(2, 3, padding="valid")(CircularPad2D(((1, 2), (0, 3)))(inputs)),
    ]
    outputs = [keras.layers.GlobalAveragePooling2D()(b) for b in branches]
    model = keras.Model(inputs, keras.layers.Concatenate()(outputs))
    plain = to_plain(model)
    assert_stock(plain)
    x = np.random.default_rng(4).normal(size=(3, 15, 14, 3)).astype("float32")
    assert_same(plain, model, x)


def test_plain_keras_model_comes_back_equal():
    keras.utils.set_random_seed(4)
    inner = keras.Sequential([keras.layers.Dense(8, activation="relu", name="inner_dense"),
                              keras.layers.Dropout(0.3, name="inner_drop")], name="inner")
    inputs = keras.Input(SHAPE, name="image")
    y = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    y = keras.layers.BatchNormalization(name="bn")(y)
    y = keras.layers.MaxPooling2D(name="pool")(y)
    y = inner(keras.layers.Flatten(name="flat")(y))
    model = keras.Model(inputs, keras.layers.Dense(3, name="head")(y), name="plain_cnn")
    _calibrate(model, _images())
    plain = to_plain(model)
    assert_stock(plain)
    assert [type(l) for l in plain.layers] == [type(l) for l in model.layers[:-2]] + [
        keras.layers.Dense, keras.layers.Dropout, keras.layers.Dense]  # the nested Sequential inlined
    for a, b in zip(plain.weights, [w for w in model.weights]):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
    assert plain.get_layer("conv") is not model.get_layer("conv")  # copies, not shared
    assert_same(plain, model, _images(seed=5), atol=1e-6)


def test_inference_wrapper_is_inlined():
    """The export's wrapper (Rescaling, the model nested, Softmax) comes out flat and stock."""
    from pipelines.export import inference_model

    keras.utils.set_random_seed(5)
    model = models.build_model("gcnn", SHAPE, 10, filters=[4, 8], group_order=4)
    _calibrate(model, _images())
    infer = inference_model(model)
    plain = to_plain(infer)
    assert_stock(plain)
    assert_same(plain, infer, 255 * _images(seed=6))


def test_sesn_converts():
    keras.utils.set_random_seed(6)
    model = models.build_model("sesn", SHAPE, 10, filters=[4, 6], kernel_size=5, interscale=2, dense_units=8)
    _calibrate(model, _images())
    plain = to_plain(model)
    assert_stock(plain)
    assert_same(plain, model, _images(seed=7))


@pytest.mark.parametrize("name, params, layer, why", [
    ("hnet", {"filters": [2, 2], "convs_per_stage": 1}, "Harmonic", "magnitude nonlinearities"),
    ("baseline_cnn", {"filters": [4], "downsample": "aps", "padding": "circular", "head": "gap"},
     "AdaptivePolyphaseSampling2D", "picks the sampling phase"),
    ("baseline_cnn", {"filters": [4], "invariant": {"group": "C4"}}, "GroupOrbit", "orbit over transformed copies"),
])
def test_layers_without_a_stock_form_are_named(name, params, layer, why):
    model = models.build_model(name, (16, 16, 1), 3, **params)
    with pytest.raises(ValueError, match=rf"to_plain: layer '[^']+' \({layer}\w*, [\w.]+\) cannot be converted.*{why}"):
        to_plain(model)


LOADER = """
import sys
import keras
import numpy as np
x, expected = np.load("x.npy"), np.load("expected.npy")
model = keras.saving.load_model("plain.keras")
got = keras.ops.convert_to_numpy(model(x, training=False))
assert np.abs(got - expected).max() <= 1e-5, np.abs(got - expected).max()
if len(sys.argv) > 1:
    import tensorflow as tf
    saved = tf.saved_model.load("saved")  # held: the restored variables live as long as it
    served = saved.serve(tf.constant(x)).numpy()
    assert np.abs(served - expected).max() <= 1e-5, np.abs(served - expected).max()
project = sorted(m for m in sys.modules if m.split(".")[0] in ("layers", "models", "pipelines", "data"))
assert not project, project
for name in ("layers", "models"):
    try:
        __import__(name)
    except ModuleNotFoundError:
        continue
    raise AssertionError(f"{name} is importable: the check does not prove anything")
print("loaded", len(model.layers), "layers")
"""


@pytest.mark.skipif(keras.backend.backend() == "torch", reason="Keras' SavedModel export takes TensorFlow or JAX")
def test_keras_file_and_savedmodel_load_without_project_code(tmp_path):
    keras.utils.set_random_seed(7)
    model = models.build_model("gcnn", SHAPE, 10, pooling="blur", filters=[4, 8])
    _calibrate(model, _images())
    plain = to_plain(model)
    x = _images(seed=8)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "expected.npy", _out(model, x))
    plain.save(tmp_path / "plain.keras")
    plain.export(str(tmp_path / "saved"), verbose=False)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    (tmp_path / "load.py").write_text(LOADER)
    done = subprocess.run([sys.executable, "load.py", "savedmodel"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "loaded" in done.stdout


@pytest.mark.skipif(not TF, reason="the export's signatures are TensorFlow's")
def test_export_plain_publishes_the_converted_model(tmp_path):
    from pipelines.errors import UserError
    from pipelines.export import export_model, predict_savedmodel

    keras.utils.set_random_seed(8)
    model = models.build_model("gcnn", SHAPE, 10, filters=[4, 8], group_order=4)
    _calibrate(model, _images())
    images = (255 * _images(8, seed=9)).astype("uint8")
    report = {}
    path = export_model(model, str(tmp_path), "g", check_images=images, plain=True, report=report)
    assert report["ok"] and report["max_abs_diff"] < 1e-5
    probs = keras.ops.convert_to_numpy(keras.ops.softmax(model(images.astype("float32") / 255.0, training=False)))
    np.testing.assert_allclose(predict_savedmodel(path, images)["probabilities"], probs, atol=1e-5)

    hnet = models.build_model("hnet", (16, 16, 1), 3, filters=[2, 2], convs_per_stage=1)
    with pytest.raises(UserError, match="export.plain: to_plain: layer"):
        export_model(hnet, str(tmp_path), "h", plain=True)
    assert not os.path.exists(tmp_path / "h" / "1")
