"""Registry from model name to builder (and the builder's KerasTuner search space).

A builder is a function `build(input_shape, num_classes, **params) -> keras.Model`
whose keyword arguments are the model's config (`model.params` in the YAML). Its
search space is a function `space(hp) -> dict` of builder params drawn from a
`keras_tuner.HyperParameters`, kept in the builder's own module.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import keras


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., keras.Model]
    search_space: Callable | None = None

    def params(self) -> dict[str, inspect.Parameter]:
        """The builder's configurable keyword arguments and their defaults."""
        sig = inspect.signature(self.builder)
        return {
            n: p
            for n, p in sig.parameters.items()
            if n not in ("input_shape", "num_classes") and p.kind is p.KEYWORD_ONLY
        }


_REGISTRY: dict[str, ModelSpec] = {}

# Taken by every builder: `pyramid_scales: [1.0, 2.0]` (and `pyramid_pool: mean | max | confident`,
# `pyramid_bandlimit: true | false`) wraps the built model in an input pyramid (models/pyramid.py).
PYRAMID_PARAMS = ("pyramid_scales", "pyramid_pool", "pyramid_bandlimit")
WRAPPER_PARAMS = (*PYRAMID_PARAMS, "invariant")  # taken by every builder: models/pyramid.py, models/invariant.py


def register(name: str, search_space: Callable | None = None):
    """Decorator: register `builder` under `name`. Builder params must be keyword-only."""

    def wrap(builder):
        if name in _REGISTRY and _REGISTRY[name].builder is not builder:
            raise ValueError(f"model name {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, builder, search_space)
        return builder

    return wrap


def available_models() -> list[str]:
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    if isinstance(name, str) and name.startswith("keras_app:"):  # keras.applications backbone + fresh head
        from models.keras_app import builder_for

        return ModelSpec(name, builder_for(name))
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; available: {', '.join(available_models())}, or keras_app:<Name> "
                         f"(a keras.applications backbone)")
    return _REGISTRY[name]


def check_params(name: str, params: dict) -> None:
    """Raise ValueError naming the key if `params` holds a key the builder does not take."""
    known = get_spec(name).params()
    unknown = sorted(set(params) - set(known) - set(WRAPPER_PARAMS))
    if unknown:
        import difflib

        takes = sorted(set(known) | set(WRAPPER_PARAMS))
        close = {k: difflib.get_close_matches(k, takes, n=1, cutoff=0.6) for k in unknown}
        hint = "; ".join(f"{k}: did you mean {c[0]}?" for k, c in close.items() if c)
        raise ValueError(
            f"model.params: unknown key(s) {unknown} for model {name!r}{(' (' + hint + ')') if hint else ''}; "
            f"it takes {sorted(known)}, and as every builder {', '.join(WRAPPER_PARAMS)}"
        )
    if params.get("invariant") is not None:
        from layers.invariance._options import check_invariant

        try:
            check_invariant(params["invariant"])
        except ValueError as e:
            raise ValueError(f"model.params.{e}") from None
    if any(params.get(k) is not None for k in PYRAMID_PARAMS):
        from models.pyramid import check_pyramid

        if params.get("pyramid_scales") is None:
            key = next(k for k in PYRAMID_PARAMS if params.get(k) is not None)
            raise ValueError(f"model.params.{key} ({params[key]!r}) needs pyramid_scales")
        try:
            check_pyramid(params["pyramid_scales"], params.get("pyramid_pool"), params.get("pyramid_bandlimit"))
        except ValueError as e:
            raise ValueError(f"model.params.{e}") from None


def build_model(name: str, input_shape, num_classes: int, **params) -> keras.Model:
    """Build the registered model `name` for inputs of `input_shape` (H, W, C)."""
    check_params(name, params)
    params = dict(params)
    scales, pool = params.pop("pyramid_scales", None), params.pop("pyramid_pool", None)
    bandlimit = params.pop("pyramid_bandlimit", None)
    invariant_to = params.pop("invariant", None)
    model = get_spec(name).builder(input_shape=tuple(input_shape), num_classes=int(num_classes), **params)
    if scales is not None:
        from models.pyramid import pyramid

        model = pyramid(model, scales, pool=pool, bandlimit=bandlimit)
    if invariant_to is not None:  # outermost: the rescalings commute with rot90 and mirrors of square images
        from layers.invariance._options import check_invariant
        from models.invariant import invariant

        model = invariant(model, **check_invariant(invariant_to))
    return model
