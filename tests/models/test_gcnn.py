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


# ---------------------------------------------------------------- dihedral groups, residual blocks, restriction


D4_ELEMENTS = {  # the 8 elements of D4 on [B, H, W, C] images
    "rot90": lambda x: np.rot90(x, 1, axes=(1, 2)), "rot180": lambda x: np.rot90(x, 2, axes=(1, 2)),
    "rot270": lambda x: np.rot90(x, 3, axes=(1, 2)), "flip_lr": lambda x: x[:, :, ::-1],
    "flip_ud": lambda x: x[:, ::-1], "transpose": lambda x: x.transpose(0, 2, 1, 3),
    "anti_transpose": lambda x: x.transpose(0, 2, 1, 3)[:, ::-1, ::-1],
}


def logits(model, x):
    return np.asarray(keras.ops.convert_to_numpy(model(np.ascontiguousarray(x), training=False)), np.float64)


def residual(group, **kw):
    keras.utils.set_random_seed(4)
    params = dict(filters=[2, 3, 4], kernel_size=3, block="residual", blocks_per_stage=[1, 2, 1], stem_pool=True,
                  pooling="blur", group=group)
    params.update(kw)
    return models.build_model("gcnn", (32, 32, 3), 5, **params)  # 32 -> 16 -> 8 -> 4: every pooled size even


@pytest.mark.parametrize("group", ["D4", "D8"])
def test_residual_dihedral_logits_are_exactly_invariant_to_every_rot90_flip_and_transpose(group):
    model = residual(group)
    assert any(type(layer).__name__ == "Add" for layer in model.layers)  # residual sums
    assert model.get_layer("stage1_block0_proj").kernel_size == 1  # width 2 -> 3: projection shortcut
    x = np.random.default_rng(5).uniform(0, 1, (3, 32, 32, 3)).astype("float32")
    y = logits(model, x)
    for name, t in D4_ELEMENTS.items():
        assert np.abs(logits(model, t(x)) - y).max() <= 1e-5 * np.abs(y).max(), name
    assert np.abs(y[0] - y[1]).max() > 1e-4


@pytest.mark.parametrize("pooling", ["blur", "avg", "max"])
def test_dihedral_logits_stay_exactly_invariant_where_a_pooled_side_is_odd(pooling):
    """40 -> 20 -> 10 -> 5 -> 3: the last pool takes an odd side. Before: 2x2 windows left its last row and column
    out, so a turn or a flip pooled other pixels (relative logit changes of 1e-2, and no warning)."""
    keras.utils.set_random_seed(4)
    model = models.build_model("gcnn", (40, 40, 3), 5, filters=[2, 3, 3, 4], kernel_size=3, block="residual",
                               stem_pool=True, pooling=pooling, group="D4")
    assert model.get_layer("stage3_pool").output.shape[1:3] == (3, 3)
    x = np.random.default_rng(5).uniform(0, 1, (3, 40, 40, 3)).astype("float32")
    y = logits(model, x)
    for name, t in D4_ELEMENTS.items():
        assert np.abs(logits(model, t(x)) - y).max() <= 1e-5 * np.abs(y).max(), name
    assert np.abs(y[0] - y[1]).max() > 1e-4


