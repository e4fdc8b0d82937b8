"""The baseline builder's argument checks: a bad model.params value is a ValueError that echoes it."""

import re
from decimal import Decimal

import keras
import numpy as np
import pytest

from models import build_model
from tests.models.conftest import assert_float16_training_step


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"filters": 32}, "filters must name at least one stage, got 32"),  # one int, not a list of stages
        ({"filters": []}, "filters must name at least one stage, got []"),
        ({"filters": (4, 8), "kernel_size": [3]}, "kernel_size must have one entry per stage (2), got [3]"),
        ({"kernel_size": "x"}, "kernel_size must hold int values, got 'x'"),
        ({"filters": [6.7, 8]}, "filters must hold int values, got [6.7, 8]"),  # was cut to 6 without a word
        ({"filters": [True, 8]}, "filters must hold int values, got [True, 8]"),
        ({"filters": [np.float32(6.5), 8]}, "filters must hold int values, got [np.float32(6.5), 8]"),
        ({"filters": [np.True_, 8]}, "filters must hold int values, got [np.True_, 8]"),
        ({"filters": [Decimal("6.7"), 8]}, "filters must hold int values, got [Decimal('6.7'), 8]"),
        ({"downsample": "pool"}, "downsample must be one of ('max', 'strided', 'avg', 'blur', 'blur_strided', "
                                 "'blur_avg', 'aps', 'none'), got 'pool'"),
        ({"conv": "depthwise"}, "conv must be one of ('standard', 'separable', 'spatial_separable'), got 'depthwise'"),
        ({"padding": "reflect"}, "padding must be one of ('same', 'circular'), got 'reflect'"),
        ({"head": "attention"}, "head must be 'flatten' or 'gap', got 'attention'"),
        ({"convs_per_stage": "2"}, "convs_per_stage must be an integer >= 1, got '2'"),
        ({"convs_per_stage": 0}, "convs_per_stage must be an integer >= 1, got 0"),
        ({"convs_per_stage": True}, "convs_per_stage must be an integer >= 1, got True"),
        ({"batch_norm": "false"}, "batch_norm must be True or False, got 'false'"),  # was taken as true
    ],
)
def test_bad_params_raise_value_error_echoing_the_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model("baseline_cnn", (16, 16, 1), 3, **kwargs)


def test_whole_widths_of_numpy_or_float_type_are_taken():
    model = build_model("baseline_cnn", (16, 16, 1), 3, filters=[np.float64(4.0), np.int64(8)], kernel_size=3.0)
    assert [la.filters for la in model.layers if isinstance(la, keras.layers.Conv2D)][:2] == [4, 4]


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
