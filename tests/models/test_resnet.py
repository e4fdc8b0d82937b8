"""The resnet builder: basic blocks, anti-aliasing as config.

ResNet-18's parameter count, both stems, every antialias option meeting the
same structural checks as `models.antialias`, exact circular-shift invariance
of aps + circular padding + GAP (random odd offsets), the rewrite's equality
at blur_size=1, save/reload, the search space, errors.
"""

import keras
import numpy as np
import pytest

import models
from models.resnet import search_space
from tests.models.antialias_checks import (DOWNSAMPLERS, TF_ONLY, assert_rewritten, assert_same_outputs,
                                           randomize_batch_norms, strided, walk)

RNG = np.random.default_rng(0)
SMALL = dict(filters=[4, 8, 8], blocks_per_stage=[1, 1, 1])


def small(antialias="none", padding="same", shape=(16, 16, 3), **kw):
    keras.utils.set_random_seed(0)
    model = models.build_model("resnet", shape, 5, antialias=antialias, padding=padding, **{**SMALL, **kw})
    randomize_batch_norms(model)
    return model


@TF_ONLY
def test_default_is_resnet18():
    m = models.build_model("resnet", (32, 32, 3), 10)
    trainable = sum(int(np.prod(w.shape)) for w in m.trainable_weights)
    assert trainable == 11_173_962  # CIFAR ResNet-18 (3x3 stem), 10 classes
    assert m.get_layer("stem_conv").kernel_size == (3, 3)
    assert m.get_layer("stage3_block1_out").output.shape[1:] == (4, 4, 512)
    assert m.output_shape == (None, 10) and m.output.dtype == "float32"


def test_imagenet_stem_above_64_px():
    m = models.build_model("resnet", (96, 96, 1), 3, filters=[4, 8], blocks_per_stage=1)
    assert m.get_layer("stem_conv").kernel_size == (7, 7)
    assert m.get_layer("stage0_block0_out").output.shape[1:3] == (24, 24)  # 96 -> 48 -> 24
    assert m.get_layer("stage1_block0_out").output.shape[1:3] == (12, 12)


