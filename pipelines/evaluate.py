"""`make evaluate`: how far a trained model keeps the invariances its layers promise.

    python -m pipelines.evaluate --run <MLflow run id | export path> [key=value ...]

On the experiment's test split (at most `evaluate.max_images` images, a seeded
subset) it measures, with the metrics of pipelines/invariance.py:

- the rotation curve: accuracy at input rotations 0, 15, ..., 345 degrees;
- shift consistency (Zhang 2019: two random shifts of each image within
  +-`evaluate.shift_range` pixels, pad-and-crop, percent of equal predictions)
  and circular consistency (the same with circular shifts, `np.roll`);
- elastic robustness: accuracy against the elastic-warp strength alpha;
- for models with harmonic convolutions, each one's rotation-equivariance
  error at `evaluate.equivariance_angles`;

and draws the learned first-layer filters (for harmonic layers: real and
imaginary parts per rotation order). It prints a table, writes it with the
curves as PNG files to a report directory, and logs the figures as metrics
(`rot_acc_000` ... `rot_acc_345`, `shift_consistency`, `circular_consistency`,
`elastic_acc_<alpha>`, `equiv_err_<layer>_<angle>`) and the files as artifacts
under `evaluation/` of the MLflow run. `make train` runs it at the end unless
`evaluate.enabled=false`.

RUN is either an MLflow run id of a training run (its config.yaml and
keras_model/model.keras are downloaded; results are logged to that run, whose
status is left as it was; report in reports/run-<id>/), or an export path
(`exports/<name>` for its highest version, or `exports/<name>/<version>`): the
SavedModel's serving signature is evaluated on the test split named by its
`assets.extra/experiment.yaml`, report in reports/<name>-v<version>/. A
SavedModel has no layers to look into, so the harmonic equivariance errors and
the filter pictures need the run id. The exported model takes uint8 pixels, so
transformed images are rounded to uint8 before they reach it.

Config overrides (`evaluate.max_images=500`, `data.source=npz:...`) apply to
the stored experiment config.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

from pipelines import invariance as inv
from pipelines.cli import run_main
from pipelines.errors import UserError
from pipelines.plots import save

ARTIFACT_DIR = "evaluation"


@dataclass
class Evaluation:
    """The figures of one evaluation (accuracies and consistencies are fractions in [0, 1])."""

    n_images: int
    rotation: dict  # angle (degrees) -> accuracy
    shift_consistency: float
    circular_consistency: float
    shift_range: int
    elastic: dict  # alpha -> accuracy
    elastic_sigma: float
    equivariance: dict = field(default_factory=dict)  # layer name -> {angle: relative error}

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics."""
        m = {f"rot_acc_{int(a):03d}": v for a, v in self.rotation.items()}
        rot = list(self.rotation.values())
        m.update(rot_acc_mean=float(np.mean(rot)), rot_acc_min=float(np.min(rot)))
        m.update(shift_consistency=self.shift_consistency, circular_consistency=self.circular_consistency)
        m.update({f"elastic_acc_{a:g}": v for a, v in self.elastic.items()})
        for layer, errs in self.equivariance.items():
            m.update({f"equiv_err_{layer}_{a:g}": e for a, e in errs.items()})
        if self.equivariance:
            angles = next(iter(self.equivariance.values())).keys()
            for a in angles:
                m[f"equiv_err_mean_{a:g}"] = float(np.mean([e[a] for e in self.equivariance.values()]))
        m["eval_images"] = float(self.n_images)
        return m

    def rows(self) -> list[tuple[str, str]]:
        """(figure, value) rows of the printed table."""
        pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
        rot = self.rotation
        rows = [("test images evaluated", str(self.n_images)), ("accuracy (unchanged inputs)", pct(rot[0]))]
        quarter = [a for a in (0, 90, 180, 270) if a in rot]
        rows.append((f"accuracy at {'/'.join(map(str, quarter))} deg", " / ".join(pct(rot[a]) for a in quarter)))
        low = min(rot, key=rot.get)
        rows.append((f"rotation: mean over {len(rot)} angles", pct(float(np.mean(list(rot.values()))))))
        rows.append(("rotation: worst angle", f"{pct(rot[low])} at {int(low)} deg"))
        rows.append((f"shift consistency (+-{self.shift_range} px, pad-and-crop)", pct(self.shift_consistency)))
        rows.append((f"circular consistency (+-{self.shift_range} px, roll)", pct(self.circular_consistency)))
        for a, v in self.elastic.items():
            rows.append((f"elastic alpha={a:g} px (sigma {self.elastic_sigma:g})", pct(v)))
        for layer, errs in self.equivariance.items():
            rows.append((f"equivariance error {layer}", ", ".join(f"{e:.2e} @ {a:g} deg" for a, e in errs.items())))
        return rows

    def table(self, title: str) -> str:
        rows = self.rows()
        width = max(len(r[0]) for r in rows)
        curve = "  ".join(f"{int(a)}:{100 * v:.0f}" for a, v in self.rotation.items())
        return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows), f"  rotation curve (deg:%)  {curve}"])

    def markdown(self, title: str) -> str:
        lines = [f"# {title}", "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in self.rows()]
        lines += ["", "| rotation (deg) | accuracy |", "|---:|---:|"]
        lines += [f"| {int(a)} | {100 * v:.2f}% |" for a, v in self.rotation.items()]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- models as predictors


def keras_predictor(model, batch_size: int = 256):
    """Class ids of a Keras model (float images in [0, 1] -> logits)."""

    import tensorflow as tf

    # One traced function over fixed-size batches (the last one zero-padded):
    # `model.predict` would retrace for every new input size and warn about it.
    call = tf.function(lambda x: tf.argmax(model(x, training=False), axis=-1))

    def predict(images):
        x = np.asarray(images, np.float32)
        out = []
        for i in range(0, len(x), batch_size):
            b = x[i : i + batch_size]
            n = len(b)
            if n < batch_size:
                b = np.concatenate([b, np.zeros((batch_size - n,) + b.shape[1:], np.float32)])
            out.append(call(tf.constant(b)).numpy()[:n])
        return np.concatenate(out) if out else np.zeros((0,), np.int64)

    return predict


def savedmodel_predictor(path: str, batch_size: int = 256):
    """Class ids of an exported SavedModel's `serving_default` (uint8 images); floats are rounded to uint8."""
    import tensorflow as tf

    try:
        fn = tf.saved_model.load(path).signatures["serving_default"]
    except (OSError, KeyError, ValueError) as e:
        raise UserError(f"{path}: not a loadable SavedModel with a serving_default signature ({e})") from None

    def predict(images):
        x = np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
        out = [fn(image=tf.constant(x[i : i + batch_size]))["class_id"].numpy() for i in range(0, len(x), batch_size)]
        return np.concatenate(out) if out else np.zeros((0,), np.int64)

    return predict


def import_custom_layers() -> None:
    """Import every module of layers/ (and the model builders), which registers the custom layers."""
    import importlib
    import pkgutil

    import layers
    import models  # noqa: F401

    for mod in pkgutil.iter_modules(layers.__path__):
        importlib.import_module(f"layers.{mod.name}")
    try:
        import data.augment  # noqa: F401  (its layers are serializable too)
    except ImportError:
        pass


def load_keras_model(path: str):
    import keras

    import_custom_layers()
    return keras.saving.load_model(path, compile=False)


# ----------------------------------------------------------------------------- the evaluation


def eval_subset(images: np.ndarray, labels: np.ndarray, max_images: int, seed: int):
    """At most `max_images` (a seeded subset, in the split's order) as float32 in [0, 1]."""
    n = len(images)
    if n > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
        images, labels = images[idx], labels[idx]
    x = np.asarray(images, np.float32)
    if np.asarray(images).dtype == np.uint8:
        x = x / 255.0
    return x, np.asarray(labels)


def evaluate(predict, images, labels, ecfg, model=None) -> Evaluation:
    """All invariance figures of `predict` on (`images` uint8 or float in [0, 1], `labels`).

    `ecfg` is a `pipelines.config.EvaluateConfig`; `model`, a Keras model, adds
    the equivariance errors of its harmonic convolutions.
    """
    x, y = eval_subset(images, labels, ecfg.max_images, ecfg.seed)
    if len(x) == 0:
        raise UserError("the test split is empty; nothing to evaluate")
    rotation = inv.rotation_curve(predict, x, y, inv.rotation_angles(ecfg.rotation_step))
    shift_c = inv.shift_consistency(predict, x, ecfg.shift_range, seed=ecfg.seed, mode="pad")
    circ_c = inv.shift_consistency(predict, x, ecfg.shift_range, seed=ecfg.seed + 1, mode="circular")
    elastic = inv.elastic_curve(predict, x, y, ecfg.elastic_alphas, ecfg.elastic_sigma, seed=ecfg.seed)
    equiv = {}
    if model is not None and inv.harmonic_layers(model):
        equiv = inv.harmonic_equivariance(model, x[: ecfg.equivariance_images], ecfg.equivariance_angles)
    return Evaluation(len(x), rotation, shift_c, circ_c, ecfg.shift_range, elastic, ecfg.elastic_sigma, equiv)


# ----------------------------------------------------------------------------- pictures


def _plt():
    from pipelines.plots import plt  # matplotlib on its Agg backend

    return plt


def plot_rotation_curve(curves: dict[str, dict], path: str, title: str = "accuracy under input rotation") -> str:
    """One or more rotation curves (label -> {angle: accuracy}) as a PNG."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    for label, curve in curves.items():
        angles = sorted(curve)
        ax.plot(angles + [360], [curve[a] for a in angles] + [curve[angles[0]]], "-o", markersize=3, label=label)
    ax.set_xticks(range(0, 361, 45))
    for a in (90, 180, 270):
        ax.axvline(a, color="grey", lw=0.5, alpha=0.5)
    ax.set_xlim(0, 360)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("input rotation (degrees, counter-clockwise)")
    ax.set_ylabel("test accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_elastic_curve(ev: Evaluation, path: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    alphas = list(ev.elastic)
    ax.plot(alphas, [ev.elastic[a] for a in alphas], "-o")
    ax.set_xlabel(f"elastic warp alpha (pixels; sigma {ev.elastic_sigma:g})")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("accuracy under elastic deformation")
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_equivariance(ev: Evaluation, path: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    names = list(ev.equivariance)
    angles = list(next(iter(ev.equivariance.values())))
    width = 0.8 / max(1, len(angles))
    for j, a in enumerate(angles):
        vals = [max(ev.equivariance[n][a], 1e-9) for n in names]
        ax.bar(np.arange(len(names)) + j * width, vals, width, label=f"{a:g} deg")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(names)) + width * (len(angles) - 1) / 2, names, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("relative L2 error (central disk)")
    ax.set_title("rotation equivariance error per harmonic layer")
    ax.legend(fontsize=8)
    return save(fig, path)


def _walk_layers(model):
    for layer in getattr(model, "layers", []):
        yield layer
        if hasattr(layer, "layers"):
            yield from _walk_layers(layer)


def first_filters(model):
    """(title, rows of (row label, [k, k, n] array)) of the model's first learned filters, or None.

    Harmonic convolution: its complex filters for the first input stream and
    channel, one row per output rotation order and part (real, imaginary).
    Other convolutions: the first 4-D kernel, averaged over input channels.
    """
    for layer in _walk_layers(model):
        if inv.is_harmonic_conv(layer):
            k = np.asarray(layer.block_filter(), np.float32)
            in_orders = getattr(layer, "_in_orders", (0,))
            parts = getattr(layer, "_in_parts", 1)
            c_in = k.shape[2] // (len(in_orders) * parts)
            k = k.reshape(k.shape[:2] + (len(in_orders), parts, c_in, len(layer.orders), 2, -1))[:, :, 0, 0, 0]
            rows = []
            for qi, q in enumerate(layer.orders):
                m = q - in_orders[0]
                rows.append((f"m={m} re", k[:, :, qi, 0]))
                rows.append((f"m={m} im", k[:, :, qi, 1]))
            return f"{layer.name} ({type(layer).__name__}): filters per rotation order m", rows
        for w in getattr(layer, "weights", []):
            if len(w.shape) == 4 and "kernel" in w.path.split("/")[-1]:
                k = np.asarray(w.numpy(), np.float32).mean(axis=2)  # [k, k, out]
                n = min(k.shape[-1], 32)
                rows = [(f"{i}-{min(i + 8, n) - 1}", k[:, :, i : min(i + 8, n)]) for i in range(0, n, 8)]
                return f"{layer.name} ({type(layer).__name__}) {w.path.split('/')[-1]}, mean over input channels", rows
    return None


def plot_filters(model, path: str, max_cols: int = 8) -> str | None:
    found = first_filters(model)
    if found is None:
        return None
    title, rows = found
    plt = _plt()
    cols = min(max_cols, max(r[1].shape[-1] for r in rows))
    fig, axes = plt.subplots(len(rows), cols, figsize=(max(1.1 * cols + 0.8, 4.5), 1.1 * len(rows) + 0.6), squeeze=False)
    lim = max(float(np.abs(r[1]).max()) for r in rows) or 1.0
    for i, (label, kernels) in enumerate(rows):
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j < kernels.shape[-1]:
                ax.imshow(kernels[:, :, j], cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(label, fontsize=7)
    fig.suptitle(title, fontsize=8)
    return save(fig, path)


def write_report(ev: Evaluation, out_dir: str, title: str, model=None) -> list[str]:
    """Table (markdown, JSON metrics) and PNGs in `out_dir`; return the paths written."""
    os.makedirs(out_dir, exist_ok=True)
    files = []
    p = os.path.join(out_dir, "invariance.md")
    with open(p, "w") as fh:
        fh.write(ev.markdown(title))
    files.append(p)
    p = os.path.join(out_dir, "invariance.json")
    with open(p, "w") as fh:
        json.dump(ev.metrics(), fh, indent=2)
    files.append(p)
    files.append(plot_rotation_curve({title: ev.rotation}, os.path.join(out_dir, "rotation_curve.png")))
    files.append(plot_elastic_curve(ev, os.path.join(out_dir, "elastic_curve.png")))
    if ev.equivariance:
        files.append(plot_equivariance(ev, os.path.join(out_dir, "harmonic_equivariance.png")))
    if model is not None:
        p = plot_filters(model, os.path.join(out_dir, "filters.png"))
        if p:
            files.append(p)
    return files


def log_to_run(run_id: str, ev: Evaluation, files: list[str]) -> None:
    """Log metrics and files to MLflow run `run_id` (of the current tracking URI) without changing its status.

    Besides the flat metrics, the rotation curve is logged as `rotation_accuracy`
    with step = angle, which MLflow's UI draws as a curve.
    """
    import time

    import mlflow
    from mlflow.entities import Metric

    client = mlflow.MlflowClient()
    now = int(time.time() * 1000)
    metrics = [Metric(k, float(v), now, 0) for k, v in ev.metrics().items()]
    metrics += [Metric("rotation_accuracy", float(v), now, int(a)) for a, v in ev.rotation.items()]
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500])
    for f in files:
        client.log_artifact(run_id, f, artifact_path=ARTIFACT_DIR)


# ----------------------------------------------------------------------------- the three entries


def evaluate_in_training(model, cfg, splits, run_dir: str) -> Evaluation:
    """Called by `make train` inside its active MLflow run."""
    import mlflow

    ev = evaluate(keras_predictor(model, cfg.evaluate.batch_size), *splits.test, cfg.evaluate, model=model)
    title = f"{cfg.name}: invariance on the test split ({cfg.data.source})"
    print(ev.table(title))
    files = write_report(ev, os.path.join(run_dir, ARTIFACT_DIR), title, model=model)
    active = mlflow.active_run()
    if active is not None:
        log_to_run(active.info.run_id, ev, files)
    return ev


def evaluate_run(run_id: str, tracking_uri: str | None = None, overrides=(), reports_dir: str = "reports"):
    """Evaluate the Keras model of training run `run_id`; log to it. Returns (Evaluation, report dir, files)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines import tracking
    from pipelines.config import load_config
    from pipelines.train import load_data

    tracking.quiet_mlflow()
    uri = tracking.tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(f"no MLflow run {run_id!r} in the tracking store {uri}") from None
    if run.info.lifecycle_stage == "deleted":
        raise UserError(f"MLflow run {run_id} is deleted")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {}
        for name, what in (("config.yaml", "config.yaml artifact"),
                           ("keras_model/model.keras", "trained model (artifact keras_model/model.keras)")):
            try:
                paths[name] = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=name, dst_path=tmp)
            except (MlflowException, OSError):
                raise UserError(
                    f"MLflow run {run_id} has no {what}; is it a `make train` run whose training finished?"
                ) from None
        cfg = load_config(paths["config.yaml"], list(overrides))
        model = load_keras_model(paths["keras_model/model.keras"])
    splits = load_data(cfg)
    ev = evaluate(keras_predictor(model, cfg.evaluate.batch_size), *splits.test, cfg.evaluate, model=model)
    title = f"{cfg.name} (run {run_id[:8]}): invariance on the test split ({cfg.data.source})"
    print(ev.table(title))
    out_dir = os.path.join(reports_dir, f"run-{run_id[:8]}")
    files = write_report(ev, out_dir, title, model=model)
    log_to_run(run_id, ev, files)
    print(f"\nLogged {len(ev.metrics())} metrics and {len(files)} files (artifacts/{ARTIFACT_DIR}/) to MLflow run {run_id}")
    return ev, out_dir, files


