"""What a training run logs to MLflow besides its per-epoch metrics.

The resolved config, the augmentation preview, the training curves and
confusion matrix, the Keras model and the MLflow inference model (registered
under the config's name). Every function logs to the active MLflow run.
"""

from __future__ import annotations

import os
import warnings

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


def log_mlflow_model(model, cfg: Config, splits, example: np.ndarray, keras_path: str, register: bool = True):
    """Log the run's Keras model (saved at `keras_path`) as its MLflow model and, if `register`, register it
    (`register_mlflow_model`). Returns MLflow's ModelInfo.

    The MLflow model is the run's one copy of the trained model: it holds
    `model.keras` (for `make evaluate`, resume and fine-tuning) and answers
    like the export (uint8 images -> `probabilities`, `class_id`,
    `class_name`; pipelines/serving/mlflow_serve.py), so that `mlflow models
    serve` and `make serve` take and answer the same.
    """
    from pipelines.serving.mlflow_serve import log_keras_model

    info = log_keras_model(model, keras_path, splits.class_names, example)
    if register:
        register_mlflow_model(cfg, splits, info.model_uri)
    return info


def register_mlflow_model(cfg: Config, splits, model_uri: str, export_version: str | None = None) -> None:
    """Register the logged model `model_uri` as a new version of the run's registered model (unless
    `tracking.register_model` is off), tagged with its class names, input shape, data source and, for a
    published model, the export's version number."""
    import json

    import mlflow

    if not cfg.tracking.register_model:
        return
    version = mlflow.register_model(model_uri, cfg.registered_model_name).version
    tags = {"class_names": json.dumps(list(splits.class_names)), "num_classes": str(splits.num_classes),
            "input_shape": json.dumps(list(splits.image_shape)), "data.source": cfg.data.source,
            **({"export_version": export_version} if export_version is not None else {})}
    client = mlflow.MlflowClient()
    for k, v in tags.items():
        client.set_model_version_tag(cfg.registered_model_name, str(version), k, v)


def log_dataset(cfg: Config, splits) -> None:
    """The run's data as an MLflow dataset input: its source, a digest of its content, counts and class names."""
    import hashlib
    import json

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    from data.sources import local_path
    from pipelines.config import name_from_source

    info = splits.info
    digest = hashlib.sha256(json.dumps([splits.content_key, list(info.class_names), info.total_counts],
                                       sort_keys=True).encode()).hexdigest()[:16]
    kind, _, where = cfg.data.source.partition(":")
    path = local_path(cfg.data.source)
    if path is not None:  # files (the registry says which sources read them): MLflow's local source
        # MLflow warns at every run that a path "can be interpreted in multiple ways", then takes its local
        # artifact source (LocalArtifactDatasetSource), the one meant here: the warning says nothing to a user
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(os.path.abspath(path))
    else:  # synthetic, tfds:<name>: made by code
        source = CodeDatasetSource({"data.source": cfg.data.source})
    dataset = MetaDataset(
        source,
        name=name_from_source(cfg.data.source) if where else kind,
        digest=digest,
        schema=Schema([TensorSpec(np.dtype(np.uint8), (-1, *info.image_shape), "image")]),
    )
    tags = {"counts": json.dumps(info.total_counts),  # MLflow keeps 500 characters of an input tag
            "class_names": json.dumps(list(info.class_names))[:500],
            "num_classes": str(info.num_classes)}
    mlflow.log_input(dataset, context="training", tags=tags)
