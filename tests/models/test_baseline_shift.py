"""The baseline builder's shift-invariance options: aps + circular padding is exactly circular-shift invariant."""

import keras
import numpy as np
import pytest

from models import build_model
from models.baseline import CONV_KINDS, DOWNSAMPLE_KINDS

SIZE = 16


def _model(downsample, conv="standard", **params):
    keras.utils.set_random_seed(0)
    return build_model(
        "baseline_cnn", (SIZE, SIZE, 1), 5, filters=(4, 8), downsample=downsample, padding="circular",
        conv=conv, head="gap", **params,
    )


def _shifted_logits(model, offsets):
    x = np.random.default_rng(1).standard_normal((3, SIZE, SIZE, 1)).astype("float32")
    base = np.asarray(model(x, training=False))
    return base, [np.asarray(model(np.roll(x, (dy, dx), axis=(1, 2)), training=False)) for dy, dx in offsets]


def _offsets():
    rng = np.random.default_rng(2)
    return [(1, 0), (0, 3), (5, 7)] + [tuple(int(v) for v in rng.integers(1, SIZE, 2)) for _ in range(3)]


@pytest.mark.parametrize("conv", CONV_KINDS)
def test_aps_with_circular_padding_gives_the_same_logits_for_circular_shifts(conv):
    model = _model("aps", conv=conv)
    base, shifted = _shifted_logits(model, _offsets())
    assert np.std(base) > 0
    for logits in shifted:
        np.testing.assert_allclose(logits, base, rtol=1e-4, atol=1e-5)


def test_strided_with_circular_padding_is_not_shift_invariant():
    model = _model("strided")
    base, shifted = _shifted_logits(model, [(1, 0), (0, 3), (5, 7)])
    assert all(not np.allclose(logits, base, rtol=1e-4, atol=1e-5) for logits in shifted)


def test_aps_with_circular_padding_and_a_flatten_head_is_refused():
    with pytest.raises(ValueError, match="head 'gap'"):
        build_model("baseline_cnn", (SIZE, SIZE, 1), 5, downsample="aps", padding="circular", head="flatten")


@pytest.mark.parametrize("downsample", DOWNSAMPLE_KINDS)
def test_every_downsample_kind_halves_each_stage_like_max_pooling(downsample):
    model = build_model("baseline_cnn", (SIZE, SIZE, 1), 5, filters=(4, 8), downsample=downsample, head="flatten",
                        dense_units=0)
    # The side of each stage's output (its last layer: the pool, or the stride-2 conv's ReLU).
    sizes = [[l for l in model.layers if l.name.startswith(f"stage{s}_")][-1].output.shape[1:3] for s in (0, 1)]
    assert sizes == ([(SIZE, SIZE)] * 2 if downsample == "none" else [(SIZE // 2,) * 2, (SIZE // 4,) * 2]), sizes
    flat = model.get_layer("flatten").output.shape[-1]
    expected = 8 * (SIZE * SIZE if downsample == "none" else (SIZE // 4) ** 2)
    assert flat == expected, (downsample, sizes, flat)


def test_search_space_builds_a_model_for_each_downsample_choice():
    import keras_tuner as kt

    from models.baseline import search_space

    for downsample in ("max", "strided", "blur", "blur_strided", "aps"):
        hp = kt.HyperParameters()
        hp.Fixed("downsample", downsample)
        hp.Fixed("padding", "circular")
        params = search_space(hp)
        if downsample == "aps":
            assert params["head"] == "gap"
        model = build_model("baseline_cnn", (SIZE, SIZE, 1), 3, **params)
        assert model.output.shape == (None, 3)
