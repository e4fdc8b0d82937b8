"""An export path given to `make evaluate` or `make compare`: its version folder, and the MLflow run that wrote it."""

from __future__ import annotations

import json
import os

from pipelines.errors import UserError


def is_export_path(name: str) -> bool:
    """Whether `name`, given where a run id or an export may stand, is an export path (it exists, or has a `/`).
    A folder here whose name also starts a run id is one error: `./<name>` says which."""
    from pipelines.rundir import RUN_ID_START

    if not (os.path.exists(name) or os.sep in name):
        return False
    if RUN_ID_START.fullmatch(name):
        raise UserError(f"{name!r} is both a folder here and the start of an MLflow run id: give ./{name} for the "
                        "folder, or more of the run id")
    return True


def resolve_export(path: str) -> str:
    """The version directory of an export path (a version, or a model directory: its highest version that holds a
    SavedModel, the one a server serves)."""
    path = os.path.normpath(path)
    if not os.path.exists(path):
        raise UserError(f"export path {path} does not exist")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    from pipelines.export import published_versions  # TensorFlow's import: only for a path that is no version

    versions = published_versions(path)
    if not versions:
        raise UserError(f"{path} holds no SavedModel (no saved_model.pb, and no numeric version directory with one)")
    return versions[0][1]


def export_run_id(path: str) -> str:
    """The MLflow run that trained and published the export at `path` (its assets.extra/metrics.json)."""
    version_dir = resolve_export(path)
    try:
        with open(os.path.join(version_dir, "assets.extra", "metrics.json"), encoding="utf-8") as fh:
            run_id = json.load(fh).get("mlflow_run_id")
    except (OSError, ValueError, AttributeError):
        run_id = None
    if not run_id:
        raise UserError(f"{version_dir} does not name the MLflow run that trained it (no mlflow_run_id in "
                        "assets.extra/metrics.json): give that run's id, or `make evaluate RUN=<the export>`")
    return run_id
