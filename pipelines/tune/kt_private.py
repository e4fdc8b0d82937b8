"""Everything of `make tune` that leans on KerasTuner's private API, in one place.

Checked against keras-tuner 1.4.8 (requirements.txt); re-check these on an upgrade:

- `_TrackedTrials` overrides `Tuner.run_trial` and the private
  `Tuner._build_and_fit_model` (the only hook that runs once per *execution*
  of a trial, where the per-execution MLflow logger and seed are set) and
  calls `keras_tuner.src.engine.tuner_utils.convert_to_metrics_dict` to read
  the trial's score the way the oracle does.
- `current_role` reads `keras_tuner.src.distribute.utils` (KerasTuner decides
  chief/worker from its environment variables there; no public API says it).
- `serve_oracle` re-implements `keras_tuner.src.distribute.oracle_chief.start_server`
  with its `OracleServicer` and `keras_tuner.src.protos`: the public one sleeps
  20 s between checks once the search has stopped.
"""

from __future__ import annotations

import os
import time

import keras_tuner as kt

from pipelines import experiment
from pipelines.config import Config
from pipelines.errors import UserError
from pipelines.tune.trials import EpochLogger, SearchModel, SearchRuns

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
            metrics = tuner_utils.convert_to_metrics_dict(results, self.oracle.objective)  # executions averaged
            score = metrics.get(self.oracle.objective.name)
            # The final model's validation figures (SearchModel.fit), beside the per-epoch curve of the old statistics
            final = {f"final_{k}": v for k, v in metrics.items() if k.startswith("val_")} \
                if all(isinstance(r, dict) for r in results) else {}
        except KeyboardInterrupt:
            self.runs.end_trial(self._trial_run_id, "KILLED")
            raise
        except BaseException as e:
            self.runs.end_trial(self._trial_run_id, "FAILED", error=e)
            raise
        self.runs.end_trial(self._trial_run_id, "FINISHED", score=score, metrics=final)
        return results

    def _build_and_fit_model(self, trial, *args, **kwargs):
        execution = self._execution
        self._execution += 1
        self.hypermodel.execution = execution
        self.hypermodel.checkpoint = self._get_checkpoint_fname(trial.trial_id)
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
        distribution_strategy=experiment.distribution_strategy(default=False) or None,
        runs=runs,
    )
    if t.algorithm == "random":
        return TrackedRandomSearch(max_trials=t.max_trials, **common)
    if t.algorithm == "bayesian":
        return TrackedBayesianOptimization(max_trials=t.max_trials, num_initial_points=t.num_initial_points, **common)
    return TrackedHyperband(max_epochs=t.epochs, factor=t.hyperband_factor, hyperband_iterations=t.hyperband_iterations, **common)




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
    finally:  # waits for handlers under way: they write KerasTuner's state files (not atomically)
        server.stop(grace=2).wait()


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


