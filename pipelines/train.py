"""`make train`: config -> data -> model -> fit (tracked in MLflow) -> test -> evaluate -> export.

    python -m pipelines.train --config pipelines/configs/default.yaml [key=value ...]

A run lives in a run directory (pipelines/rundir.py: `train.run_dir`, default
runs/<name>-<time>) holding the resolved config, the MLflow run id, Keras'
backup of the last finished epoch and, once training ends, the trained model.
Running the same command again resumes an unfinished run whose process is
gone: training continues from the last finished epoch (each epoch is logged
once), and a run that had finished training but died later (evaluation,
export) redoes only the steps that had not finished. Everything a user can get
wrong (config, data, a model that does not build for the data) is checked
before anything is written.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass

from pipelines import experiment, rundir
from pipelines.cli import config_parser, interrupt_on_sigterm, run_main
from pipelines.config import Config, load_config
from pipelines.errors import UserError


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite (a config's learning rate, usually): one `error:` line, exit 2."""


@dataclass
class TrainResult:
    run_id: str
    tracking_uri: str
    run_dir: str
    export_path: str | None
    test_accuracy: float
    test_loss: float
    not_published: str | None = None  # why the export guard kept this model from being published


# ----------------------------------------------------------------------------- the job


def run(cfg: Config, callbacks=()) -> TrainResult:
    """Train, test, evaluate, log and export the experiment `cfg`. `callbacks` are extra Keras callbacks."""
    import keras
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines import tracking

    print(f"Devices: {experiment.describe_devices()}")
    keras.utils.set_random_seed(cfg.train.seed)
    # Before the run directory and the MLflow run: a bad source, store or model leaves nothing behind.
    splits = experiment.load_data(cfg)
    experiment.check_model_builds(cfg, splits)
    uri = tracking.setup(cfg.tracking.uri, cfg.experiment_name)
    run_dir, state, lock, orphans = rundir.open_run_dir(cfg)
    try:
        rundir.mark_orphans_killed(orphans)
        return _run_locked(cfg, splits, uri, run_dir, state, callbacks)
    finally:
        lock.release()


def _run_locked(cfg: Config, splits, uri: str, run_dir: str, state: dict, callbacks) -> TrainResult:
    import keras
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    from pipelines import artifacts, tracking

    print(
        f"Data: {cfg.data.source}: train {len(splits.train[0])}, validation {len(splits.validation[0])}, "
        f"test {len(splits.test[0])} images of shape {splits.image_shape}, {splits.num_classes} classes"
    )
    augment = experiment.build_augmentation(cfg)
    train_ds, val_ds, test_ds = experiment.make_datasets(cfg, splits, augment)
    steps = experiment.steps_per_epoch(cfg, splits)

    run_id = state.get("mlflow_run_id")
    resumed = run_id is not None
    try:
        active = mlflow.start_run(run_id=run_id, run_name=None if resumed else os.path.basename(run_dir))
    except MlflowException:
        if not resumed:
            raise
        raise UserError(
            f"train.run_dir={run_dir} continues MLflow run {run_id}, which the tracking store {uri} does not "
            "hold (or it was deleted); resume with the store it started in, or choose a new run_dir"
        ) from None
    run_id = active.info.run_id
    state = rundir.write_state(run_dir, mlflow_run_id=run_id, status="running")
    print(f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}; run dir {run_dir}")

    try:
        if not resumed:
            mlflow.log_params({k: ("" if v is None else v) for k, v in cfg.flat().items()})
            mlflow.set_tags({"run_dir": os.path.abspath(run_dir), "devices": experiment.describe_devices()})
            mlflow.log_artifact(os.path.join(run_dir, rundir.CONFIG))
            if augment is not None:
                artifacts.log_augmentation_preview(cfg, splits, run_dir)

        model_path = os.path.join(run_dir, "model.keras")
        if state.get("trained") and os.path.isfile(model_path):
            print(f"Training had finished; loading {model_path}")
            model = experiment.load_keras_model(model_path)
            experiment.compile_model(model, cfg, steps)
        else:
            model = _fit(cfg, splits, train_ds, val_ds, steps, run_id, run_dir, callbacks)
            model.save(model_path)
            state = rundir.write_state(run_dir, trained=True)

        # Each step after training records itself in state.json, so that a run resumed after a
        # crash in a later step neither logs its test metrics, model or evaluation twice nor exports again.
        if "test_accuracy" in state:
            test_loss, test_acc = state["test_loss"], state["test_accuracy"]
        else:
            test_loss, test_acc = model.evaluate(test_ds, verbose=0)
            mlflow.log_metrics({"test_loss": float(test_loss), "test_accuracy": float(test_acc)})
            state = rundir.write_state(run_dir, test_loss=float(test_loss), test_accuracy=float(test_acc))
        print(f"Test accuracy {test_acc:.4f}, test loss {test_loss:.4f}")
        if not state.get("model_logged"):
            artifacts.log_figures(run_id, model, splits, test_ds, run_dir)
            mlflow.log_artifact(model_path, artifact_path="keras_model")
            artifacts.log_mlflow_model(model, cfg, splits.test[0][:8])
            state = rundir.write_state(run_dir, model_logged=True)

        if cfg.evaluate.enabled and not state.get("evaluated"):
            _evaluate_invariance(model, cfg, splits, run_dir)
            state = rundir.write_state(run_dir, evaluated=True)

        export_path, refused = state.get("export_path"), None
        if cfg.export.enabled and not export_path:
            export_path, refused = _export(model, cfg, splits, float(test_acc))
            if export_path:
                state = rundir.write_state(run_dir, export_path=export_path)

        mlflow.end_run(status="FINISHED")
        rundir.write_state(run_dir, status="finished")
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            mlflow.set_tag("failure", f"{type(exc).__name__}: {exc}"[:4000])
        finally:
            mlflow.end_run(status=status)
        if isinstance(exc, UserError) and rundir.read_state(run_dir).get("trained"):
            exc.args = (f"{exc} (the trained model is kept in {run_dir}; the same command retries "
                        "only the steps that did not finish)",)
        raise

    return TrainResult(run_id, uri, run_dir, export_path, float(test_acc), float(test_loss), refused)


