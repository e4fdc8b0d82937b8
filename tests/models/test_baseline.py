"""The baseline builder's argument checks: a bad model.params value is a ValueError that echoes it."""

import pytest

from models import build_model
from tests.models.conftest import assert_float16_training_step


@pytest.mark.parametrize(
    "kwargs,needle",
    [
        ({"filters": 32}, "32"),  # one int, not a list of stages
        ({"filters": []}, r"\[\]"),
        ({"filters": (4, 8), "kernel_sizes": [3]}, r"\[3\]"),  # one entry for two stages
        ({"kernel_sizes": "x"}, "'x'"),
        ({"downsample": "pool"}, "'pool'"),
        ({"conv": "depthwise"}, "'depthwise'"),
        ({"padding": "reflect"}, "'reflect'"),
        ({"head": "attention"}, "'attention'"),
        ({"convs_per_stage": "2"}, "'2'"),
        ({"convs_per_stage": 0}, "0"),
    ],
)
def test_bad_params_raise_value_error_echoing_the_value(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        build_model("baseline_cnn", (16, 16, 1), 3, **kwargs)


@pytest.mark.parametrize(
    "params",
    [
        {"downsample": "blur", "conv": "spatial_separable", "conv_rank": 2},
        {"downsample": "blur_strided", "conv": "separable"},
        {"downsample": "blur_avg", "padding": "circular"},
        {"downsample": "aps", "padding": "circular", "head": "gap", "conv": "spatial_separable"},
    ],
)
def test_trains_under_mixed_float16(mixed_float16, params):
    """Each custom layer runs on float16 activations (forward and backward), logits stay float32."""
    model = build_model("baseline_cnn", (16, 16, 1), 3, filters=(4, 8), convs_per_stage=1, **params)
    assert_float16_training_step(model, (16, 16, 1))