def resolve_export(path: str) -> str:
    """The version directory of an export path (a version, or a model directory: its highest version)."""
    from pipelines.export import version_dirs

    path = os.path.normpath(path)
    if not os.path.exists(path):
        raise UserError(f"export path {path} does not exist")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = version_dirs(path)
    if not versions:
        raise UserError(f"{path} holds no SavedModel (no saved_model.pb and no numeric version directories)")
    return os.path.join(path, str(versions[-1]))


def evaluate_export(path: str, overrides=(), reports_dir: str = "reports"):
    """Evaluate an exported SavedModel on its experiment's test split. Returns (Evaluation, report dir, files)."""
    from pipelines.config import load_config
    from pipelines.train import load_data

    version_dir = resolve_export(path)
    cfg_path = os.path.join(version_dir, "assets.extra", "experiment.yaml")
    if not os.path.isfile(cfg_path):
        raise UserError(
            f"{version_dir} has no assets.extra/experiment.yaml, so its test split is unknown; "
            "evaluate its MLflow run id instead"
        )
    cfg = load_config(cfg_path, list(overrides))
    predict = savedmodel_predictor(version_dir, cfg.evaluate.batch_size)
    splits = load_data(cfg)
    ev = evaluate(predict, *splits.test, cfg.evaluate)
    name = os.path.basename(os.path.dirname(os.path.abspath(version_dir)))
    version = os.path.basename(version_dir)
    title = f"{name} v{version} (SavedModel): invariance on the test split ({cfg.data.source})"
    print(ev.table(title))
    out_dir = os.path.join(reports_dir, f"{name}-v{version}")
    files = write_report(ev, out_dir, title)
    return ev, out_dir, files


# ----------------------------------------------------------------------------- CLI

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="make evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="MLflow run id of a training run, or an export path")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or ./mlflow.db)")
    p.add_argument("--reports-dir", default="reports", help="where report directories are written")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides of the stored config, e.g. evaluate.max_images=500")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    target = args.run.strip()
    if not target:
        raise UserError("give RUN=<MLflow run id or export path>, e.g. make evaluate RUN=exports/default")
    if os.path.exists(target) or os.sep in target:
        _, out_dir, files = evaluate_export(target, args.overrides, args.reports_dir)
    elif _RUN_ID.match(target):
        _, out_dir, files = evaluate_run(target, args.tracking_uri, args.overrides, args.reports_dir)
    else:
        raise UserError(f"{target!r} is neither an MLflow run id (32 hex digits) nor an existing export path")
    print(f"Report: {os.path.abspath(out_dir)}")
    for f in files:
        print(f"  {f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
