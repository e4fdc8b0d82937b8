"""Experiment configs: one YAML file per experiment, loaded into typed, validated objects.

Every section is a dataclass. Loading walks the YAML against the dataclasses'
annotations, so an unknown key, a wrong type or an impossible value is a
`ConfigError` that names the key (`train.epochs`) and the value received.
Command-line overrides use the same dotted keys: `train.epochs=3`.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config the user wrote is wrong; the message names the key and value."""


def _fail(path: str, value, why: str):
    raise ConfigError(f"{path}: {why} (got {value!r})")


def _check(cond: bool, path: str, value, why: str):
    if not cond:
        _fail(path, value, why)


def _choice(path: str, value, choices):
    _check(value in choices, path, value, f"must be one of {list(choices)}")


# ----------------------------------------------------------------------------- sections


@dataclass
class SyntheticConfig:
    """Size of the embedded synthetic digits dataset (source `synthetic`)."""

    train_size: int = 12000
    test_size: int = 2000

    def validate(self, p):
        _check(self.train_size >= 10, f"{p}.train_size", self.train_size, "must be at least 10")
        _check(self.test_size >= 10, f"{p}.test_size", self.test_size, "must be at least 10")


@dataclass
class DataConfig:
    """Where images come from and how they are batched.

    source: `synthetic`, `npz:<path>`, `folder:<path>` or `tfds:<name>`.
    """

    source: str = "synthetic"
    data_dir: str | None = None  # tfds data_dir
    download: bool = False  # tfds only; off so that no run hangs on the network
    validation_fraction: float = 0.1  # carved from train when the source has no validation split
    image_size: list[int] | None = None  # [H, W] to resize `folder:` images to
    batch_size: int = 128
    seed: int = 0
    cache_dir: str = ".cache"
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)

    def validate(self, p):
        ok = self.source == "synthetic" or any(
            self.source.startswith(k) and len(self.source) > len(k) for k in ("npz:", "folder:", "tfds:")
        )
        _check(ok, f"{p}.source", self.source, "must be `synthetic`, `npz:<path>`, `folder:<path>` or `tfds:<name>`")
        _check(0.0 < self.validation_fraction < 1.0, f"{p}.validation_fraction", self.validation_fraction, "must be in (0, 1)")
        _check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "must be at least 1")
        if self.image_size is not None:
            _check(len(self.image_size) == 2 and min(self.image_size) >= 1, f"{p}.image_size", self.image_size, "must be [height, width]")


@dataclass
class TranslationConfig:
    max: float = 0.0  # maximum shift; a fraction of the image side or pixels (see units)
    units: str = "fraction"  # fraction | pixels
    fill_mode: str = "constant"  # constant | reflect | wrap | nearest
    probability: float = 1.0

    def validate(self, p):
        _choice(f"{p}.units", self.units, ("fraction", "pixels"))
        _check(self.max >= 0, f"{p}.max", self.max, "must be >= 0")
        if self.units == "fraction":
            _check(self.max < 1, f"{p}.max", self.max, "a fraction must be < 1")
        _choice(f"{p}.fill_mode", self.fill_mode, ("constant", "reflect", "wrap", "nearest"))
        _check(0 <= self.probability <= 1, f"{p}.probability", self.probability, "must be in [0, 1]")


@dataclass
class RotationConfig:
    max_degrees: float = 0.0  # angles drawn from [-max, max]; 180 is the full circle
    fill_mode: str = "constant"  # constant | reflect | wrap | nearest
    probability: float = 1.0

    def validate(self, p):
        _check(0 <= self.max_degrees <= 180, f"{p}.max_degrees", self.max_degrees, "must be in [0, 180]")
        _choice(f"{p}.fill_mode", self.fill_mode, ("constant", "reflect", "wrap", "nearest"))
        _check(0 <= self.probability <= 1, f"{p}.probability", self.probability, "must be in [0, 1]")


