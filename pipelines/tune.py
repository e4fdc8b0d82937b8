"""`make tune`: a KerasTuner search over the experiment's builder and training, tracked in MLflow.

    python -m pipelines.tune --config pipelines/configs/default.yaml [key=value ...]

The search space is code: the builder's `search_space(hp)` beside it in
models/ (builder params) and `training_search_space(hp)` here (learning rate,
batch size, augmentation strengths). The config's `tune` section picks the
algorithm (`random`, `hyperband`, `bayesian`) and its budget, and narrows the
space by hyperparameter name (`tune.fixed`, `tune.choices`, `tune.ranges`).

Everything a search keeps lives in its directory (`tune.directory`, default
tuning/<name>):

    config.yaml       the resolved config of the search (a restart must match it)
    parent_run.json   the MLflow parent run every trial is nested under
    search/           KerasTuner's project: oracle.json, trial_<id>/...
    best.yaml         the best trial as a complete config: `make train CONFIG=<it>`

Starting the same command again continues a search that was killed: finished
trials are neither repeated nor logged again; the trial that was running is
run again (its unfinished MLflow run is deleted and replaced). A larger
`tune.max_trials` extends a finished search.

Distributed search (KerasTuner's own mechanism): with KERASTUNER_ORACLE_IP,
KERASTUNER_ORACLE_PORT and KERASTUNER_TUNER_ID set, the same command is the
chief (a tuner id containing `chief`: it serves the oracle, owns the parent
run and writes best.yaml) or a worker (runs trials). All of them need the same
config, a shared `tune.directory` and a tracking store they can all reach.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass

import keras_tuner as kt
import yaml

from pipelines.cli import config_parser, interrupt_on_sigterm, run_main
from pipelines.config import Config, ConfigError, _set_dotted, config_from_dict, flatten, load_config
from pipelines.errors import UserError
from pipelines.tracking import MLflowEpochLogger, logged_steps

# Keys a restarted search may change; any other difference from the saved config is an error.
RESUMABLE_CHANGES = ("tune.max_trials", "tune.overwrite", "tune.chief_timeout", "train.verbose")


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


# ----------------------------------------------------------------------------- MLflow


class SearchRuns:
    """The MLflow runs of one search: a parent run, and one nested run per trial.

    Written through `MlflowClient` with explicit run ids, so that the trials of
    a worker process never depend on an active-run stack.
    """

    FILE = "parent_run.json"

    def __init__(self, parent_run_id: str, experiment_id: str):
        import mlflow

        self.client = mlflow.MlflowClient()
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id

    # -- parent
    @classmethod
    def open(cls, cfg: Config, directory: str, uri: str) -> "SearchRuns":
        """The chief's (or a lone process's) parent run: reopened if the directory names one, else created."""
        import mlflow

        path = os.path.join(directory, cls.FILE)
        client = mlflow.MlflowClient()
        if os.path.isfile(path):
            with open(path) as fh:
                saved = json.load(fh)
            try:
                run = client.get_run(saved["run_id"])
            except mlflow.exceptions.MlflowException:
                run = None
            if run is None or run.info.lifecycle_stage != "active":
                raise UserError(
                    f"{path} names MLflow run {saved['run_id']}, which the tracking store {uri} does not hold "
                    "(or it was deleted); use the store the search started with, or tune.overwrite=true"
                )
            if run.info.status != "RUNNING":
                client.update_run(run.info.run_id, status="RUNNING")
            print(f"MLflow parent run {run.info.run_id} (resumed) in {uri}")
            return cls(run.info.run_id, run.info.experiment_id)

        experiment = mlflow.get_experiment_by_name(cfg.experiment_name)
        run = client.create_run(
            experiment.experiment_id,
            run_name=f"tune-{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={"job": "tune", "tune.algorithm": cfg.tune.algorithm, "tune.directory": os.path.abspath(directory)},
        )
        from mlflow.entities import Param

        params = [Param(k, str("" if v is None else v)[:6000]) for k, v in cfg.flat().items()]
        for i in range(0, len(params), 100):
            client.log_batch(run.info.run_id, params=params[i : i + 100])
        client.log_artifact(run.info.run_id, os.path.join(directory, "config.yaml"))
        _write_json(path, {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": uri})
        print(f"MLflow parent run {run.info.run_id} (new) in {uri}")
        return cls(run.info.run_id, run.info.experiment_id)

    @classmethod
    def join(cls, directory: str) -> "SearchRuns":
        """A worker's view: the parent run the chief wrote to the shared directory."""
        with open(os.path.join(directory, cls.FILE)) as fh:
            saved = json.load(fh)
        return cls(saved["run_id"], saved["experiment_id"])

    def end(self, status: str):
        self.client.set_terminated(self.parent_run_id, status=status)

    def record_best(self, trial, objective: str, completed: int, best_path: str):
        """The best trial's values (tags `best.<name>`, mutable as an extended search improves) and score."""
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        tags = [RunTag("best.trial_id", str(trial.trial_id))]
        tags += [RunTag(f"best.{k}", str(v)) for k, v in trial.hyperparameters.values.items()]
        metrics = [Metric(f"best_{objective}", float(trial.score), now, completed), Metric("trials_completed", completed, now, completed)]
        self.client.log_batch(self.parent_run_id, metrics=metrics, tags=tags)
        self.client.log_artifact(self.parent_run_id, best_path)

    # -- trials
    def trial_runs(self, trial_id: str | None = None):
        """The active nested runs of this search (of one trial when `trial_id` is given)."""
        query = f"tags.mlflow.parentRunId = '{self.parent_run_id}'"
        if trial_id is not None:
            query += f" and tags.trial_id = '{trial_id}'"
        return self.client.search_runs([self.experiment_id], filter_string=query, max_results=50000)

    def start_trial(self, trial, tuner_id: str, trial_cfg: Config) -> str:
        """A nested run for `trial`, replacing the unfinished run of an earlier attempt at it."""
        from mlflow.entities import Param
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID

        earlier = self.trial_runs(trial.trial_id)
        for r in earlier:  # the trial is run again: its earlier, interrupted record goes
            self.client.delete_run(r.info.run_id)
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial_{trial.trial_id}",
            tags={MLFLOW_PARENT_RUN_ID: self.parent_run_id, "trial_id": str(trial.trial_id),
                  "tuner_id": tuner_id, "attempt": str(len(earlier) + 1)},
        )
        params = {k: v for k, v in trial.hyperparameters.values.items()}
        params.update({f"model.params.{k}": v for k, v in trial_cfg.model.params.items()})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id

    def end_trial(self, run_id: str, status: str, score: float | None = None, error: BaseException | None = None):
        if score is not None and math.isfinite(score):
            self.client.log_metric(run_id, "score", float(score))
        if error is not None:
            self.client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:4000])
        self.client.set_terminated(run_id, status=status)


