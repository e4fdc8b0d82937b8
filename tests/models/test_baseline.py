"""The baseline builder's argument checks: a bad model.params value is a ValueError that echoes it."""

import pytest

from models import build_model


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
