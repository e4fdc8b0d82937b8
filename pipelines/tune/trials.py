"""A search's MLflow record (a parent run, one nested run per trial) and the trial's model and fit."""

from __future__ import annotations

import json
import math
import os
import time

import keras_tuner as kt

from data.options import DataSourceError
from pipelines import experiment, precise_bn
from pipelines.config import Config
from pipelines.errors import UserError
from pipelines.progress import StopOnSignal, raise_if_signalled
from pipelines.tracking import MLflowEpochLogger, logged_steps
from pipelines.tune.space import trial_config


class BadDataError(DataSourceError, kt.errors.FatalError):
    """Data that fails while a trial reads it (a damaged shard, a file that does not decode), named: a FatalError
    ends the search at once (KerasTuner would retry every trial on the same data), and `make tune` prints it as a
    data error, exit code 2."""

# ----------------------------------------------------------------------------- MLflow


def searched_values(hp) -> dict:
    """A trial's values of the search space: without Hyperband's bookkeeping (`tuner/epochs`, `tuner/round`, ...),
    which its trial runs keep as params."""
    return {k: v for k, v in hp.values.items() if not k.startswith("tuner/")}


def backend() -> str:
    import keras

    return keras.backend.backend()


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
        tags += [RunTag(f"best.{k}", str(v)) for k, v in searched_values(trial.hyperparameters).items()]
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
                  "tuner_id": tuner_id, "attempt": str(len(earlier) + 1), "backend": backend(),
                  "devices": experiment.describe_devices()},
        )
        self._note_backend(backend())
        params = {k: v for k, v in trial.hyperparameters.values.items()}
        params.update({f"model.params.{k}": v for k, v in trial_cfg.model.params.items()})
        self.client.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])
        return run.info.run_id

    def _note_backend(self, now: str) -> None:
        """The parent run's `backend` tag: that of the processes that train its trials (not a distributed search's
        chief, which trains none); a search resumed or joined under another says so and is tagged `<then>, then
        <now>`. Each trial run keeps its own."""
        started = self.client.get_run(self.parent_run_id).data.tags.get("backend")
        if started is None:  # a new search, or one started before this tag
            self.client.set_tag(self.parent_run_id, "backend", now)
        elif started.split(", then ")[-1] != now:
            print(f"Warning: this search started on Keras' {started} backend and goes on on {now}: its trials' "
                  "speeds and last digits mix the two (KERAS_BACKEND chooses; each trial run is tagged with its own)")
            self.client.set_tag(self.parent_run_id, "backend", f"{started}, then {now}")

    def end_trial(self, run_id: str, status: str, score: float | None = None, error: BaseException | None = None,
                  metrics: dict | None = None):
        if score is not None and math.isfinite(score):
            self.client.log_metric(run_id, "score", float(score))
        for name, value in (metrics or {}).items():
            self.client.log_metric(run_id, name, float(value))
        if error is not None:
            self.client.set_tag(run_id, "error", f"{type(error).__name__}: {error}"[:4000])
        self.client.set_terminated(run_id, status=status)


def _write_json(path: str, data: dict):
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- a trial


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
        self.checkpoint = None  # the trial's weights file (set by the tuner)

    def trial_config(self, hp) -> Config:
        tcfg = trial_config(self.cfg, hp)
        tcfg.train.epochs = self.cfg.tune.epochs  # the learning-rate schedule spans the trial's budget
        return tcfg

    def build(self, hp):
        import keras

        tcfg = self.trial_config(hp)
        if self.splits is None:
            return None
        keras.utils.set_random_seed(tcfg.train.seed + self.execution)
        model = experiment.build_model(tcfg, self.splits.image_shape, self.splits.num_classes)
        model = experiment.compile_model(model, tcfg, experiment.steps_per_epoch(tcfg, self.splits))
        # Built now, so that the checkpoint Hyperband continues a promoted trial from (loaded next) restores the
        # optimizer's state and step too: unbuilt, Keras skipped them ("Skipping variable loading for optimizer"),
        # and the trial went on with fresh moments at the top of its learning-rate schedule.
        model.optimizer.build(model.trainable_variables)
        return model

    def fit(self, hp, model, *args, **kwargs):
        tcfg = self.trial_config(hp)
        train_ds, val_ds, _ = experiment.make_datasets(tcfg, self.splits, experiment.build_augmentation(tcfg))
        steps = experiment.steps_per_epoch(tcfg, self.splits)
        try:
            with StopOnSignal() as stop:  # Ctrl-C, SIGTERM: at the end of a step, on every backend
                history = model.fit(**experiment.fit_batches(train_ds, steps), validation_data=val_ds,
                                    shuffle=False, **{**kwargs, "callbacks": [*kwargs.get("callbacks", []), stop]})
                raise_if_signalled()  # one that came as the training ended: the trial is rerun on resume, unscored
                score = self._final_model_score(tcfg, model, train_ds, val_ds, history)
            raise_if_signalled()
            return score
        except Exception as exc:
            from data.streaming import name_read_error

            named = name_read_error(exc, self.splits)
            if named is None:
                raise
            raise BadDataError(f"{named} (found in a trial; finished trials are kept, and the same command resumes "
                               "the search)") from None


    def _final_model_score(self, tcfg: Config, model, train_ds, val_ds, history):
        """A validation objective scores the trial's final model as `make train` of its config would publish it:
        its batch norms re-estimated (`train.precise_bn_batches`), then one pass over the validation split.
        KerasTuner's own score, the best epoch's figure under Keras' moving statistics, ranked trials by noise
        on a small folder (images.yaml, 3 classes of 40 images: a trial whose last epoch read 4 of 12 validation
        images right was scored 8 of 12, from its second epoch; its final model, re-estimated, reads 9 of 12)."""
        objective = self.cfg.tune.objective
        if not objective.startswith("val_"):
            return history  # a training objective: Keras' own figures, which precise batch norm does not change
        batches = precise_bn.recalibrate_batch_norm(model, train_ds, tcfg.train.precise_bn_batches)
        with experiment.reading_splits_to_their_end():
            final = {f"val_{k}": float(v) for k, v in model.evaluate(val_ds, verbose=0, return_dict=True).items()}
        if self.checkpoint:  # KerasTuner's checkpoint of the trial, its best epoch, becomes the model scored (the
            # last execution's): Hyperband continues a promoted trial from it
            os.makedirs(os.path.dirname(self.checkpoint), exist_ok=True)
            model.save_weights(self.checkpoint)
        print(f"The trial's final model{', batch norms re-estimated,' if batches else ''} scores {objective} "
              f"{final[objective]:.4f} (its last epoch: {history.history[objective][-1]:.4f})")
        return {**{k: v[-1] for k, v in history.history.items()}, **final}


class EpochLogger(MLflowEpochLogger):
    """MLflowEpochLogger with metric names prefixed (one prefix per execution of a trial)."""

    def __init__(self, run_id: str, prefix: str = ""):
        super().__init__(run_id)
        self.prefix = prefix

    def on_train_begin(self, logs=None):
        self._done = logged_steps(self.run_id, f"{self.prefix}loss")

    def on_epoch_end(self, epoch, logs=None):
        super().on_epoch_end(epoch, {f"{self.prefix}{k}": v for k, v in (logs or {}).items()})