def _write_json(path: str, data: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- KerasTuner pieces


class SearchModel(kt.HyperModel):
    """Builds and fits one trial: the config drawn from `hp`, on the experiment's data pipelines.

    With `splits=None` (the chief of a distributed search) it only declares
    the search space and builds nothing.
    """

    def __init__(self, cfg: Config, splits=None):
        super().__init__(name=cfg.model.name)
        self.cfg = cfg
        self.splits = splits
        self.execution = 0  # set by the tuner before each execution of a trial

    def trial_config(self, hp) -> Config:
        tcfg = trial_config(self.cfg, hp)
        tcfg.train.epochs = self.cfg.tune.epochs  # the learning-rate schedule spans the trial's budget
        return tcfg

    def build(self, hp):
        import keras

        import models
        from pipelines.train import compile_model

        tcfg = self.trial_config(hp)
        if self.splits is None:
            return None
        keras.utils.set_random_seed(tcfg.train.seed + self.execution)
        model = models.build_model(tcfg.model.name, self.splits.image_shape, self.splits.num_classes, **tcfg.model.params)
        steps_per_epoch = math.ceil(len(self.splits.train[0]) / tcfg.data.batch_size)
        return compile_model(model, tcfg, steps_per_epoch)

    def fit(self, hp, model, *args, **kwargs):
        from data.pipeline import make_datasets
        from pipelines.train import build_augmentation

        tcfg = self.trial_config(hp)
        train_ds, val_ds, _ = make_datasets(
            self.splits, tcfg.data.batch_size, seed=tcfg.data.seed, augment=build_augmentation(tcfg)
        )
        return model.fit(train_ds, validation_data=val_ds, shuffle=False, **kwargs)


class EpochLogger(MLflowEpochLogger):
    """MLflowEpochLogger with metric names prefixed (one prefix per execution of a trial)."""

    def __init__(self, run_id: str, prefix: str = ""):
        super().__init__(run_id)
        self.prefix = prefix

    def on_train_begin(self, logs=None):
        self._done = logged_steps(self.run_id, f"{self.prefix}loss")

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {f"{self.prefix}{k}": v for k, v in (logs or {}).items()})