@dataclass
class ElasticConfig:
    """Simard, Steinkraus & Platt 2003; their MNIST setting is alpha=34, sigma=4."""

    alpha: float = 0.0  # displacement scale in pixels; 0 turns the warp off
    sigma: float = 4.0  # Gaussian smoothing of the displacement field, pixels
    probability: float = 1.0

    def validate(self, p):
        _check(self.alpha >= 0, f"{p}.alpha", self.alpha, "must be >= 0")
        _check(self.sigma > 0, f"{p}.sigma", self.sigma, "must be > 0")
        _check(0 <= self.probability <= 1, f"{p}.probability", self.probability, "must be in [0, 1]")


@dataclass
class AugmentConfig:
    """Training-split augmentation; never part of the exported model."""

    translation: TranslationConfig = field(default_factory=TranslationConfig)
    rotation: RotationConfig = field(default_factory=RotationConfig)
    elastic: ElasticConfig = field(default_factory=ElasticConfig)

    def sections(self) -> dict[str, dict]:
        """The operations as the plain dicts `data.augment.build_augmentation` takes."""
        return {k: dataclasses.asdict(getattr(self, k)) for k in ("translation", "rotation", "elastic")}


@dataclass
class ModelConfig:
    name: str = "baseline_cnn"
    params: dict = field(default_factory=dict)  # keyword arguments of the registered builder

    def validate(self, p):
        import models

        try:
            models.check_params(self.name, self.params)
        except ValueError as e:
            if self.name not in models.available_models():
                _fail(f"{p}.name", self.name, f"unknown model; available: {models.available_models()}")
            raise ConfigError(str(e)) from None


