"""The search space of `make tune`: the builder's and the training job's, narrowed by the config."""

from __future__ import annotations

import keras_tuner as kt

from pipelines.config import Config, ConfigError, _set_dotted, config_from_dict

# ----------------------------------------------------------------------------- the search space


def training_search_space(hp) -> dict:
    """KerasTuner search space of the training job: dotted config keys -> values drawn from `hp`."""
    return {
        "train.learning_rate": hp.Float("learning_rate", 1e-4, 1e-2, sampling="log"),
        "data.batch_size": hp.Choice("batch_size", [32, 64, 128]),
        "augment.translation.max": hp.Int("translation_pixels", 0, 4),
        "augment.translation.units": "pixels",
        "augment.rotation.max_degrees": hp.Float("rotation_degrees", 0.0, 30.0, step=10.0),
        "augment.elastic.alpha": hp.Float("elastic_alpha", 0.0, 32.0, step=8.0),
    }


def _model_space(model_name: str):
    import models

    return models.get_spec(model_name).search_space or (lambda hp: {})


def declared_space(model_name: str):
    """Every hyperparameter the model's and the training's spaces declare (at their defaults)."""
    model_hp, train_hp = kt.HyperParameters(), kt.HyperParameters()
    _model_space(model_name)(model_hp)
    training_search_space(train_hp)
    clash = sorted({h.name for h in model_hp.space} & {h.name for h in train_hp.space})
    if clash:
        raise ValueError(f"model {model_name!r} declares hyperparameter(s) {clash} that the training space also declares")
    both = kt.HyperParameters()
    both.merge(model_hp.space)
    both.merge(train_hp.space)
    return both


def _kind(h) -> type:
    """The Python type of a declared hyperparameter's values."""
    if isinstance(h, kt.engine.hyperparameters.Choice):
        return type(h.values[0])
    if isinstance(h, kt.engine.hyperparameters.Fixed):
        return type(h.value)
    if isinstance(h, kt.engine.hyperparameters.Boolean):
        return bool
    if isinstance(h, kt.engine.hyperparameters.Int):
        return int
    return float


def _cast(value, kind: type, where: str):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(f"{where}: must be of type {kind.__name__}, like the values the search space declares (got {value!r})")
    return value


def narrowed_space(cfg: Config):
    """`HyperParameters` holding the config's `tune.fixed`, `tune.choices` and `tune.ranges`.

    The tuner is given it with `tune_new_entries=True`: these names take the
    config's space, every other declared name keeps the space from the code.
    """
    declared = {h.name: h for h in declared_space(cfg.model.name).space}
    hp = kt.HyperParameters()
    t = cfg.tune
    for section in ("fixed", "choices", "ranges"):
        for name, value in getattr(t, section).items():
            where = f"tune.{section}.{name}"
            if name not in declared:
                raise ConfigError(
                    f"{where}: unknown hyperparameter; the search space of model {cfg.model.name!r} "
                    f"and of training declares {sorted(declared)}"
                )
            kind = _kind(declared[name])
            if section == "fixed":
                hp.Fixed(name, _cast(value, kind, where))
            elif section == "choices":
                hp.Choice(name, [_cast(v, kind, where) for v in value])
            else:
                if kind not in (int, float):
                    raise ConfigError(f"{where}: {name} takes {kind.__name__} values, which have no range; use tune.choices")
                lo, hi, step = value["min"], value["max"], value.get("step")
                sampling = value.get("sampling", "linear")
                if kind is int:
                    if not all(isinstance(v, int) for v in (lo, hi, step or 1)):
                        raise ConfigError(f"{where}: {name} takes integers; min, max and step must be integers (got {value!r})")
                    hp.Int(name, lo, hi, step=step, sampling=sampling)
                else:
                    hp.Float(name, float(lo), float(hi), step=step, sampling=sampling)
    return hp


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def trial_config(cfg: Config, hp) -> Config:
    """`cfg` with the builder params and training values drawn from `hp` (validated)."""
    d = cfg.to_dict()
    d["model"]["params"] = {**d["model"]["params"], **{k: _plain(v) for k, v in _model_space(cfg.model.name)(hp).items()}}
    for key, value in training_search_space(hp).items():
        _set_dotted(d, key, _plain(value))
    return config_from_dict(d)


def best_config_dict(cfg: Config, hp) -> dict:
    """The complete config that trains the trial `hp` with the experiment's own budget."""
    d = trial_config(cfg, hp).to_dict()
    d.pop("tune", None)
    d["name"] = f"{cfg.name}_tuned"
    d["description"] = (f"{cfg.description} " if cfg.description else "") + f"(tuned by make tune, {cfg.tune.algorithm})"
    d["train"]["run_dir"] = None
    return d


