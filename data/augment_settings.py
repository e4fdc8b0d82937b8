"""The augmentation settings, defined once: defaults, checks and vocabularies.

`pipelines/config.py` uses these dataclasses as the `augment.*` sections of an
experiment config, and `data/augment.py` builds its layers from them, so a
default or a bound lives in one place. This module imports nothing heavy (no
TensorFlow), so loading a config stays cheap.

Vocabularies, side by side (they are different ideas and keep different names):

- `fill_mode` (augmentation: what a resampled image shows where the source
  pixel lies outside it): `constant` (zeros), `reflect`, `wrap`, `nearest`,
  Keras' `RandomRotation`/`RandomTranslation` vocabulary.
- `padding` (layers: how a convolution or blur extends its input): `same`,
  `valid`, `circular` for convolutions; `reflect`, `zero`, `circular` for
  `BlurPool2D`. See the layers' docstrings.

A check that fails raises `ValueError` whose message starts with the dotted
key and ends with the value received: `rotation.max_degrees: must be in
[0, 180] (got 400.0)`; the config loader prefixes the section (`augment.`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

FILL_MODES = ("constant", "reflect", "wrap", "nearest")


def _check(cond: bool, where: str, value, why: str) -> None:
    if not cond:
        raise ValueError(f"{where}: {why} (got {value!r})")


def _number(where: str, value) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    _check(ok, where, value, "must be a finite number")


def _probability(where: str, value) -> None:
    _number(where, value)
    _check(0.0 <= value <= 1.0, where, value, "must be in [0, 1]")


@dataclass
class TranslationSettings:
    """Shifts drawn uniformly from [-max, max] on each axis independently."""

    max: float = 0.0  # maximum shift; a fraction of the image side or pixels (see units)
    units: str = "fraction"  # fraction | pixels
    fill_mode: str = "constant"  # one of FILL_MODES
    probability: float = 1.0

    @property
    def on(self) -> bool:
        return self.max > 0 and self.probability > 0

    def validate(self, where: str = "translation") -> None:
        _check(self.units in ("fraction", "pixels"), f"{where}.units", self.units, "must be one of ['fraction', 'pixels']")
        _number(f"{where}.max", self.max)
        _check(self.max >= 0, f"{where}.max", self.max, "must be >= 0")
        if self.units == "fraction":
            _check(self.max < 1, f"{where}.max", self.max, "a fraction must be < 1")
        _check(self.fill_mode in FILL_MODES, f"{where}.fill_mode", self.fill_mode, f"must be one of {list(FILL_MODES)}")
        _probability(f"{where}.probability", self.probability)


@dataclass
class RotationSettings:
    """Angles uniform in [-max_degrees, max_degrees], counter-clockwise positive; 180 is the full circle."""

    max_degrees: float = 0.0
    fill_mode: str = "constant"  # one of FILL_MODES
    probability: float = 1.0

    @property
    def on(self) -> bool:
        return self.max_degrees > 0 and self.probability > 0

    def validate(self, where: str = "rotation") -> None:
        _number(f"{where}.max_degrees", self.max_degrees)
        _check(0 <= self.max_degrees <= 180, f"{where}.max_degrees", self.max_degrees, "must be in [0, 180]")
        _check(self.fill_mode in FILL_MODES, f"{where}.fill_mode", self.fill_mode, f"must be one of {list(FILL_MODES)}")
        _probability(f"{where}.probability", self.probability)


@dataclass
class ElasticSettings:
    """Simard, Steinkraus & Platt 2003; their MNIST setting is alpha=34, sigma=4."""

    alpha: float = 0.0  # displacement scale in pixels; 0 turns the warp off
    sigma: float = 4.0  # Gaussian smoothing of the displacement field, pixels
    probability: float = 1.0

    @property
    def on(self) -> bool:
        return self.alpha > 0 and self.probability > 0

    def validate(self, where: str = "elastic") -> None:
        _number(f"{where}.alpha", self.alpha)
        _check(self.alpha >= 0, f"{where}.alpha", self.alpha, "must be >= 0")
        _number(f"{where}.sigma", self.sigma)
        _check(self.sigma > 0, f"{where}.sigma", self.sigma, "must be > 0")
        _probability(f"{where}.probability", self.probability)


@dataclass
class ScaleSettings:
    """Zoom in and out about the centre on the same canvas: each image's factor uniform in [min, max]
    (< 1 shrinks, anti-aliased; > 1 enlarges and crops; data/scale_augment.py)."""

    min: float = 1.0
    max: float = 1.0
    probability: float = 1.0

    @property
    def on(self) -> bool:
        return (self.min != 1.0 or self.max != 1.0) and self.probability > 0

    def validate(self, where: str = "scale") -> None:
        for key in ("min", "max"):
            _number(f"{where}.{key}", getattr(self, key))
            _check(0 < getattr(self, key) <= 4, f"{where}.{key}", getattr(self, key), "must be in (0, 4]")
        _check(self.min <= self.max, f"{where}.min", self.min, f"must be <= {where}.max ({self.max!r})")
        _probability(f"{where}.probability", self.probability)


@dataclass
class FlipSettings:
    """Exact symmetries of the pixel grid, for labels they leave unchanged (no resampling, no blur):
    each image is mirrored left-right and/or top-bottom with probability 1/2 each, and turned by
    0, 90, 180 or 270 degrees with probability 1/4 each (square images). Applied first."""

    horizontal: bool = False  # mirror left-right
    vertical: bool = False  # mirror top-bottom
    rotate90: bool = False  # quarter turns; needs square images

    @property
    def on(self) -> bool:
        return self.horizontal or self.vertical or self.rotate90

    def validate(self, where: str = "flip") -> None:
        for key in ("horizontal", "vertical", "rotate90"):
            _check(isinstance(getattr(self, key), bool), f"{where}.{key}", getattr(self, key), "must be true or false")


SETTINGS = {"flip": FlipSettings, "translation": TranslationSettings, "rotation": RotationSettings, "elastic": ElasticSettings,
            "scale": ScaleSettings}
OPERATIONS = tuple(SETTINGS)


def settings(name: str, value) -> object:
    """The validated settings of operation `name` from a dict (defaults filled), a settings object or None."""
    cls = SETTINGS[name]
    if value is None:
        value = {}
    if isinstance(value, cls):
        value = dataclasses.asdict(value)
    _check(isinstance(value, dict), name, value, "must be a mapping")
    known = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(value) - set(known))
    _check(not unknown, name, value, f"unknown key(s) {unknown}; known: {sorted(known)}")
    out = cls(**value)
    out.validate(name)
    return out
