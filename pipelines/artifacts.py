"""What a training run logs to MLflow besides its per-epoch metrics.

The resolved config, the augmentation preview, the training curves and
confusion matrix, the Keras model and the MLflow inference model (registered
under the config's name). Every function logs to the active MLflow run.
"""

from __future__ import annotations

import contextlib
import io
import os

import numpy as np

from pipelines import plots, tracking
from pipelines.config import Config


def log_augmentation_preview(cfg: Config, splits, run_dir: str) -> str:
    """The grid of `make preview`, drawn with the training seed (`train.seed`)."""
    import mlflow

    rgb = plots.preview_grid(splits.train.arrays(8)[0], **cfg.augment.sections(), seed=cfg.train.seed,
                             title=f"{cfg.name}: augmentation preview")
    path = plots.save_png(rgb, os.path.join(run_dir, "augmentation_preview.png"))
    mlflow.log_artifact(path)
    return path


def log_figures(run_id: str, model, splits, test_ds, run_dir: str) -> None:
    """Training curves and the test confusion matrix, as PNG artifacts.

    `test_ds` is the test split in its stored order (unshuffled), so the
    predictions line up with `splits.test.labels()` (read without decoding).
    """
    import mlflow

    history = tracking.metric_history(run_id)
    mlflow.log_artifact(plots.training_curves(history, os.path.join(run_dir, "training_curves.png")))
    logits = model.predict(test_ds, verbose=0)
    y_pred = np.argmax(logits, axis=-1)
    path = os.path.join(run_dir, "confusion_matrix.png")
    y_true = splits.test.labels()
    if len(y_true) != len(y_pred):  # data.skip_bad_images dropped a file that only failed while decoding
        print(f"Confusion matrix skipped: {len(y_pred)} test images read, {len(y_true)} listed")
        return
    plots.confusion_matrix(y_true, y_pred, splits.class_names, path)
    if os.path.isfile(path):
        mlflow.log_artifact(path)


def log_mlflow_model(model, cfg: Config, example: np.ndarray):
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
    with contextlib.redirect_stdout(io.StringIO()):  # ExportArchive prints every captured variable
        return mlflow.keras.log_model(
            infer,
            name="model",
            signature=signature,
            save_exported_model=True,
            registered_model_name=cfg.registered_model_name if cfg.tracking.register_model else None,
        )
