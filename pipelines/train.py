"""`make train`: config -> data -> model -> fit (tracked in MLflow) -> test -> export.

    python -m pipelines.train --config pipelines/configs/default.yaml [key=value ...]

A run lives in a run directory (`train.run_dir`, default runs/<name>-<time>)
holding the resolved config, the MLflow run id, Keras' backup of the last
finished epoch and, once training ends, the trained model. Starting the job
again on the same run directory resumes it: training continues from the last
finished epoch (each epoch is logged once), and a run that had finished
training but died later (export, evaluation) skips straight to those steps.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import dataclass

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


# ----------------------------------------------------------------------------- run directory


def _read_state(run_dir: str) -> dict:
    path = os.path.join(run_dir, "state.json")
    if not os.path.isfile(path):
        return {}
    with open(path) as fh:
        return json.load(fh)


def _write_state(run_dir: str, **updates) -> dict:
    state = _read_state(run_dir)
    state.update(updates)
    tmp = os.path.join(run_dir, "state.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(state, fh, indent=2)
    os.replace(tmp, os.path.join(run_dir, "state.json"))
    return state


def _prepare_run_dir(cfg: Config) -> tuple[str, dict]:
    """Create or reopen the run directory; refuse one that holds a finished or different run."""
    run_dir = cfg.train.run_dir or os.path.join(cfg.train.runs_root, f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    os.makedirs(run_dir, exist_ok=True)
    state = _read_state(run_dir)
    config_path = os.path.join(run_dir, "config.yaml")
    resolved = cfg.to_yaml()
    if state:
        if state.get("status") == "finished":
            raise UserError(
                f"train.run_dir={run_dir} holds a finished run (MLflow run {state.get('mlflow_run_id')}); "
                "choose a new run_dir or leave it unset"
            )
        with open(config_path) as fh:
            saved = fh.read()
        if saved != resolved:
            raise UserError(
                f"train.run_dir={run_dir} holds an unfinished run of a different config ({config_path}); "
                "resume it with that config or choose a new run_dir"
            )
    else:
        with open(config_path, "w") as fh:
            fh.write(resolved)
    return run_dir, state


# ----------------------------------------------------------------------------- pieces


def describe_devices() -> str:
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    cpus = tf.config.list_physical_devices("CPU")
    names = [d.name for d in gpus] or [d.name for d in cpus]
    return f"{len(gpus)} GPU(s)" + (f": {', '.join(names)}" if gpus else f"; CPU only: {', '.join(names)}")


def distribution_strategy():
    """MirroredStrategy over all GPUs when there are several, else the default strategy."""
    import tensorflow as tf

    if len(tf.config.list_physical_devices("GPU")) > 1:
        return tf.distribute.MirroredStrategy()
    return tf.distribute.get_strategy()


def make_optimizer(cfg: Config, steps_per_epoch: int):
    import keras

    t = cfg.train
    lr = t.learning_rate
    if t.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(t.learning_rate, decay_steps=max(1, t.epochs * steps_per_epoch))
    if t.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if t.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=t.weight_decay)
    return keras.optimizers.SGD(lr, momentum=0.9, nesterov=True)


def build_augmentation(cfg: Config):
    """The training-split augmentation of `cfg`, or None when every operation is off."""
    a = cfg.augment
    if not (a.translation.max > 0 or a.rotation.max_degrees > 0 or a.elastic.alpha > 0):
        return None
    from data.augment import build_augmentation as build

    return build(**cfg.augment.sections(), seed=cfg.train.seed)


def load_data(cfg: Config):
    from data.sources import load_splits

    d = cfg.data
    return load_splits(
        d.source,
        seed=d.seed,
        validation_fraction=d.validation_fraction,
        data_dir=d.data_dir,
        download=d.download,
        image_size=d.image_size,
        cache_dir=d.cache_dir,
        synthetic_train_size=d.synthetic.train_size,
        synthetic_test_size=d.synthetic.test_size,
    )


def compile_model(model, cfg: Config, steps_per_epoch: int):
    import keras

    model.compile(
        optimizer=make_optimizer(cfg, steps_per_epoch),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        jit_compile=cfg.train.xla,
    )
    return model


def _log_figures(run_id: str, model, splits, test_ds, run_dir: str):
    """Training curves and the test confusion matrix, as PNG artifacts."""
    import mlflow
    import numpy as np

    from pipelines import plots, tracking

    history = tracking.metric_history(run_id)
    mlflow.log_artifact(plots.training_curves(history, os.path.join(run_dir, "training_curves.png")))
    logits = model.predict(test_ds, verbose=0)
    y_pred = np.argmax(logits, axis=-1)
    plots.confusion_matrix(splits.test[1], y_pred, splits.class_names, os.path.join(run_dir, "confusion_matrix.png"))
    mlflow.log_artifact(os.path.join(run_dir, "confusion_matrix.png"))


def _log_mlflow_model(model, cfg: Config, example):
    """Log the inference model (raw pixels -> probabilities) with mlflow.keras and register it.

    It is saved in exported (SavedModel) form so that `mlflow models serve`
    needs TensorFlow only, not this project's custom layer classes.
    """
    import mlflow
    from mlflow.models import infer_signature

    from pipelines.export import inference_model

    infer = inference_model(model)
    x = example.astype("float32")
    signature = infer_signature(x, infer.predict(x, verbose=0))
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # ExportArchive prints every captured variable
        info = mlflow.keras.log_model(
            infer,
            name="model",
            signature=signature,
            save_exported_model=True,
            registered_model_name=cfg.registered_model_name if cfg.tracking.register_model else None,
        )
    return info


# ----------------------------------------------------------------------------- the job


def run(cfg: Config, callbacks=()) -> TrainResult:
    """Train, test, log and export the experiment `cfg`. `callbacks` are extra Keras callbacks."""
    import keras
    import mlflow
    import numpy as np
    from mlflow.exceptions import MlflowException

    from data.pipeline import make_datasets
    from pipelines import tracking
    from pipelines.export import export_model

    print(f"Devices: {describe_devices()}")
    keras.utils.set_random_seed(cfg.train.seed)
    splits = load_data(cfg)  # before the run directory: a bad source or store leaves nothing behind
    uri = tracking.setup(cfg.tracking.uri, cfg.experiment_name)
    run_dir, state = _prepare_run_dir(cfg)
    print(
        f"Data: {cfg.data.source}: train {len(splits.train[0])}, validation {len(splits.validation[0])}, "
        f"test {len(splits.test[0])} images of shape {splits.image_shape}, {splits.num_classes} classes"
    )
    augment = build_augmentation(cfg)
    train_ds, val_ds, test_ds = make_datasets(splits, cfg.data.batch_size, seed=cfg.data.seed, augment=augment)
    steps_per_epoch = math.ceil(len(splits.train[0]) / cfg.data.batch_size)

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
    _write_state(run_dir, mlflow_run_id=run_id, status="running")
    print(f"MLflow run {run_id} ({'resumed' if resumed else 'new'}) in {uri}; run dir {run_dir}")

    policy = "mixed_float16" if cfg.train.mixed_precision else "float32"
    previous_policy = keras.mixed_precision.global_policy().name
    try:
        if not resumed:
            mlflow.log_params({k: ("" if v is None else v) for k, v in cfg.flat().items()})
            mlflow.set_tags({"run_dir": os.path.abspath(run_dir), "devices": describe_devices()})
            mlflow.log_artifact(os.path.join(run_dir, "config.yaml"))
            if augment is not None:
                _log_augmentation_preview(cfg, splits, run_dir)

        model_path = os.path.join(run_dir, "model.keras")
        if state.get("trained") and os.path.isfile(model_path):
            print(f"Training had finished; loading {model_path}")
            model = keras.saving.load_model(model_path)
        else:
            keras.mixed_precision.set_global_policy(policy)
            import models

            with distribution_strategy().scope():
                model = models.build_model(
                    cfg.model.name, splits.image_shape, splits.num_classes, **cfg.model.params
                )
                compile_model(model, cfg, steps_per_epoch)
            print(f"Model {cfg.model.name}: {model.count_params():,} parameters")
            fit_callbacks = [
                tracking.MLflowEpochLogger(run_id),
                keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup")),
                keras.callbacks.TerminateOnNaN(),
                *callbacks,
            ]
            verbose = cfg.train.verbose if cfg.train.verbose == "auto" else int(cfg.train.verbose)
            history = model.fit(train_ds, validation_data=val_ds, epochs=cfg.train.epochs,
                                callbacks=fit_callbacks, verbose=verbose, shuffle=False)
            losses = history.history.get("loss", [])
            if losses and not all(np.isfinite(losses)):
                raise TrainingDivergedError(f"loss became {losses[-1]} in epoch {len(losses)}; training stopped "
                                            f"(train.learning_rate={cfg.train.learning_rate:g} too high?)")
            model.save(model_path)
            state = _write_state(run_dir, trained=True)

        # Each step after training records itself in state.json, so that a run resumed after a
        # crash in a later step neither logs its test metrics or model twice nor exports again.
        if "test_accuracy" in state:
            test_loss, test_acc = state["test_loss"], state["test_accuracy"]
        else:
            test_loss, test_acc = model.evaluate(test_ds, verbose=0)
            mlflow.log_metrics({"test_loss": float(test_loss), "test_accuracy": float(test_acc)})
            state = _write_state(run_dir, test_loss=float(test_loss), test_accuracy=float(test_acc))
        print(f"Test accuracy {test_acc:.4f}, test loss {test_loss:.4f}")
        if not state.get("model_logged"):
            _log_figures(run_id, model, splits, test_ds, run_dir)
            mlflow.log_artifact(model_path, artifact_path="keras_model")
            _log_mlflow_model(model, cfg, splits.test[0][:8])
            state = _write_state(run_dir, model_logged=True)

        export_path = state.get("export_path")
        if cfg.export.enabled and not export_path:
            export_path = export_model(model, cfg.export.dir, cfg.export_name, check_images=splits.test[0],
                                       tolerance=cfg.export.tolerance,
                                       extra_assets={"experiment.yaml": cfg.to_yaml()})
            mlflow.set_tag("export_path", os.path.abspath(export_path))
            state = _write_state(run_dir, export_path=export_path)
            print(f"Exported and verified SavedModel: {export_path}")

        if cfg.evaluate.enabled:
            _evaluate_invariance(model, cfg, splits, run_dir)

        mlflow.end_run(status="FINISHED")
        _write_state(run_dir, status="finished")
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            mlflow.set_tag("failure", f"{type(exc).__name__}: {exc}"[:4000])
        finally:
            mlflow.end_run(status=status)
        raise
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)

    return TrainResult(run_id, uri, run_dir, export_path, float(test_acc), float(test_loss))


def _log_augmentation_preview(cfg: Config, splits, run_dir: str):
    import mlflow

    from data.augment import preview_grid, save_png

    rgb = preview_grid(splits.train[0][:8], **cfg.augment.sections(), seed=cfg.train.seed,
                       title=f"{cfg.name}: augmentation preview")
    mlflow.log_artifact(save_png(rgb, os.path.join(run_dir, "augmentation_preview.png")))


def _evaluate_invariance(model, cfg: Config, splits, run_dir: str):
    """The invariance evaluation of pipelines/evaluate.py, logged to the active run."""
    from pipelines import evaluate

    evaluate.evaluate_in_training(model, cfg, splits, run_dir)


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
    print(f"Test accuracy:   {result.test_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