@dataclass
class TrainConfig:
    epochs: int = 5
    learning_rate: float = 1e-3
    optimizer: str = "adam"  # adam | adamw | sgd
    weight_decay: float = 0.0  # adamw only
    lr_schedule: str = "cosine"  # constant | cosine
    seed: int = 0
    mixed_precision: bool = False  # mixed_float16; useful on GPUs
    xla: bool = False  # jit_compile the train step
    run_dir: str | None = None  # default: runs/<name>-<timestamp>; an existing one resumes
    runs_root: str = "runs"
    verbose: str = "auto"  # Keras fit verbosity: auto | 0 | 1 | 2

    def validate(self, p):
        _check(self.epochs >= 1, f"{p}.epochs", self.epochs, "must be at least 1")
        _check(self.learning_rate > 0, f"{p}.learning_rate", self.learning_rate, "must be > 0")
        _choice(f"{p}.optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        _check(self.weight_decay >= 0, f"{p}.weight_decay", self.weight_decay, "must be >= 0")
        _choice(f"{p}.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _choice(f"{p}.verbose", self.verbose, ("auto", "0", "1", "2"))


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db
    experiment: str | None = None  # default: the config's name
    register_model: bool = True
    registered_model_name: str | None = None  # default: the config's name


@dataclass
class ExportConfig:
    enabled: bool = True
    dir: str = "exports"  # TF Serving layout: <dir>/<name>/<version>/saved_model.pb
    name: str | None = None  # default: the config's name
    tolerance: float = 1e-5  # max |reloaded - in-memory| probability difference on the test split

    def validate(self, p):
        _check(self.tolerance > 0, f"{p}.tolerance", self.tolerance, "must be > 0")


@dataclass
class EvaluateConfig:
    """The invariance evaluation (pipelines/evaluate.py) of `make evaluate` and the end of `make train`."""

    enabled: bool = True  # run the invariance evaluation at the end of `make train`
    max_images: int = 2000  # evaluate on at most this many test images (a seeded subset)
    rotation_step: int = 15  # rotation curve at 0, step, ..., < 360 degrees
    shift_range: int = 4  # shifts drawn from [-shift_range, shift_range] pixels per axis
    elastic_alphas: list[float] = field(default_factory=lambda: [0.0, 8.0, 16.0, 34.0])
    elastic_sigma: float = 4.0
    equivariance_angles: list[float] = field(default_factory=lambda: [15.0, 45.0, 90.0])
    equivariance_images: int = 8  # test images fed to each harmonic layer's equivariance check
    batch_size: int = 256
    seed: int = 0

    def validate(self, p):
        _check(self.max_images >= 1, f"{p}.max_images", self.max_images, "must be at least 1")
        _check(1 <= self.rotation_step <= 360, f"{p}.rotation_step", self.rotation_step, "must be in [1, 360] degrees")
        _check(self.shift_range >= 0, f"{p}.shift_range", self.shift_range, "must be >= 0")
        _check(all(a >= 0 for a in self.elastic_alphas), f"{p}.elastic_alphas", self.elastic_alphas, "must be >= 0")
        _check(self.elastic_sigma > 0, f"{p}.elastic_sigma", self.elastic_sigma, "must be > 0")
        _check(self.equivariance_images >= 1, f"{p}.equivariance_images", self.equivariance_images, "must be at least 1")
        _check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "must be at least 1")


@dataclass
class TuneConfig:
    """`make tune`: a KerasTuner search over the builder's and the training job's search spaces.

    The spaces are declared in code (`search_space` beside each builder in
    models/, `training_search_space` in pipelines/tune.py). The config narrows
    them by hyperparameter name:

        fixed:   {width: 32}                                   # hp.Fixed
        choices: {kernel_size: [3], batch_size: [64, 128]}     # hp.Choice
        ranges:  {learning_rate: {min: 3.0e-4, max: 3.0e-3, sampling: log},
                  dropout: {min: 0.0, max: 0.25, step: 0.125}} # hp.Int / hp.Float

    Names the spaces do not declare are errors (checked by pipelines/tune.py).
    """

    algorithm: str = "random"  # random | hyperband | bayesian
    max_trials: int = 10  # random and bayesian; hyperband derives its trials from epochs and factor
    epochs: int = 3  # epochs per trial (hyperband: the most epochs a trial reaches)
    executions_per_trial: int = 1  # trainings per trial from fresh initialisations; the score averages them
    objective: str = "val_accuracy"  # loss | accuracy | val_loss | val_accuracy (direction inferred)
    directory: str | None = None  # default: tuning/<name>; shared by chief and workers
    seed: int = 0
    hyperband_factor: int = 3
    hyperband_iterations: int = 1
    num_initial_points: int | None = None  # bayesian; default 3 x the number of hyperparameters
    fixed: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)
    overwrite: bool = False  # discard the search in `directory` and start afresh
    chief_timeout: float = 600.0  # seconds a worker waits for the chief (distributed search)

    OBJECTIVES = ("loss", "accuracy", "val_loss", "val_accuracy")

    def validate(self, p):
        _choice(f"{p}.algorithm", self.algorithm, ("random", "hyperband", "bayesian"))
        _check(self.max_trials >= 1, f"{p}.max_trials", self.max_trials, "must be at least 1")
        _check(self.epochs >= 1, f"{p}.epochs", self.epochs, "must be at least 1")
        _check(self.executions_per_trial >= 1, f"{p}.executions_per_trial", self.executions_per_trial, "must be at least 1")
        _choice(f"{p}.objective", self.objective, self.OBJECTIVES)
        _check(self.hyperband_factor >= 2, f"{p}.hyperband_factor", self.hyperband_factor, "must be at least 2")
        _check(self.hyperband_iterations >= 1, f"{p}.hyperband_iterations", self.hyperband_iterations, "must be at least 1")
        if self.num_initial_points is not None:
            _check(self.num_initial_points >= 1, f"{p}.num_initial_points", self.num_initial_points, "must be at least 1")
        _check(self.chief_timeout > 0, f"{p}.chief_timeout", self.chief_timeout, "must be > 0 seconds")
        scalar = (bool, int, float, str)
        for name, value in self.fixed.items():
            _check(isinstance(value, scalar), f"{p}.fixed.{name}", value, "must be a number, string or boolean")
        for name, values in self.choices.items():
            where = f"{p}.choices.{name}"
            _check(isinstance(values, list) and len(values) > 0, where, values, "must be a non-empty list of values")
            _check(all(isinstance(v, scalar) for v in values), where, values, "values must be numbers, strings or booleans")
            _check(len(set(values)) == len(values), where, values, "values must be distinct")
        for name, spec in self.ranges.items():
            where = f"{p}.ranges.{name}"
            _check(isinstance(spec, dict), where, spec, "must be a mapping {min, max[, step][, sampling]}")
            unknown = sorted(set(spec) - {"min", "max", "step", "sampling"})
            _check(not unknown, where, spec, f"unknown key(s) {unknown}; a range takes min, max, step, sampling")
            lo, hi = spec.get("min"), spec.get("max")
            number = (int, float)
            ok = all(isinstance(v, number) and not isinstance(v, bool) for v in (lo, hi))
            _check(ok and lo < hi, where, spec, "needs numbers min < max")
            step = spec.get("step")
            if step is not None:
                _check(isinstance(step, number) and not isinstance(step, bool) and step > 0, f"{where}.step", step, "must be > 0")
            sampling = spec.get("sampling", "linear")
            _choice(f"{where}.sampling", sampling, ("linear", "log", "reverse_log"))
            if sampling != "linear":
                _check(lo > 0, f"{where}.min", lo, f"must be > 0 for {sampling} sampling")
        seen = {}
        for section in ("fixed", "choices", "ranges"):
            for name in getattr(self, section):
                _check(name not in seen, f"{p}.{section}.{name}", name, f"is already set in {p}.{seen.get(name)}")
                seen[name] = section


