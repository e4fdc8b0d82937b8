"""`make evaluate`: how far a trained model keeps the invariances its layers promise.

    python -m pipelines.evaluate --run <MLflow run id | export path> [key=value ...]

On the experiment's test split (at most `evaluate.max_images` images, a seeded
subset) it measures, with the metrics of pipelines/invariance.py:

- the rotation curve: accuracy at input rotations 0, 15, ..., 345 degrees;
- shift consistency (Zhang 2019: two random shifts of each image within
  +-`evaluate.shift_range` pixels, pad-and-crop, percent of equal predictions)
  and circular consistency (the same with circular shifts, as `np.roll`);
- elastic robustness: accuracy against the elastic-warp strength alpha;
- accuracy on mirrored test images (left-right, up-down, transposed);
- for models with equivariant layers (harmonic, group, scale convolutions),
  each one's equivariance error at the group elements it promises among
  `evaluate.equivariance_angles` (models/equivariance.py, one protocol);

and draws the learned first-layer filters (for harmonic layers: real and
imaginary parts per rotation order). It prints a table, writes it with the
curves as PNG files to a report directory, and logs the figures as metrics
(`rot_acc_000` ... `rot_acc_345`, `shift_consistency`, `circular_consistency`,
`elastic_acc_<alpha>`, `mirror_acc_lr`, `equiv_err_<family>_<layer>_<element>`) and the files as artifacts
under `evaluation/` of the MLflow run. `make train` runs it at the end unless
`evaluate.enabled=false`.

RUN is either an MLflow run id of a training run (its config.yaml and
its Keras model (in its MLflow model) are downloaded; results are logged to that run, whose
status is left as it was; report in reports/run-<id>/), or an export path
(`exports/<name>` for its highest version, or `exports/<name>/<version>`): the
SavedModel's serving signature is evaluated on the test split named by its
`assets.extra/experiment.yaml`, report in reports/<name>-v<version>/ (a later
evaluation of the same run or version writes <dir>-1/, -2/, ...). A
SavedModel has no layers to look into, so the equivariance errors and
the filter pictures need the run id. The exported model takes uint8 pixels, so
transformed images are rounded to uint8 before they reach it.

Config overrides (`evaluate.max_images=500`, `data.source=npz:...`) apply to
the stored experiment config.
"""

from __future__ import annotations

import argparse
import os
import tempfile

from pipelines.cli import exit_job, run_main
from pipelines.errors import UserError

def evaluate_run(run_id: str, tracking_uri: str | None = None, overrides=(), reports_dir: str = "reports"):
    """Evaluate the Keras model of training run `run_id`; log to it. Returns (Evaluation, report dir, files)."""
    # Here, not at the top: `--help` answers without loading TensorFlow (seconds).
    from data.streaming import naming_bad_data
    from pipelines.evaluation import (ARTIFACT_DIR, evaluate, full_run_id, keras_predictor, log_to_run, new_report_dir,
                                      test_subset, tune_run_error, unfinished_run_error, write_report)
    from pipelines.experiment import load_data, load_keras_model
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines import tracking
    from pipelines.config import load_config

    tracking.quiet_mlflow()
    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)  # an unreachable server: one error in seconds, not minutes of MLflow's retries
    tracking.check_store_exists(uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    run_id = full_run_id(client, run_id, uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no MLflow run {run_id!r} in the tracking store {uri}") from None
    if run.info.lifecycle_stage == "deleted":
        raise UserError(f"MLflow run {run_id} is deleted")
    if (why := tune_run_error(client, run) or unfinished_run_error(run)) is not None:
        raise why
    with tempfile.TemporaryDirectory() as tmp:
        try:
            cfg_path = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="config.yaml", dst_path=tmp)
        except (MlflowException, OSError):
            raise UserError(f"MLflow run {run_id} has no config.yaml artifact; is it a `make train` run?") from None
        cfg = load_config(cfg_path, list(overrides))
        keras_path, class_names = _run_keras_model(run_id, tmp)
        model = load_keras_model(keras_path)
    splits = load_data(cfg)
    _check_classes(class_names, splits.class_names, f"MLflow run {run_id}", cfg.data.source)
    _check_shape(model.input_shape[1:], splits.image_shape, f"MLflow run {run_id}'s model", cfg.data.source)
    with naming_bad_data(splits):
        test = test_subset(splits, cfg.evaluate)
    ev = evaluate(keras_predictor(model, cfg.evaluate.batch_size), *test, cfg.evaluate, model=model,
                  class_names=splits.class_names)
    title = f"{cfg.name} (run {run_id[:8]}): invariance on the test split ({cfg.data.source})"
    print(ev.table(title))
    out_dir = new_report_dir(reports_dir, f"run-{run_id[:8]}")
    files = write_report(ev, out_dir, title, model=model)
    import keras

    described = f"make evaluate on {keras.backend.backend()}, {cfg.data.source}, {' '.join(overrides)}".strip(", ")
    k = log_to_run(run_id, ev, files, description=described, data=cfg.data.source)
    folder = ARTIFACT_DIR if k == 0 else f"{ARTIFACT_DIR}-{k}"
    print(f"\nLogged evaluation {k} of the run: {len(ev.metrics())} metrics at step {k} and {len(files)} files "
          f"(artifacts/{folder}/) to MLflow run {run_id}")
    return ev, out_dir, files


def _run_keras_model(run_id: str, tmp: str) -> tuple[str, list[str] | None]:
    """The local path of run `run_id`'s Keras model and its class names: inside its MLflow model (`model`), or,
    for runs logged before it held the model, the artifact keras_model/model.keras (class names unknown)."""
    import json

    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines.serving.mlflow_serve import keras_model_path

    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/model", dst_path=tmp)
        if os.path.isfile(keras_model_path(local)):
            try:
                with open(os.path.join(local, "artifacts", "class_names.json"), encoding="utf-8") as fh:
                    return keras_model_path(local), json.load(fh)
            except (OSError, ValueError):
                return keras_model_path(local), None  # the model without its class names: not checked
    except (MlflowException, OSError):
        pass
    try:
        return mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path="keras_model/model.keras",
                                                   dst_path=tmp), None
    except (MlflowException, OSError):
        raise UserError(f"MLflow run {run_id} has no trained model (its MLflow model `model`); is it a `make "
                        "train` run whose training finished?") from None