def _fit(cfg: Config, splits, train_ds, val_ds, steps: int, run_id: str, run_dir: str, callbacks):
    import keras
    import numpy as np

    from pipelines import tracking

    with experiment.precision(cfg), experiment.distribution_strategy().scope():
        model = experiment.build_model(cfg, splits.image_shape, splits.num_classes)
        experiment.compile_model(model, cfg, steps)
        print(f"Model {cfg.model.name}: {model.count_params():,} parameters")
        fit_callbacks = [
            tracking.MLflowEpochLogger(run_id),
            keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
            keras.callbacks.TerminateOnNaN(),
            *callbacks,
        ]
        history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs,
                            callbacks=fit_callbacks, verbose=experiment.fit_verbosity(cfg), shuffle=False)
    losses = history.history.get("loss", [])
    if losses and not all(np.isfinite(losses)):
        raise TrainingDivergedError(f"loss became {losses[-1]} in epoch {len(losses)}; training stopped "
                                    f"(train.learning_rate={cfg.train.learning_rate:g} too high?)")
    return model


def _export(model, cfg: Config, splits, test_acc: float) -> tuple[str | None, str | None]:
    """Publish the next version unless the export guard refuses; return (path, why not published)."""
    import mlflow

    from pipelines.export import export_model, publish_refusal

    why = publish_refusal(cfg.export, cfg.export_name, test_acc, cfg.data.source)
    if why:
        mlflow.set_tag("export_refused", why)
        print(f"Not published: {why}")
        return None, why
    report: dict = {}
    path = export_model(
        model, cfg.export.dir, cfg.export_name, check_images=splits.test[0],
        tolerance=cfg.export.tolerance, rtol=cfg.export.rtol, report=report,
        extra_assets={"experiment.yaml": cfg.to_yaml(),
                      "metrics.json": json.dumps({"test_accuracy": test_acc, "data.source": cfg.data.source})},
    )
    mlflow.set_tag("export_path", os.path.abspath(path))
    mlflow.log_metrics({"export_max_abs_diff": report["max_abs_diff"],
                        "export_class_agreement": report["class_agreement"]})
    print(f"Exported and verified SavedModel: {path} (reloaded vs in-memory: max |dp| "
          f"{report['max_abs_diff']:.2e}, classes agree on {100 * report['class_agreement']:.2f}%)")
    return path, None


def _evaluate_invariance(model, cfg: Config, splits, run_dir: str):
    """The invariance evaluation of pipelines/evaluation.py, logged to the active run."""
    from pipelines.evaluation import evaluate_in_training

    evaluate_in_training(model, cfg, splits, run_dir)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    return config_parser("make train", __doc__.split("\n\n")[0], "train.epochs=3").parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    interrupt_on_sigterm()
    result = run(cfg)
    print()
    print(f"MLflow run id:   {result.run_id}")
    print(f"Tracking store:  {result.tracking_uri}   (browse it with `make ui`)")
    print(f"Run directory:   {result.run_dir}")
    if result.export_path:
        print(f"SavedModel:      {os.path.abspath(result.export_path)}")
    elif result.not_published:
        print(f"SavedModel:      not published: {result.not_published}")
    print(f"Test accuracy:   {result.test_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
