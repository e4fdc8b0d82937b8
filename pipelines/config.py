"""Experiment configs: one YAML file per experiment, loaded into typed, validated objects.

Every section is a dataclass. Loading walks the YAML against the dataclasses'
annotations, so an unknown key, a wrong type or an impossible value is a
`ConfigError` that names the key (`train.epochs`) and the value received.
Command-line overrides use the same dotted keys: `train.epochs=3`. The
`augment.*` sections are the dataclasses of data/augment_settings.py, where
the augmentation's defaults and checks are defined once; the `data` section
is data/options.py's `DataSettings`, shared with the options data/ reads with.

Why dataclasses and not pydantic v2 (installed with MLflow): checked with
pydantic 2.14 on this schema, its message for `epochs: -2` is "1 validation
error for Config / train.epochs / Input should be greater than or equal to 1
[type=greater_than_equal, input_value=-2, input_type=int] / For further
information visit ...", so a custom formatter is needed to print
`train.epochs: must be at least 1 (got -2)`; its default lax mode accepts
`mixed_precision: "yes"` and `epochs: 2.0`, so strict mode plus exceptions
would be needed; and the cross-field checks (tune ranges, model params) stay
hand-written either way. The walker below is about 80 lines, and data/ shares
the augmentation settings without depending on pydantic.
"""

from __future__ import annotations

import ast
import contextvars
import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from data.augment_settings import OPERATIONS, ElasticSettings, FlipSettings, RotationSettings, ScaleSettings, TranslationSettings
from data.options import DataSettings, SyntheticSettings
from data.sources import get_source, local_path, source_usage
from pipelines.typed import (  # noqa: F401
    ConfigError,
    UniqueKeyLoader,
    _check,
    _fail,
    _set_dotted,
    build,
    dump,
    flatten,
    parse_overrides,
)


# Off while `--print-config` loads a config: the model registry's check imports Keras (seconds); the job checks it.
_CHECK_MODEL = contextvars.ContextVar("check_model", default=True)


def _choice(path: str, value, choices):
    _check(value in choices, path, value, f"must be one of {list(choices)}")


# ----------------------------------------------------------------------------- sections


SyntheticConfig = SyntheticSettings  # the `data.synthetic` section (data/options.py)


@dataclass
class DataConfig(DataSettings):
    """Where images come from, how they are read (data/streaming.py) and how they are batched.

    Every key, its default and its check are `data.options.DataSettings`', defined once and shared
    with the `DataOptions` the data is opened with; `source` is checked here against the registry of
    data/sources/, whose names the error lists.
    """

    def validate(self, p):
        try:
            get_source(self.source)
        except ValueError:
            _fail(f"{p}.source", self.source, f"must be {source_usage('`')}")
        super().validate(p)


@dataclass
class AugmentConfig:
    """Training-split augmentation; never part of the exported model."""

    flip: FlipSettings = field(default_factory=FlipSettings)
    translation: TranslationSettings = field(default_factory=TranslationSettings)
    rotation: RotationSettings = field(default_factory=RotationSettings)
    elastic: ElasticSettings = field(default_factory=ElasticSettings)
    scale: ScaleSettings = field(default_factory=ScaleSettings)

    def sections(self) -> dict[str, dict]:
        """The operations as the plain dicts `data.augment.build_augmentation` takes."""
        return {k: dataclasses.asdict(getattr(self, k)) for k in OPERATIONS}


@dataclass
class ModelConfig:
    name: str = "baseline_cnn"
    params: dict = field(default_factory=dict)  # keyword arguments of the registered builder

    def validate(self, p):
        if not _CHECK_MODEL.get():
            return
        import models

        try:
            models.get_spec(self.name)  # keras_app:<Name> is resolved here, not listed
        except ValueError as e:
            if str(self.name).startswith("keras_app:"):  # what is wrong with <Name>: keras_app.py says
                _fail(f"{p}.name", self.name, str(e))
            _fail(f"{p}.name", self.name, f"unknown model; available: {models.available_models()} or keras_app:<Name>")
        try:
            models.check_params(self.name, self.params)
        except ValueError as e:
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
    xla: bool = False  # jit_compile the train step on TensorFlow (refused on torch: slower); JAX always jits it
    distribution: str = "auto"  # auto | none | mirrored | data_parallel (pipelines/distribute.py)
    # Across processes (JAX): a peer silent this long is declared dead and the others stop (JAX's default 100 s).
    heartbeat_timeout_s: int = 100
    run_dir: str | None = None  # default: runs/<name>-<timestamp>; an existing one resumes
    runs_root: str = "runs"
    verbose: str = "auto"  # Keras fit verbosity 0 | 1 | 2; auto: the bar on a terminal, one line per epoch otherwise
    # After training, batch norms' moving statistics re-estimated on this many training batches (0: off; one process)
    precise_bn_batches: int = 50

    def validate(self, p):
        _check(self.epochs >= 1, f"{p}.epochs", self.epochs, "must be at least 1")
        _check(self.learning_rate > 0, f"{p}.learning_rate", self.learning_rate, "must be > 0")
        _choice(f"{p}.optimizer", self.optimizer, ("adam", "adamw", "sgd"))
        _check(self.weight_decay >= 0, f"{p}.weight_decay", self.weight_decay, "must be >= 0")
        _choice(f"{p}.lr_schedule", self.lr_schedule, ("constant", "cosine"))
        _choice(f"{p}.verbose", self.verbose, ("auto", "0", "1", "2"))
        _choice(f"{p}.distribution", self.distribution, ("auto", "none", "mirrored", "data_parallel"))
        _check(self.heartbeat_timeout_s >= 1, f"{p}.heartbeat_timeout_s", self.heartbeat_timeout_s, "must be at least 1")
        _check(self.precise_bn_batches >= 0, f"{p}.precise_bn_batches", self.precise_bn_batches, "must be >= 0")