def _check_classes(model_names, data_names, what: str, source: str) -> None:
    """One error where the test data's classes are not the model's, in its order (class ids would be scored
    against another class's answers: a folder that lost a class since training scored 0% for a model at 100%)."""
    from pipelines.export import _short

    if model_names is None:  # an export or run from before the class names were kept
        return
    model, data = [str(c) for c in model_names], [str(c) for c in data_names]
    if model == data:
        return
    missing, extra = [c for c in model if c not in data], [c for c in data if c not in model]
    why = "; ".join(([f"it lacks {_short(missing)}"] if missing else [])
                    + ([f"it has {_short(extra)}, which the model does not answer"] if extra else [])) or (
        f"they are in another order: {_short(data)} against the model's {_short(model)}")
    raise UserError(f"the test data ({source}) does not have the classes {what} answers: {why}. Its answers "
                    "would be scored against other classes' labels; evaluate it on data with the classes it was "
                    "trained on (ARGS=\"data.source=...\")")


def _check_shape(model_shape, data_shape, what: str, source: str) -> None:
    """One error where the test images are not of the shape the model takes (it was a traceback from inside the
    model); `model_shape` None (unknown) or with None sides (any size) passes."""
    if model_shape is None:
        return
    model, data = tuple(model_shape), tuple(int(d) for d in data_shape)
    if len(model) == len(data) and all(m is None or m == d for m, d in zip(model, data)):
        return
    raise UserError(f"the test images ({source}) are {' x '.join(map(str, data))}, and {what} takes "
                    f"{' x '.join('any' if m is None else str(m) for m in model)}: give the data its size "
                    "(ARGS=\"data.image_size=[H,W] data.channels=C\")")


def evaluate_export(path: str, overrides=(), reports_dir: str = "reports"):
    """Evaluate an exported SavedModel on its experiment's test split. Returns (Evaluation, report dir, files)."""
    from data.streaming import naming_bad_data
    from pipelines.evaluation import evaluate, new_report_dir, savedmodel_class_predictor, test_subset, write_report
    from pipelines.export import version_signature
    from pipelines.experiment import load_data

    from pipelines.config import load_config
    from pipelines.export_paths import resolve_export
    from pipelines.serving.savedmodel import read_labels

    version_dir = resolve_export(path)
    cfg_path = os.path.join(version_dir, "assets.extra", "experiment.yaml")
    if not os.path.isfile(cfg_path):
        raise UserError(
            f"{version_dir} has no assets.extra/experiment.yaml, so its test split is unknown; "
            "evaluate its MLflow run id instead"
        )
    cfg = load_config(cfg_path, list(overrides))
    predict = savedmodel_class_predictor(version_dir, cfg.evaluate.batch_size)
    splits = load_data(cfg)
    _check_classes(read_labels(version_dir), splits.class_names, version_dir, cfg.data.source)
    _check_shape((version_signature(version_dir) or {}).get("input_shape"), splits.image_shape, version_dir,
                 cfg.data.source)
    with naming_bad_data(splits):
        test = test_subset(splits, cfg.evaluate)
    ev = evaluate(predict, *test, cfg.evaluate, class_names=splits.class_names)
    name = os.path.basename(os.path.dirname(os.path.abspath(version_dir)))
    folder = os.path.basename(version_dir)
    version = int(folder) if folder.isascii() and folder.isdigit() else folder  # `07` is served as version 7
    title = f"{name} v{version} (SavedModel): invariance on the test split ({cfg.data.source})"
    print(ev.table(title))
    out_dir = new_report_dir(reports_dir, f"{name}-v{version}")
    files = write_report(ev, out_dir, title)
    return ev, out_dir, files


# ----------------------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="make evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True,
                   help="MLflow run id of a training run (or its first 6 or more digits), or an export path")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <project>/mlflow.db)")
    p.add_argument("--reports-dir", default="reports", help="where report directories are written")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the stored config, e.g. evaluate.max_images=500")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    target = args.run.strip()
    if not target:
        raise UserError("give RUN=<MLflow run id or export path>, e.g. make evaluate RUN=exports/default")
    from pipelines.export_paths import is_export_path
    from pipelines.rundir import RUN_ID_START

    if is_export_path(target):
        _, out_dir, files = evaluate_export(target, args.overrides, args.reports_dir)
    elif RUN_ID_START.fullmatch(target):  # a run id, or its first digits (evaluation.full_run_id)
        _, out_dir, files = evaluate_run(target, args.tracking_uri, args.overrides, args.reports_dir)
    else:
        raise UserError(f"{target!r} is neither an MLflow run id (32 hex digits, or the first 6 or more) nor an "
                        "existing export path")
    print(f"Report: {os.path.abspath(out_dir)}")
    for f in files:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    exit_job(run_main(main))
