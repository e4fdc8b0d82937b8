"""Argument checks of the layers (and the builders): one `ValueError` per bad value, echoing it.

Every check returns the value it accepts, normalised (`int` for an integer
given as a NumPy integer, `float` for a number, a tuple for a list), and
raises `ValueError("<name> must be <what>, got <value!r>")` otherwise, as
Keras' own layers and the house plan's conventions ask (docs/design.md).
Booleans are refused wherever a number is asked for (`True` is an `int` to
Python, never a count here). NumPy only: the module is imported by every
layer and by `models/`.

Example:
    >>> integer(3, "kernel_size", low=3, odd=True)
    3
    >>> integer(4, "kernel_size", low=3, odd=True)
    Traceback (most recent call last):
    ...
    ValueError: kernel_size must be an odd integer >= 3, got 4
"""

from __future__ import annotations

import math

import numpy as np


def is_integer(value) -> bool:
    """An `int` or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value) -> bool:
    """A finite real `int`, `float` or NumPy number, not a bool."""
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and math.isfinite(value))


def _fail(name, what, value, note=None):
    note = f" ({note})" if note else ""
    raise ValueError(f"{name} must be {what}{note}, got {value!r}")


def _integer_words(low, high, odd) -> str:
    if odd:
        return "an odd positive integer" if low in (None, 1) else f"an odd integer >= {low}"
    if high is not None:
        return f"an integer from {0 if low is None else low} to {high}"
    if low == 1:
        return "a positive integer"
    if low == 0:
        return "a non-negative integer"
    return "an integer" if low is None else f"an integer >= {low}"


def integer(value, name, *, low=None, high=None, odd=False, allow_none=False, what=None, note=None):
    """An integer in [low, high] (odd if asked), or None if allowed; returns it as `int`.

    `what` replaces the generated description ("a positive integer", "an odd
    integer >= 3", "an integer from 1 to 7"); `note` is added in parentheses.
    """
    if value is None and allow_none:
        return None
    ok = is_integer(value) and (low is None or value >= low) and (high is None or value <= high) \
        and (not odd or value % 2 == 1)
    if not ok:
        _fail(name, (what or _integer_words(low, high, odd)) + (" or None" if allow_none else ""), value, note)
    return int(value)


def number(value, name, *, low=None, high=None, low_open=True, high_open=True, allow_none=False, what=None,
           note=None):
    """A finite real number in the interval (open ends by default), or None if allowed; returns it as `float`."""
    if value is None and allow_none:
        return None
    ok = is_number(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        if what is None:
            if high is None:
                what = ("a positive number" if low == 0 and low_open
                        else "a number" if low is None else f"a number {'>' if low_open else '>='} {low}")
            else:
                what = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        _fail(name, what + (" or None" if allow_none else ""), value, note)
    return float(value)


def boolean(value, name):
    """True or False (not 0, 1 or a string)."""
    if not isinstance(value, bool):
        _fail(name, "True or False", value)
    return value


def choice(value, name, options, note=None):
    """One of `options` (compared with ==, of the same type: 1 is not True)."""
    if not any(type(value) is type(o) and value == o for o in options):
        _fail(name, f"one of {tuple(options)}", value, note)
    return value


def integers(value, name, *, low=None, distinct=True, allow_empty=False, what=None):
    """A list or tuple of integers (each >= low; distinct; non-empty unless allowed); returns a tuple of `int`."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = list(value)
        ok = all(is_integer(v) and (low is None or v >= low) for v in values) and (allow_empty or values) \
            and (not distinct or len(set(values)) == len(values))
    else:
        ok = False
    if not ok:
        if what is None:
            what = ("a non-empty " if not allow_empty else "a ") + "list of " + ("distinct " if distinct else "") + (
                "positive integers" if low == 1 else "integers" if low is None else f"integers >= {low}")
        _fail(name, what, value)
    return tuple(int(v) for v in values)


def activation(value, name="activation", *, allow_none=False):
    """A Keras activation (name, callable or serialized config; None is the identity); returns the function.

    `allow_none` only says so in the message (Keras takes None as the identity either way).
    """
    import keras  # here, so that models/ may import this module before choosing a backend

    try:
        return keras.activations.get(value)
    except (ValueError, TypeError):
        _fail(name, "a Keras activation" + (" or None" if allow_none else ""), value)


def initializer(value, name):
    """A Keras initializer (name, config or instance); returns the instance."""
    import keras

    try:
        return keras.initializers.get(value)
    except (ValueError, TypeError):
        _fail(name, "a Keras initializer", value)