@dataclass
class TrackingConfig:
    uri: str | None = None  # default: $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db
    experiment: str | None = None  # default: the config's name
    register_model: bool = True
    registered_model_name: str | None = None  # default: the config's name


NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _check_name(where: str, value) -> None:
    """A run, export or model name: a folder under exports/ and runs/, an MLflow model, a serving URL's part."""
    _check(isinstance(value, str) and NAME.fullmatch(value) is not None, where, value,
           "must be letters, digits, '_', '.' and '-', starting with a letter, digit or '_'")


@dataclass
class ExportConfig:
    enabled: bool = True
    dir: str = "exports"  # TF Serving layout: <dir>/<name>/<version>/saved_model.pb
    name: str | None = None  # default: the config's name
    # The reloaded SavedModel must reproduce the in-memory model's probabilities on the test split
    # within tolerance + rtol * p (float32 recomputed with another batch size differs by ~1e-5).
    tolerance: float = 1e-4
    rtol: float = 1e-3
    min_test_accuracy: float | None = None  # publish only at or above this (default: twice chance, at most halfway to 1)
    # Refuse a version this far below the newest published one, both measured on this run's test images; null: off.
    max_accuracy_drop: float | None = 0.05
    # A new version must take the same input shape and classes as the newest one of its name (else an error
    # before training); true allows a change (clients of the old signature then break).
    allow_new_signature: bool = False
    # Publish the model rewritten in stock Keras layers (models.to_plain: group convolutions as Conv2D with their
    # dense kernels, batch norm folded), checked against the unconverted model; harmonic layers are refused.
    plain: bool = False

    def validate(self, p):
        if self.name is not None:
            _check_name(f"{p}.name", self.name)
        _check(self.tolerance > 0, f"{p}.tolerance", self.tolerance, "must be > 0")
        _check(self.rtol >= 0, f"{p}.rtol", self.rtol, "must be >= 0")
        if self.min_test_accuracy is not None:
            _check(0 <= self.min_test_accuracy <= 1, f"{p}.min_test_accuracy", self.min_test_accuracy, "must be in [0, 1]")
        if self.max_accuracy_drop is not None:
            _check(0 <= self.max_accuracy_drop <= 1, f"{p}.max_accuracy_drop", self.max_accuracy_drop, "must be in [0, 1]")


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
    scale_factors: list[float] = field(default_factory=lambda: [0.5, 0.7, 1.0, 1.4, 2.0])  # the scale curve
    equivariance_images: int = 8  # test images fed to each harmonic, group or scale layer's equivariance check
    batch_size: int = 256
    seed: int = 0

    def validate(self, p):
        _check(self.max_images >= 1, f"{p}.max_images", self.max_images, "must be at least 1")
        _check(1 <= self.rotation_step <= 360, f"{p}.rotation_step", self.rotation_step, "must be in [1, 360] degrees")
        _check(self.shift_range >= 0, f"{p}.shift_range", self.shift_range, "must be >= 0")
        _check(all(a >= 0 for a in self.elastic_alphas), f"{p}.elastic_alphas", self.elastic_alphas, "must be >= 0")
        _check(self.elastic_sigma > 0, f"{p}.elastic_sigma", self.elastic_sigma, "must be > 0")
        _check(all(0 < f <= 4 for f in self.scale_factors), f"{p}.scale_factors", self.scale_factors, "must be in (0, 4]")
        _check(self.equivariance_images >= 1, f"{p}.equivariance_images", self.equivariance_images, "must be at least 1")
        _check(self.batch_size >= 1, f"{p}.batch_size", self.batch_size, "must be at least 1")