class _TrackedTrials:
    """Mixin over a KerasTuner tuner: each trial is a nested MLflow run of the search's parent run."""

    def __init__(self, *args, runs: SearchRuns, **kwargs):
        self.runs = runs
        super().__init__(*args, **kwargs)

    def run_trial(self, trial, *args, **kwargs):
        from keras_tuner.src.engine import tuner_utils

        self._execution = 0
        self._trial_run_id = self.runs.start_trial(trial, self.tuner_id, self.hypermodel.trial_config(trial.hyperparameters))
        try:
            results = super().run_trial(trial, *args, **kwargs)
            score = tuner_utils.convert_to_metrics_dict(results, self.oracle.objective).get(self.oracle.objective.name)
        except KeyboardInterrupt:
            self.runs.end_trial(self._trial_run_id, "KILLED")
            raise
        except BaseException as e:
            self.runs.end_trial(self._trial_run_id, "FAILED", error=e)
            raise
        self.runs.end_trial(self._trial_run_id, "FINISHED", score=score)
        return results

    def _build_and_fit_model(self, trial, *args, **kwargs):
        execution = self._execution
        self._execution += 1
        self.hypermodel.execution = execution
        prefix = f"execution_{execution}/" if self.executions_per_trial > 1 else ""
        kwargs["callbacks"] = [*kwargs.get("callbacks", []), EpochLogger(self._trial_run_id, prefix)]
        return super()._build_and_fit_model(trial, *args, **kwargs)


class TrackedRandomSearch(_TrackedTrials, kt.RandomSearch):
    pass


class TrackedHyperband(_TrackedTrials, kt.Hyperband):
    pass


class TrackedBayesianOptimization(_TrackedTrials, kt.BayesianOptimization):
    pass


def make_tuner(cfg: Config, hypermodel: SearchModel, hyperparameters, directory: str, runs: SearchRuns):
    t = cfg.tune
    common = dict(
        hypermodel=hypermodel,
        objective=t.objective,
        seed=t.seed,
        hyperparameters=hyperparameters,
        tune_new_entries=True,
        allow_new_entries=True,
        executions_per_trial=t.executions_per_trial,
        directory=directory,
        project_name="search",
        overwrite=False,  # tune.overwrite is handled before, by the chief only
        distribution_strategy=_strategy(),
        runs=runs,
    )
    if t.algorithm == "random":
        return TrackedRandomSearch(max_trials=t.max_trials, **common)
    if t.algorithm == "bayesian":
        return TrackedBayesianOptimization(max_trials=t.max_trials, num_initial_points=t.num_initial_points, **common)
    return TrackedHyperband(max_epochs=t.epochs, factor=t.hyperband_factor, hyperband_iterations=t.hyperband_iterations, **common)


def _strategy():
    """MirroredStrategy over the GPUs of this process when there are several (KerasTuner enters its scope)."""
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return None


# ----------------------------------------------------------------------------- roles


def current_role() -> str:
    """`single`, or `chief` / `worker` of a distributed search (KerasTuner's environment variables)."""
    from keras_tuner.src.distribute import utils as dist_utils

    try:
        if not dist_utils.has_chief_oracle():
            return "single"
    except RuntimeError as e:  # KERASTUNER_ORACLE_IP without the port or tuner id
        raise UserError(str(e)) from None
    return "chief" if dist_utils.is_chief_oracle() else "worker"


def _oracle_address() -> str:
    return f"{os.environ['KERASTUNER_ORACLE_IP']}:{os.environ['KERASTUNER_ORACLE_PORT']}"


def serve_oracle(oracle, poll_s: float = 0.5):
    """Serve `oracle` to the workers until the search ends and every worker has been told to stop.

    KerasTuner's `oracle_chief.start_server` with a short poll: it sleeps 20 s
    between checks once the search has stopped.
    """
    from concurrent import futures

    import grpc
    from keras_tuner.src import protos
    from keras_tuner.src.distribute import oracle_chief

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = oracle_chief.OracleServicer(oracle)
    protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    address = _oracle_address()
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise UserError(f"the chief cannot listen on {address} (KERASTUNER_ORACLE_IP:KERASTUNER_ORACLE_PORT); is it in use?")
    server.start()
    print(f"Chief oracle serving on {address}")
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(oracle)):
            time.sleep(poll_s)
    finally:
        server.stop(grace=2)