@dataclass
class Config:
    name: str = "default"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)

    def validate(self, p):
        _check(bool(self.name) and "/" not in self.name, "name", self.name, "must be a non-empty name without '/'")

    # -- conveniences
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Flattened `section.key` -> value, for MLflow params."""
        return flatten(self.to_dict())

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or self.name

    @property
    def export_name(self) -> str:
        return self.export.name or self.name

    @property
    def registered_model_name(self) -> str:
        return self.tracking.registered_model_name or self.name


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


# ----------------------------------------------------------------------------- loading


def _coerce(tp, value, path):
    """Check `value` against annotation `tp`; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            _fail(path, value, "must not be empty")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, path)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        _check(isinstance(value, list), path, value, "must be a list")
        return [_coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        _check(isinstance(value, dict), path, value, "must be a mapping")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        _check(isinstance(value, bool), path, value, "must be true or false")
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), path, value, "must be an integer")
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), path, value, "must be a number")
        return float(value)
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and path.endswith("verbose"):
            return str(value)
        _check(isinstance(value, str), path, value, "must be a string")
        return value
    raise TypeError(f"unsupported annotation {tp} at {path}")


def _build(cls, data, path):
    if data is None:
        data = {}
    _check(isinstance(data, dict), path or "config", data, "must be a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            where = f"{path}.{k}" if path else str(k)
            raise ConfigError(f"{where}: unknown key (known keys here: {sorted(names)})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            where = f"{path}.{f.name}" if path else f.name
            kwargs[f.name] = _coerce(hints[f.name], data[f.name], where)
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        obj.validate(path)
    return obj


def _set_dotted(d: dict, dotted: str, value):
    keys = dotted.split(".")
    cur = d
    for k in keys[:-1]:
        nxt = cur.get(k)
        if nxt is None:
            nxt = cur[k] = {}
        if not isinstance(nxt, dict):
            raise ConfigError(f"{dotted}: {k!r} is not a section")
        cur = nxt
    cur[keys[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    out = []
    for item in items:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override {item!r}: expected key=value, for example train.epochs=3")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError:
            value = raw
        # A source such as npz:path parses as a string either way; keep the raw text for strings.
        if isinstance(value, dict):
            value = raw
        out.append((key.strip(), value))
    return out


def config_from_dict(data: dict, overrides: list[str] | None = None, default_name: str = "default") -> Config:
    data = dict(data or {})
    data.setdefault("name", default_name)
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    cfg = _build(Config, data, "")
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Load, override and validate the YAML experiment config at `path`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path) as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
    name = os.path.splitext(os.path.basename(path))[0]
    return config_from_dict(data or {}, overrides, default_name=name)
