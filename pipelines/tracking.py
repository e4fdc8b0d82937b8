"""MLflow tracking shared by the jobs: where the store is, and per-epoch logging."""

from __future__ import annotations

import os
import pathlib

import keras

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_TRACKING_URI = f"sqlite:///{os.path.join(PROJECT_ROOT, 'mlflow.db')}"

EPOCH_METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def tracking_uri(configured: str | None = None) -> str:
    """The config's URI, else $MLFLOW_TRACKING_URI, else sqlite:///<project>/mlflow.db."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def quiet_mlflow() -> None:
    """No progress bars and no INFO lines from MLflow's store set-up on the command line.

    Alembic's and MLflow's INFO lines on every new sqlite store drown Keras' progress bar.
    """
    import logging

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking.fluent"):
        logging.getLogger(name).setLevel(logging.WARNING)


PROBE_TIMEOUT_S = 5.0


def check_reachable(uri: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """An http(s) tracking server must answer its /health within `timeout` s, or a `UserError`.

    MLflow's own client retries an unreachable server with backoff for minutes
    (252 s measured) before it fails; one probe up front fails in seconds.
    """
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    from pipelines.errors import UserError

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as e:
        raise UserError(f"tracking store {uri} (tracking.uri or MLFLOW_TRACKING_URI) is unreachable: "
                        f"{type(e).__name__} within {timeout:g} s") from None


def check_store_exists(uri: str) -> None:
    """For a job that only reads runs (`make evaluate`, `make compare`): a local store (sqlite, or a file store's
    folder) that is not there is a `UserError` (MLflow would create an empty store there, and the job then found
    no run in it)."""
    if uri.startswith("sqlite:///"):
        path, there = uri[len("sqlite:///"):].split("?")[0], os.path.isfile
    elif uri.startswith("file:") or ("://" not in uri and os.sep in uri):  # a file store (not "databricks")
        path, there = uri.removeprefix("file://").removeprefix("file:"), os.path.isdir
    else:
        return
    if not there(path):
        from pipelines.errors import UserError

        named = "the default store: no run was tracked here yet" if uri == DEFAULT_TRACKING_URI else \
            "--tracking-uri or MLFLOW_TRACKING_URI"
        raise UserError(f"the tracking store {uri} ({named}) does not exist: no {os.path.abspath(path)}")


def setup(configured_uri: str | None, experiment: str) -> str:
    """Point MLflow at the tracking store and experiment; return the URI.

    A store MLflow cannot use (unknown scheme, unreachable server) is the
    user's `UserError`, not a traceback.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.errors import UserError

    quiet_mlflow()
    uri = tracking_uri(configured_uri)
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    try:
        location = _artifact_location(uri)
        if location and mlflow.get_experiment_by_name(experiment) is None:
            try:
                mlflow.create_experiment(experiment, artifact_location=location)
            except MlflowException:
                pass  # made meanwhile by another process (tune workers, the processes of one run)
        mlflow.set_experiment(experiment)
    except MlflowException as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"tracking store {uri} (tracking.uri or MLFLOW_TRACKING_URI): {first}") from None
    return uri


def _artifact_location(uri: str) -> str | None:
    """For a new experiment in a SQLite store: its artifacts in `mlruns/` beside the database file. MLflow's
    own default is `./mlruns` of whatever directory the job runs in, which scattered them (and a test run's)
    into the working tree; for the default store (`mlflow.db` in the project) the place is the same."""
    if not uri.startswith("sqlite:///"):
        return None
    return pathlib.Path(os.path.abspath(uri[len("sqlite:///"):])).parent.joinpath("mlruns").as_uri()


def logged_steps(run_id: str, key: str = "loss") -> set[int]:
    import mlflow

    return {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


def metric_history(run_id: str, keys=EPOCH_METRICS) -> dict[str, list[float]]:
    """Per-epoch values of `keys` ordered by step, one value per step (the first logged)."""
    import mlflow

    client = mlflow.MlflowClient()
    out = {}
    for key in keys:
        by_step = {}
        for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp)):
            by_step.setdefault(m.step, m.value)
        out[key] = [by_step[s] for s in sorted(by_step)]
    return out


class MLflowEpochLogger(keras.callbacks.Callback):
    """Log Keras' epoch logs to an MLflow run, each epoch once (step = epoch index).

    On a resumed run, epochs already in the run's history are not logged again:
    if a run died after logging epoch k but before its backup was written,
    epoch k is trained again, and its first record stands.
    """

    def __init__(self, run_id: str):
        super().__init__()
        self.run_id = run_id
        self._done: set[int] = set()

    def on_train_begin(self, logs=None):
        self._done = logged_steps(self.run_id)

    def on_epoch_end(self, epoch, logs=None):
        import mlflow
        from mlflow.entities import Metric

        if epoch in self._done or not logs:
            return
        import time

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in logs.items() if isinstance(v, (int, float))]
        lr = getattr(self.model.optimizer, "learning_rate", None)
        if lr is not None:
            try:
                metrics.append(Metric("learning_rate", float(keras.ops.convert_to_numpy(lr)), now, epoch))
            except (TypeError, ValueError):
                pass
        mlflow.MlflowClient().log_batch(self.run_id, metrics=metrics)
        self._done.add(epoch)