@dataclass
class TuneConfig:
    """`make tune`: a KerasTuner search over the builder's and the training job's search spaces.

    The spaces are declared in code (`search_space` beside each builder in
    models/, `training_search_space` in pipelines/tune/space.py). The config narrows
    them by hyperparameter name:

        fixed:   {width: 32}                                   # hp.Fixed
        choices: {kernel_size: [3], batch_size: [64, 128]}     # hp.Choice
        ranges:  {learning_rate: {min: 3.0e-4, max: 3.0e-3, sampling: log},
                  dropout: {min: 0.0, max: 0.25, step: 0.125}} # hp.Int / hp.Float

    Names the spaces do not declare are errors (checked by pipelines/tune/space.py).
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
    name: str = "default"  # of the run, its export and MLflow model: letters, digits, _ . - (data.source= sets it)
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
        _check_name("name", self.name)

    # -- conveniences
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return dump(self.to_dict(), sort_keys=False)

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


def name_from_source(source: str) -> str:
    """A run name from a data source: `folder:/data/pets/` -> `pets`, `npz:x/digits.npz` -> `digits`,
    `tfds:mnist` -> `mnist`, `tfrecord:/data/eurosat/*.tfrecord` -> `eurosat` (a source that reads local
    files is named after them: `data.sources.local_path`; `folder:.` after the current folder). Accents are
    dropped (`Forêt` -> `Foret`); a name with no Latin letter or digit left (`folder:/data/森林`) is the
    source's kind and a digest of its path, so that two such folders never share a name."""
    import hashlib
    import unicodedata

    kind, _, rest = source.partition(":")
    path = local_path(source)
    stem = os.path.splitext(os.path.basename(os.path.abspath(path)))[0] if path is not None else rest.rstrip("/")
    stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")
    if not re.search(r"[A-Za-z0-9]", name):
        where = os.path.abspath(path) if path is not None else rest
        name = f"{kind or 'data'}-{hashlib.sha256(where.encode()).hexdigest()[:8]}"
    return name


def config_from_dict(data: dict, overrides: list[str] | None = None, default_name: str = "default",
                     check_model: bool = True) -> Config:
    """The validated config of `data` with `overrides` applied.

    A run whose data is not the config's own (`data.source=` given, `name=`
    not) is named after its data, and its description says what it is: a
    model of a user's folder is never published under the config's name, over
    the config's own model (exports/<name>/, the registered MLflow model).
    `check_model=False` leaves `model.name` and `model.params` unchecked (no Keras import).
    """
    data = dict(data or {})
    data.setdefault("name", default_name)
    def section(key):  # a malformed section is left to `build`, which names it
        return data.get(key) if isinstance(data.get(key), dict) else {}

    own_source = section("data").get("source", DataConfig.source)
    own_model = section("model").get("name", ModelConfig.name)
    own_params = section("model").get("params")
    own_params = set(own_params) if isinstance(own_params, dict) else set()
    parsed = parse_overrides(overrides or [])
    for key, value in parsed:
        _set_dotted(data, key, value)
    new_source = section("data").get("source")
    keys = {key for key, _ in parsed}
    if "data.source" in keys and isinstance(new_source, str) and new_source != own_source:
        config_name, model = data["name"], section("model").get("name", ModelConfig.name)
        if "name" not in keys:  # never the config's own name (its model is not this data's)
            data["name"] = name_from_source(new_source)
            if data["name"] == config_name:
                data["name"] += f"-{new_source.partition(':')[0]}"
        if "description" not in keys:
            data["description"] = f"{model} on {new_source} (from config {config_name!r})"
    token = _CHECK_MODEL.set(check_model)
    try:
        return build(Config, data, "")
    except ConfigError as e:
        unknown = re.match(r"model\.params: unknown key\(s\) (\[.*?\]) for model", str(e))
        if (unknown and "model.params" not in keys and section("model").get("name") != own_model
                and set(ast.literal_eval(unknown.group(1))) <= own_params):  # the config's own keys, a new model
            raise ConfigError(f"{e} (model.name was changed on the command line, and the config's model.params "
                              f"are for its own model: model.params={{}} clears them, then model.params.<key>=... "
                              f"sets the new model's)") from None
        raise
    finally:
        _CHECK_MODEL.reset(token)


def load_config(path: str | os.PathLike, overrides: list[str] | None = None, check_model: bool = True) -> Config:
    """Load, override and validate the YAML experiment config at `path` (see `config_from_dict`)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (got {type(data).__name__})")
    name = os.path.splitext(os.path.basename(path))[0]
    return config_from_dict(data or {}, overrides, default_name=name, check_model=check_model)