def wait_for_chief(directory: str, timeout: float):
    """Block until the chief's oracle answers and its files are in the shared `directory` (at most `timeout` s)."""
    import grpc

    address = _oracle_address()
    deadline = time.monotonic() + timeout
    print(f"Worker {os.environ['KERASTUNER_TUNER_ID']}: waiting for the chief at {address}")
    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout)
    except grpc.FutureTimeoutError:
        raise UserError(f"no chief oracle answered at {address} within tune.chief_timeout={timeout:g} s") from None
    finally:
        channel.close()
    # The chief writes these before it serves; a shared file system may show them later.
    for name in ("config.yaml", SearchRuns.FILE):
        path = os.path.join(directory, name)
        while not os.path.isfile(path):
            if time.monotonic() > deadline:
                raise UserError(f"the chief serves at {address} but {path} did not appear within "
                                f"tune.chief_timeout={timeout:g} s; is tune.directory the chief's, shared?")
            time.sleep(0.5)


# ----------------------------------------------------------------------------- the search directory


def search_directory(cfg: Config) -> str:
    return cfg.tune.directory or os.path.join("tuning", cfg.name)


def _differences(a: dict, b: dict) -> list[str]:
    fa, fb = flatten(a), flatten(b)
    keys = sorted(set(fa) | set(fb))
    return [k for k in keys if fa.get(k) != fb.get(k) and k not in RESUMABLE_CHANGES]


def _check_same_search(cfg: Config, directory: str):
    path = os.path.join(directory, "config.yaml")
    with open(path) as fh:
        saved = yaml.safe_load(fh)
    diff = _differences(saved, cfg.to_dict())
    if diff:
        raise UserError(
            f"{directory} holds a search of a different config ({path}); differing keys: {', '.join(diff)}. "
            "Run it with that config, set tune.overwrite=true to start afresh, or choose another tune.directory"
        )


def _prepare_directory(cfg: Config, directory: str):
    """Create, reopen (same config) or, with tune.overwrite, empty the search directory."""
    if cfg.tune.overwrite and os.path.isdir(directory):
        for entry in ("search", "config.yaml", SearchRuns.FILE, "best.yaml"):
            path = os.path.join(directory, entry)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "config.yaml")
    if os.path.isfile(path):
        _check_same_search(cfg, directory)
    with open(path + ".tmp", "w") as fh:
        fh.write(cfg.to_yaml())
    os.replace(path + ".tmp", path)


def _share_tuner_state(directory: str, tuner_id: str):
    """Let a search started alone be resumed as a chief and vice versa.

    KerasTuner reloads its oracle only when `<tuner_id>.json` exists; the
    tuner's own state is empty, so the file of either id serves both.
    """
    project = os.path.join(directory, "search")
    if os.path.isfile(os.path.join(project, "oracle.json")) and not os.path.isfile(os.path.join(project, f"{tuner_id}.json")):
        _write_json(os.path.join(project, f"{tuner_id}.json"), {})


# ----------------------------------------------------------------------------- the job


@dataclass
class TuneResult:
    role: str
    directory: str
    parent_run_id: str
    tracking_uri: str
    best_config_path: str | None = None
    best_trial_id: str | None = None
    best_score: float | None = None
    best_values: dict | None = None
    trials_completed: int = 0