@pytest.mark.parametrize("pooling", ["blur", "max"])  # blur: blur, then the average pooling of "avg"
def test_a_model_built_for_unknown_sizes_pools_as_one_built_for_the_size(pooling):
    """Built for (None, None, 3), the windows are chosen when the model runs: the logits are those of the model
    built for 40 px (an odd pooled side) with the same weights, and as exactly D4-invariant. Before: 2x2 windows
    (and no blur: an error), so a flip pooled other pixels; on TensorFlow also inside a function traced for
    unknown sizes (as a SavedModel's signature), where the parity is only known when it runs."""
    kw = dict(filters=[2, 3, 3, 4], kernel_size=3, block="residual", stem_pool=True, pooling=pooling, group="D4")
    keras.utils.set_random_seed(4)
    fixed = models.build_model("gcnn", (40, 40, 3), 5, **kw)
    free = models.build_model("gcnn", (None, None, 3), 5, **kw)
    free.set_weights(fixed.get_weights())
    x = np.random.default_rng(5).uniform(0, 1, (3, 40, 40, 3)).astype("float32")
    y = logits(fixed, x)
    runs = [lambda t: logits(free, t)]
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda t: free(t, training=False),
                             input_signature=[tf.TensorSpec((None, None, None, 3), tf.float32)])
        runs.append(lambda t: np.asarray(traced(tf.constant(np.ascontiguousarray(t))), np.float64))
    for run in runs:
        np.testing.assert_allclose(run(x), y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
        for name in ("rot90", "flip_lr"):  # they generate D4
            assert np.abs(run(D4_ELEMENTS[name](x)) - y).max() <= 1e-5 * np.abs(y).max(), name
        z = x[:, :36, :36]  # 36 -> 18 -> 9 -> 5 -> 3: odd at the third pool
        assert np.abs(run(np.rot90(z, 1, axes=(1, 2))) - run(z)).max() <= 1e-5 * np.abs(y).max()


def test_cyclic_model_is_not_mirror_invariant_and_widths_are_per_element():
    c4, d4 = residual("C4"), residual("D4")
    x = np.random.default_rng(6).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    y = logits(c4, x)
    assert np.abs(logits(c4, D4_ELEMENTS["rot90"](x)) - y).max() <= 1e-5 * np.abs(y).max()
    assert np.abs(logits(c4, D4_ELEMENTS["flip_lr"](x)) - y).max() > 1e-3 * np.abs(y).max()
    assert d4.get_layer("stem_lift").output.shape[-2:] == (8, 2)  # 2N elements x width
    group_weights = lambda m: sum(int(np.prod(w.shape)) for layer in m.layers if "Conv2D" in type(layer).__name__
                                  and "Lifting" not in type(layer).__name__ for w in layer.weights)
    assert group_weights(d4) == 2 * group_weights(c4)  # J * |G| * w_in * w_out


@pytest.mark.parametrize("to,kept,lost", [("C8", ["rot90", "rot180"], "flip_lr"), ("D1", ["flip_lr"], "rot90"),
                                          ("trivial", [], "rot90")])
def test_restriction_keeps_exactly_the_subgroups_invariance(to, kept, lost):
    model = residual("D8", restrict_to=to, restrict_stage=2)
    restricted = model.get_layer("stage2_restrict")
    assert restricted.output.shape[-2] == {"C8": 8, "D1": 2, "trivial": 1}[to]
    x = np.random.default_rng(7).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    y = logits(model, x)
    for name in kept:
        assert np.abs(logits(model, D4_ELEMENTS[name](x)) - y).max() <= 1e-5 * np.abs(y).max(), name
    assert np.abs(logits(model, D4_ELEMENTS[lost](x)) - y).max() > 1e-3 * np.abs(y).max()


@pytest.mark.parametrize("kwargs,needle", [({"group": "D3x"}, "'D3x'"), ({"group": "D4", "group_order": 8}, "8"),
                                           ({"block": "bottleneck"}, "'bottleneck'"),
                                           ({"block": "residual", "blocks_per_stage": [1, 0]}, r"\[1, 0\]"),
                                           ({"convs_per_stage": True}, "True"),
                                           ({"group": "C8", "restrict_to": "D1", "restrict_stage": 1}, "'D1'"),
                                           ({"group": "D4", "restrict_to": "C4", "restrict_stage": 2}, "2"),
                                           ({"group": "D4", "restrict_to": "C4"}, "None"),
                                           ({"restrict_stage": 1}, "restrict_to"),
                                           ({"block": "residual", "stem_pool": "yes"}, "'yes'")])
def test_bad_group_and_block_params_raise_value_error_echoing_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        models.build_model("gcnn", (16, 16, 3), 4, filters=[2, 3], **kwargs)


def test_restriction_layer_checks():
    from layers.group.group_restriction import GroupRestriction
    from tests.layers.layer_checks import check_layer

    check_layer(lambda: GroupRestriction("D4", "C4"), (2, 5, 5, 8, 3), (2, 5, 5, 4, 6), expects_trainable_weights=False)
    check_layer(lambda: GroupRestriction("D8", "trivial"), (2, 5, 5, 16, 2), (2, 5, 5, 1, 32),
                expects_trainable_weights=False)


def test_residual_d4_trains_under_mixed_float16_saves_reloads_and_exports(mixed_float16, tmp_path):
    m = residual("D4", filters=[2, 3], blocks_per_stage=1)
    assert m.get_layer("stage1_block0_conv1").compute_dtype == "float16"
    assert_float16_training_step(m, (32, 32, 3))
    keras.mixed_precision.set_global_policy("float32")
    m = residual("D4", filters=[2, 3], blocks_per_stage=1)
    x = np.random.default_rng(8).uniform(0, 1, (2, 32, 32, 3)).astype("float32")
    m.save(tmp_path / "d4.keras")
    np.testing.assert_allclose(logits(keras.saving.load_model(tmp_path / "d4.keras"), x), logits(m, x), atol=1e-5)
    if keras.backend.backend() == "tensorflow":
        from pipelines.export import export_model, predict_savedmodel

        images = np.random.default_rng(9).integers(0, 256, (2, 32, 32, 3)).astype("uint8")
        out = export_model(m, str(tmp_path / "exports"), "gcnn_d4", check_images=images)
        assert predict_savedmodel(out, images)["probabilities"].shape == (2, 5)