@TF_ONLY
@pytest.mark.parametrize("antialias", ["blur", "aps"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_antialias_options_leave_no_strided_layer(antialias, stem):
    plain, smooth = small(stem=stem, shape=(32, 32, 3)), small(antialias, stem=stem, shape=(32, 32, 3))
    assert smooth.count_params() == plain.count_params()
    assert not [l.name for l in walk(smooth) if strided(l) and not isinstance(l, DOWNSAMPLERS)]
    assert any(isinstance(l, DOWNSAMPLERS) for l in smooth.layers)
    assert smooth.output_shape == plain.output_shape
    if antialias == "aps":  # one sampling per downsampling block, shared by both branches
        assert sum(isinstance(l, DOWNSAMPLERS) for l in smooth.layers) == 2 + (2 if stem == "imagenet" else 0)


@pytest.mark.parametrize("shape", [pytest.param((16, 16, 3), id="cifar_stem"),
                                   pytest.param((96, 96, 3), id="imagenet_stem", marks=TF_ONLY)])
def test_aps_circular_is_exactly_invariant_to_circular_shifts(shape):
    m = small("aps", "circular", shape=shape, blur_size=3, filters=[4, 8], blocks_per_stage=[1, 1])
    x = RNG.uniform(0, 1, (3, *shape)).astype("float32")
    y = np.asarray(m(x, training=False))
    for dy, dx in RNG.integers(0, shape[0], (3, 2)) | 1:  # odd offsets: the hard case for subsampling
        yr = np.asarray(m(np.roll(x, (int(dy), int(dx)), (1, 2)), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * np.abs(y).max(), (dy, dx)
    plain = small("none", "circular", shape=shape, filters=[4, 8], blocks_per_stage=[1, 1])
    y0 = np.asarray(plain(x, training=False))
    assert np.abs(np.asarray(plain(np.roll(x, (1, 1), (1, 2)), training=False)) - y0).max() > 1e-4


@pytest.mark.parametrize("shape,stem,stages,multiple", [((36, 36, 3), "cifar", 4, 8), ((48, 48, 3), "imagenet", 4, 32),
                                                      ((28, 28, 1), "cifar", 4, 8), ((36, 36, 3), "imagenet", 3, 16),
                                                      ((6, 6, 3), "cifar", 3, 4)])
def test_aps_circular_at_a_size_that_does_not_halve_evenly_is_refused_not_built_inexact(shape, stem, stages, multiple):
    """Before: an odd map was zero-padded to even before the polyphase step, and the model lost its exact
    circular-shift invariance without a word (logits moved by 3e-4 to 5e-3 under rolls)."""
    with pytest.raises(ValueError, match=rf"halves \d times, so each image side must be a multiple of {multiple} "):
        small("aps", "circular", shape=shape, stem=stem, filters=[4] * stages, blocks_per_stage=1)
    small("aps", "same", shape=shape, stem=stem, filters=[4] * stages, blocks_per_stage=1)  # not exact: built


@pytest.mark.parametrize("shape,stem,stages", [((4, 4, 3), "cifar", 4), ((32, 32, 3), "imagenet", 5),
                                               ((8, 12, 3), "cifar", 3)])
def test_aps_circular_at_a_power_of_2_or_an_even_enough_size_is_built_and_exact(shape, stem, stages):
    """A side that reaches 1 pixel before the last halving stays exact (a 1-pixel map is shift invariant)."""
    m = small("aps", "circular", shape=shape, stem=stem, filters=[4] * stages, blocks_per_stage=1)
    x = RNG.uniform(0, 1, (2, *shape)).astype("float32")
    y = np.asarray(m(x, training=False))
    for dy, dx in [(1, 1), (shape[0] - 1, 3 % shape[1]), (2, 1)]:
        yr = np.asarray(m(np.roll(x, (dy, dx), (1, 2)), training=False))
        assert np.abs(yr - y).max() <= 1e-5 * max(np.abs(y).max(), 1e-6), (dy, dx)


@pytest.mark.parametrize("padding", ["same", pytest.param("circular", marks=TF_ONLY)])
def test_antialias_rewrite_of_the_plain_resnet(padding):
    plain = small(padding=padding)
    x = RNG.uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    exact = models.antialias(plain, "blur", blur_size=1)
    assert_rewritten(plain, exact)
    assert_same_outputs(plain, exact, x, rtol=1e-6)
    assert_rewritten(plain, models.antialias(plain, "blur", blur_size=3))
    assert_rewritten(plain, models.antialias(plain, "aps", blur_size=3))


def test_save_reload(tmp_path):
    m = small("aps", "circular", blur_size=3)
    x = RNG.uniform(0, 1, (2, 16, 16, 3)).astype("float32")
    m.save(tmp_path / "r.keras")
    np.testing.assert_allclose(np.asarray(keras.models.load_model(tmp_path / "r.keras")(x)), np.asarray(m(x)),
                               rtol=1e-6, atol=1e-6)


def test_search_space_and_errors():
    import keras_tuner

    params = search_space(keras_tuner.HyperParameters())
    models.check_params("resnet", params)
    assert models.build_model("resnet", (16, 16, 3), 3, **params).output_shape == (None, 3)
    with pytest.raises(ValueError, match="unknown key"):
        models.check_params("resnet", {"depth": 18})
    for bad, match in [({"antialias": "gauss"}, "antialias.*'gauss'"), ({"padding": "reflect"}, "padding.*'reflect'"),
                       ({"stem": "big"}, "stem.*'big'"), ({"blur_size": 0}, "blur_size.*0"),
                       ({"filters": []}, "filters"),
                       ({"filters": [4, 8], "blocks_per_stage": [1]}, "blocks_per_stage")]:
        with pytest.raises(ValueError, match=match):
            models.build_model("resnet", (16, 16, 3), 3, **bad)


def test_the_search_space_draws_circular_padding_only_without_aps_unless_fixed():
    """aps with circular padding does not build at sizes that do not halve evenly (28 px, 4 stages): drawn by the
    search, such a trial would fail, and three in a row end it. A fixed `padding: circular` is kept."""
    import keras_tuner

    hp = keras_tuner.HyperParameters()
    hp.Fixed("antialias", "aps")
    for value in ("same", "circular"):  # drawn: same either way under aps
        hp.values["padding"] = value
        assert search_space(hp)["padding"] == "same"
    hp = keras_tuner.HyperParameters()
    hp.Fixed("antialias", "blur")
    hp.Choice("padding", ["circular"])
    assert search_space(hp)["padding"] == "circular"  # without aps: as drawn
    hp = keras_tuner.HyperParameters()
    hp.Fixed("antialias", "aps")
    hp.Fixed("padding", "circular")
    assert search_space(hp)["padding"] == "circular"  # asked for: kept (and refused where it cannot be exact)


def test_narrow_projection_shortcuts_train_and_run_no_strided_1x1_convolution():
    """oneDNN's strided 1x1 backward-weights corrupts memory below 16 input channels (uxlfoundation/oneDNN#6035;
    on an AMX Xeon a resnet with an 8-channel stage died in its first training step, "free(): invalid size"):
    the projection shortcut sees every second pixel and runs its 1x1 convolution at stride 1."""
    model = small(shape=(16, 16, 3))  # stages of 4, 8, 8 channels: two strided projections
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    ones = [c for c in convs if tuple(c.kernel_size) == (1, 1)]
    assert len(ones) == 2 and all(tuple(c.strides) == (1, 1) for c in ones)
    for c in ones:
        sub = model.get_layer(f"{c.name}_subsample")
        assert isinstance(sub, keras.layers.MaxPooling2D) and tuple(sub.pool_size) == (1, 1)
    x = RNG.uniform(0, 1, (8, 16, 16, 3)).astype("float32")
    y = np.arange(8) % 5
    model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [c.get_weights()[0].copy() for c in ones]
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert all(not np.allclose(b, c.get_weights()[0]) for b, c in zip(before, ones))  # their gradients arrived


def test_a_subsampled_1x1_convolution_equals_the_strided_one():
    from models.baseline import apply_conv

    x = keras.Input((9, 9, 8))
    model = keras.Model(x, apply_conv(x, "standard", 6, 1, strides=2, name="proj"))
    stock = keras.layers.Conv2D(6, 1, strides=2, padding="same", use_bias=False)
    stock.build((None, 9, 9, 8))
    stock.set_weights(model.get_layer("proj").get_weights())
    batch = RNG.normal(size=(2, 9, 9, 8)).astype("float32")
    np.testing.assert_allclose(model.predict(batch, verbose=0), keras.ops.convert_to_numpy(stock(batch)),
                               rtol=1e-5, atol=1e-5)


def test_a_resnet_of_other_depth_than_four_stages_needs_only_its_filters():
    """The default of blocks_per_stage was four stages' (2, 2, 2, 2): `filters=[16, 32]` alone was refused."""
    model = models.build_model("resnet", (32, 32, 3), 10, filters=[16, 32])
    assert [la.name for la in model.layers if la.name.endswith("_add")] == [
        "stage0_block0_add", "stage0_block1_add", "stage1_block0_add", "stage1_block1_add"]
    with pytest.raises(ValueError, match="must be positive"):
        models.build_model("resnet", (32, 32, 3), 10, filters=[0])
