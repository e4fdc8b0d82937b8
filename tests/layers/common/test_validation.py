"""layers/common/validation.py: every check returns the value it accepts and echoes the one it refuses."""

import re

import numpy as np
import pytest

from layers.common import validation as check


@pytest.mark.parametrize(
    "call, value, message",
    [
        (lambda v: check.integer(v, "filters", low=1), 0, "filters must be a positive integer, got 0"),
        (lambda v: check.integer(v, "filters", low=1), True, "filters must be a positive integer, got True"),
        (lambda v: check.integer(v, "filters", low=1), 2.0, "filters must be a positive integer, got 2.0"),
        (lambda v: check.integer(v, "kernel_size", low=3, odd=True), 4, "kernel_size must be an odd integer >= 3, got 4"),
        (lambda v: check.integer(v, "k", odd=True, note="centred"), 2, "k must be an odd positive integer (centred), got 2"),
        (lambda v: check.integer(v, "blur_size", low=1, high=7), 8, "blur_size must be an integer from 1 to 7, got 8"),
        (lambda v: check.integer(v, "max_order", low=0), -1, "max_order must be a non-negative integer, got -1"),
        (lambda v: check.integer(v, "strides", low=1, allow_none=True), 0,
         "strides must be a positive integer or None, got 0"),
        (lambda v: check.number(v, "sigma", low=0), -1, "sigma must be a positive number, got -1"),
        (lambda v: check.number(v, "sigma", low=0), float("nan"), "sigma must be a positive number, got nan"),
        (lambda v: check.number(v, "step", low=1), 1.0, "step must be a number > 1, got 1.0"),
        (lambda v: check.number(v, "momentum", low=0, high=1, low_open=False), 1.5,
         "momentum must be in [0, 1), got 1.5"),
        (lambda v: check.number(v, "factor", low=0), False, "factor must be a positive number, got False"),
        (lambda v: check.boolean(v, "use_bias"), 1, "use_bias must be True or False, got 1"),
        (lambda v: check.choice(v, "mode", ("max", "mean")), "sum", "mode must be one of ('max', 'mean'), got 'sum'"),
        (lambda v: check.integers(v, "orders"), [0, 0], "orders must be a non-empty list of distinct integers, got [0, 0]"),
        (lambda v: check.integers(v, "dilations", low=1), [0, 2],
         "dilations must be a non-empty list of distinct positive integers, got [0, 2]"),
        (lambda v: check.integers(v, "orders"), 3, "orders must be a non-empty list of distinct integers, got 3"),
        (lambda v: check.activation(v), "nope", "activation must be a Keras activation, got 'nope'"),
        (lambda v: check.initializer(v, "kernel_initializer"), "nope",
         "kernel_initializer must be a Keras initializer, got 'nope'"),
    ],
)
def test_a_refused_value_is_echoed(call, value, message):
    with pytest.raises(ValueError, match=re.escape(message) + "$"):
        call(value)


def test_accepted_values_come_back_normalised():
    assert check.integer(np.int64(3), "k", low=1) == 3 and type(check.integer(np.int64(3), "k", low=1)) is int
    assert check.integer(None, "n", low=1, allow_none=True) is None
    assert check.number(2, "x", low=0) == 2.0 and isinstance(check.number(2, "x", low=0), float)
    assert check.number(0.0, "m", low=0, high=1, low_open=False) == 0.0
    assert check.integers([1, 2], "d", low=1) == (1, 2)
    assert check.choice("max", "mode", ("max", "mean")) == "max"
    assert check.boolean(False, "b") is False
    assert check.activation(None, allow_none=True) is not None  # Keras' identity