def run(cfg: Config, callbacks=(), config_path: str | None = None) -> TuneResult:
    """Run (or continue, or join) the search of `cfg`; `callbacks` are extra Keras callbacks per trial."""
    import keras

    from pipelines import tracking
    from pipelines.train import describe_devices, load_data

    role = current_role()
    hyperparameters = narrowed_space(cfg)
    try:
        trial_config(cfg, hyperparameters.copy())
    except ConfigError as e:
        raise ConfigError(f"tune: the search space at its first values gives a bad config: {e}") from None
    directory = search_directory(cfg)

    splits = None
    if role != "chief":  # before the directory and the parent run: a bad source leaves neither behind
        print(f"Devices: {describe_devices()}")
        splits = load_data(cfg)
        print(f"Data: {cfg.data.source}: train {len(splits.train[0])}, validation {len(splits.validation[0])} images")
    if role == "worker":  # after the chief, who creates the experiment
        wait_for_chief(directory, cfg.tune.chief_timeout)
        _check_same_search(cfg, directory)
        uri = tracking.setup(cfg.tracking.uri, cfg.experiment_name)
    else:
        uri = tracking.setup(cfg.tracking.uri, cfg.experiment_name)
        _prepare_directory(cfg, directory)
    runs = SearchRuns.join(directory) if role == "worker" else SearchRuns.open(cfg, directory, uri)
    hypermodel = SearchModel(cfg, splits)

    policy = "mixed_float16" if cfg.train.mixed_precision else "float32"
    previous_policy = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(policy)
    tuner_id = os.environ.get("KERASTUNER_TUNER_ID", "tuner0")
    try:
        if splits is not None:
            try:  # the first values must build: a bad tune.fixed value is the user's
                hypermodel.build(hyperparameters.copy())
            except ValueError as e:
                raise UserError(f"tune: model {cfg.model.name!r} does not build at the search space's first values: {e}") from None
        if role != "worker":
            _share_tuner_state(directory, tuner_id)
        tuner = make_tuner(cfg, hypermodel, hyperparameters, directory, runs)
        if role == "chief":
            tuner.save()
            serve_oracle(tuner.oracle)
        else:
            verbose = cfg.train.verbose if cfg.train.verbose == "auto" else int(cfg.train.verbose)
            tuner.search(epochs=cfg.tune.epochs, callbacks=[keras.callbacks.TerminateOnNaN(), *callbacks], verbose=verbose)
        if role == "worker":
            print(f"Worker {tuner_id}: the chief ended the search")
            return TuneResult(role, directory, runs.parent_run_id, uri)
        result = _finish(cfg, tuner.oracle, runs, directory, uri, role, config_path)
    except KeyboardInterrupt:
        if role != "worker":
            runs.end("KILLED")
        raise
    except BaseException as exc:
        if role != "worker":
            runs.client.set_tag(runs.parent_run_id, "failure", f"{type(exc).__name__}: {exc}"[:4000])
            runs.end("FAILED")
        raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)
    return result


def _finish(cfg: Config, oracle, runs: SearchRuns, directory: str, uri: str, role: str, config_path) -> TuneResult:
    """Write best.yaml from the oracle's best trial, record it on the parent run and end that run."""
    completed = [t for t in oracle.trials.values() if t.status == "COMPLETED"]
    if not completed:
        failed = [t for t in oracle.trials.values() if t.message]
        why = failed[-1].message.strip().splitlines()[-1] if failed else "none ran"
        raise RuntimeError(f"no trial of the search completed (last error: {why})")
    best = oracle.get_best_trials(1)[0]
    best_path = os.path.join(directory, "best.yaml")
    header = (
        f"# Best of {len(completed)} trials of `make tune CONFIG={config_path or cfg.name}` "
        f"({cfg.tune.algorithm}; {cfg.tune.objective} = {best.score:.4f} in trial {best.trial_id}),\n"
        f"# MLflow parent run {runs.parent_run_id}. Train and export it with its full budget:\n"
        f"#   make train CONFIG={best_path}\n"
    )
    with open(best_path + ".tmp", "w") as fh:
        fh.write(header + yaml.safe_dump(best_config_dict(cfg, best.hyperparameters), sort_keys=False))
    os.replace(best_path + ".tmp", best_path)
    runs.record_best(best, cfg.tune.objective, len(completed), best_path)
    runs.end("FINISHED")
    return TuneResult(role, directory, runs.parent_run_id, uri, best_path, best.trial_id, float(best.score),
                      dict(best.hyperparameters.values), len(completed))


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    return config_parser("make tune", __doc__.split("\n\n")[0], "tune.max_trials=20").parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    interrupt_on_sigterm()
    result = run(cfg, config_path=args.config)
    print()
    print(f"MLflow parent run: {result.parent_run_id}")
    print(f"Tracking store:    {result.tracking_uri}   (browse it with `make ui`)")
    print(f"Search directory:  {result.directory}")
    if result.best_config_path:
        print(f"Best trial:        {result.best_trial_id}: {cfg.tune.objective} {result.best_score:.4f} "
              f"of {result.trials_completed} completed trials")
        print(f"Best values:       {result.best_values}")
        print(f"Best config:       {result.best_config_path}")
        print(f"Train it:          make train CONFIG={result.best_config_path}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
