"""The invariance evaluation as a library: figures, report and MLflow logging.

`evaluate` measures, with the metrics of pipelines/invariance.py, how far a
classifier keeps its invariances on a test split (see the `make evaluate` job,
pipelines/evaluate.py, for what each figure means); `write_report` writes the
table and the plots of pipelines/plots.py; `log_to_run` logs them to an MLflow
run. `make train` calls `evaluate_in_training` at its end; `make evaluate`
calls the same pieces on a finished run or an export.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import numpy as np

from pipelines import invariance as inv
from pipelines import plots
from pipelines.errors import UserError

ARTIFACT_DIR = "evaluation"


UNMEASURED = "not measured (its maps are too small, or zero at their centre)"  # a layer of no measurable element


# The names `Evaluation.metrics` logs (and older evaluations' equivariance names): what `make compare` reads from a
# run's latest evaluation only.
METRIC_NAME = re.compile(r"^(rot_acc_|elastic_acc_|equiv_err_|group_equiv_err_|scale_equiv_err_|mirror_acc_|"
                         r"mirror_logit_change_|scale_acc_).+$|^(shift_consistency|circular_consistency|"
                         r"canonical_orientation_acc|eval_images)$")


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
    # family ("harmonic", "group", "scale") -> layer name -> element ("rot90", "flip", "s0_s1") -> relative
    # error (models/equivariance.py, the one protocol)
    equivariance: dict = field(default_factory=dict)
    scale: dict = field(default_factory=dict)  # factor -> accuracy
    class_names: list = field(default_factory=list)  # class id -> name
    confusion: np.ndarray | None = None  # [K, K] counts on unchanged inputs, rows: true class
    orientation_acc: float | None = None  # a canonicalizing model's: turned test images whose turn it names
    mirror: dict = field(default_factory=dict)  # "flip_lr" / "flip_ud" / "transpose" -> accuracy
    mirror_logit_change: dict = field(default_factory=dict)  # same keys -> mean relative logit change (Keras models)

    def per_class(self) -> list[tuple[str, int, float, str]]:
        """(class name, images, accuracy, the class it is most often taken for) per class with images."""
        out = []
        if self.confusion is None:
            return out
        for i, row in enumerate(self.confusion):
            n = int(row.sum())
            if n:
                wrong = row.copy()
                wrong[i] = 0
                other = self.class_names[int(wrong.argmax())] if wrong.any() else ""
                out.append((self.class_names[i], n, float(row[i] / n), other))
        return out

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metrics (their names: `METRIC_NAME`)."""
        m = {f"rot_acc_{int(a):03d}": v for a, v in self.rotation.items()}
        rot = list(self.rotation.values())
        m.update(rot_acc_mean=float(np.mean(rot)), rot_acc_min=float(np.min(rot)))
        m.update(shift_consistency=self.shift_consistency, circular_consistency=self.circular_consistency)
        m.update({f"elastic_acc_{a:g}": v for a, v in self.elastic.items()})
        for family, per_layer in self.equivariance.items():
            for layer, errs in per_layer.items():
                m.update({f"equiv_err_{family}_{layer}_{k}": e for k, e in errs.items()})
            for k in dict.fromkeys(k for errs in per_layer.values() for k in errs):
                m[f"equiv_err_{family}_mean_{k}"] = float(np.mean([e[k] for e in per_layer.values() if k in e]))
        m.update({f"mirror_acc_{k.replace('flip_', '')}": v for k, v in self.mirror.items()})  # _lr, _ud, _transpose
        m.update({f"mirror_logit_change_{k.replace('flip_', '')}": v for k, v in self.mirror_logit_change.items()})
        m.update({f"scale_acc_{f:g}": v for f, v in self.scale.items()})
        if self.orientation_acc is not None:
            m["canonical_orientation_acc"] = self.orientation_acc
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
        if self.mirror:
            rows.append(("accuracy mirrored " + " / ".join(k.replace("flip_", "") for k in self.mirror),
                         " / ".join(pct(v) for v in self.mirror.values())))
        if self.mirror_logit_change:
            rows.append(("logit change mirrored " + " / ".join(k.replace("flip_", "") for k in self.mirror_logit_change),
                         " / ".join(f"{v:.2e}" for v in self.mirror_logit_change.values())))
        rows.append((f"shift consistency (+-{self.shift_range} px, pad-and-crop)", pct(self.shift_consistency)))
        rows.append((f"circular consistency (+-{self.shift_range} px, roll)", pct(self.circular_consistency)))
        for a, v in self.elastic.items():
            rows.append((f"elastic alpha={a:g} px (sigma {self.elastic_sigma:g})", pct(v)))
        for family, per_layer in self.equivariance.items():  # the elements each layer promises
            for layer, errs in per_layer.items():
                rows.append((f"{family} equivariance error {layer}",
                             ", ".join(f"{e:.2e} @ {k.replace('_', '+') if family == 'group' else k}"
                                       for k, e in errs.items()) or UNMEASURED))
        if self.scale:
            rows.append(("scale curve (factor: accuracy)", "  ".join(f"{f:g}x: {pct(v)}" for f, v in self.scale.items())))
        if self.orientation_acc is not None:
            rows.append(("canonicalizer: turns (and mirrors) of test images it names", pct(self.orientation_acc)))
        worst = sorted(self.per_class(), key=lambda r: r[2])[:3]
        if worst:
            rows.append(("lowest class accuracies", ", ".join(
                f"{name} {pct(acc)}" + (f" (taken for {other})" if other else "") for name, _, acc, other in worst)))
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
        if self.confusion is not None:
            lines += ["", "| class | images | accuracy | most often taken for |", "|---|---:|---:|---|"]
            lines += [f"| {name} | {n} | {100 * acc:.2f}% | {other} |" for name, n, acc, other in self.per_class()]
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- predictors


def keras_logits(model, batch_size: int = 256):
    """Logits (float32 numpy) of a Keras model on float images in [0, 1], in batches, on any Keras backend."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # One traced function for every batch size (its batch axis unknown): `model.predict` would retrace for
        # each new input size, and a fixed traced size would compute the zeros that pad the last batch (300 test
        # images in batches of 256: 512 images computed).
        traced = tf.function(lambda x: model(x, training=False))

        def call(b):
            spec = tf.TensorSpec((None, *b.shape[1:]), tf.float32)
            return traced.get_concrete_function(spec)(tf.constant(b)).numpy()

    else:  # Keras compiles one step per input shape: a fixed batch size (the last batch zero-padded), compiled once

        def call(b):
            n = len(b)
            if n < batch_size:
                b = np.concatenate([b, np.zeros((batch_size - n,) + b.shape[1:], np.float32)])
            return np.asarray(model.predict_on_batch(b))[:n]

    def logits(images):
        x = np.asarray(images, np.float32)
        out = [call(np.ascontiguousarray(x[i : i + batch_size])) for i in range(0, len(x), batch_size)]
        return np.concatenate(out).astype(np.float32, copy=False) if out else np.zeros((0, 0), np.float32)

    return logits


def keras_predictor(model, batch_size: int = 256):
    """Class ids of a Keras model (float images in [0, 1] -> logits), on any Keras backend."""
    logits = keras_logits(model, batch_size)

    def predict(images):
        return np.argmax(logits(images), axis=-1) if len(images) else np.zeros((0,), np.int64)

    return predict


def savedmodel_class_predictor(path: str, batch_size: int = 256):
    """Class ids of an exported SavedModel (uint8 images in); float images in [0, 1] are rounded to uint8."""
    from pipelines.export import savedmodel_predictor

    run = savedmodel_predictor(path, batch_size)

    def predict(images):
        x = np.clip(np.rint(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
        return run(x)["class_id"] if len(x) else np.zeros((0,), np.int64)

    return predict


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


def test_subset(splits, ecfg):
    """(uint8 images, labels) of the `eval_subset` of a `data.streaming.StreamSplits`' test split:
    at most `ecfg.max_images` images, the same seeded subset, and only those images are read."""
    return splits.test.arrays(ecfg.max_images, ecfg.seed)


def evaluate(predict, images, labels, ecfg, model=None, class_names=None) -> Evaluation:
    """All invariance figures of `predict` on (`images` uint8 or float in [0, 1], `labels`).

    `ecfg` is a `pipelines.config.EvaluateConfig`; `model`, a Keras model, adds
    the equivariance errors of its equivariant layers at the elements each
    promises (models/equivariance.py: harmonic convolutions at each of
    `ecfg.equivariance_angles`; C_N / D_N group convolutions at the multiples
    of 360/N among them and at 360/N, and for D_N at the mirrors; scale
    convolutions one scale step up), and the relative change of its logits
    under the mirrors. Accuracy on mirrored images (left-right,
    up-down, transposed when square) is measured for every predictor. `class_names` (class id -> name) name the per-class table and the confusion matrix.
    """
    x, y = eval_subset(images, labels, ecfg.max_images, ecfg.seed)
    if len(x) == 0:
        raise UserError("the test split is empty; nothing to evaluate")
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(int(y.max()) + 1)]
    pred = np.asarray(predict(x)).astype(np.int64)
    names += [str(i) for i in range(len(names), int(pred.max()) + 1)]  # an answer past the known classes: its own
    k = len(names)
    confusion = np.bincount(np.asarray(y, np.int64) * k + pred, minlength=k * k).reshape(k, k)
    rotation = inv.rotation_curve(predict, x, y, inv.rotation_angles(ecfg.rotation_step))
    shift_c = inv.shift_consistency(predict, x, ecfg.shift_range, seed=ecfg.seed, mode="pad")
    circ_c = inv.shift_consistency(predict, x, ecfg.shift_range, seed=ecfg.seed + 1, mode="circular")
    elastic = inv.elastic_curve(predict, x, y, ecfg.elastic_alphas, ecfg.elastic_sigma, seed=ecfg.seed)
    scale = inv.scale_curve(predict, x, y, ecfg.scale_factors)
    mirror = inv.mirror_accuracy(predict, x, y)
    equiv, logit_change = {}, {}
    if model is not None:
        from models.equivariance import equivariance

        equiv = equivariance(model, x[: ecfg.equivariance_images], ecfg.equivariance_angles)
        logit_change = inv.logit_changes(keras_logits(model, ecfg.batch_size), x, {k: inv.MIRRORS[k] for k in mirror})
    orientation = None
    if model is not None:
        from models.invariant import orientation_accuracy

        xf = x.astype("float32") / 255.0 if np.issubdtype(x.dtype, np.integer) else x
        orientation = orientation_accuracy(model, xf)
    return Evaluation(len(x), rotation, shift_c, circ_c, ecfg.shift_range, elastic, ecfg.elastic_sigma, equiv,
                      scale, names, confusion, orientation, mirror, logit_change)


# ----------------------------------------------------------------------------- pictures


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
    files.append(plots.plot_rotation_curve({title: ev.rotation}, os.path.join(out_dir, "rotation_curve.png")))
    files.append(plots.plot_elastic_curve(ev, os.path.join(out_dir, "elastic_curve.png")))
    if ev.scale:
        files.append(plots.plot_scale_curve({title: ev.scale}, os.path.join(out_dir, "scale_curve.png")))
    for family, per_layer in ev.equivariance.items():
        files.append(plots.plot_equivariance(per_layer, os.path.join(out_dir, f"{family}_equivariance.png"),
                                             title=f"{family} equivariance error per layer (elements it promises)"))
    if ev.confusion is not None and len(ev.class_names) <= plots.MAX_CONFUSION_CLASSES:
        files.append(plots.confusion_matrix_figure(ev.confusion, ev.class_names, os.path.join(out_dir, "confusion_matrix.png"),
                                                   title=f"confusion matrix ({ev.n_images} test images)"))
    if model is not None:
        p = plots.plot_filters(model, os.path.join(out_dir, "filters.png"))
        if p:
            files.append(p)
    return files


def full_run_id(client, run_id: str, uri: str) -> str:
    """`run_id`, or the one run id of the tracking store that it is the start of."""
    from pipelines.rundir import RUN_ID_START

    if len(run_id) == 32 or not RUN_ID_START.fullmatch(run_id):
        return run_id
    from mlflow.entities import ViewType
    from mlflow.exceptions import MlflowException

    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL, max_results=50000)]
    try:
        found = client.search_runs(experiments, f"attributes.run_id LIKE '{run_id}%'", ViewType.ALL, 50000)
    except MlflowException:  # a store whose search has no LIKE on run ids: all of them
        found = [r for r in client.search_runs(experiments, "", ViewType.ALL, 50000)
                 if r.info.run_id.startswith(run_id)]
    ids = sorted({r.info.run_id for r in found})
    active = sorted({r.info.run_id for r in found if r.info.lifecycle_stage != "deleted"})
    if len(ids) == 1 or len(active) == 1:  # one run, or one that is not deleted
        return (active or ids)[0]
    if not ids:
        raise UserError(f"no MLflow run whose id starts with {run_id!r} in the tracking store {uri}")
    raise UserError(f"{run_id!r} is the start of {len(ids)} MLflow run ids ({', '.join(ids[:4])}"
                    f"{', ...' if len(ids) > 4 else ''}): give more of the id")


def unfinished_run_error(run) -> UserError | None:
    """The error for a `make train` run whose training has not finished (killed, failed, or still running), which
    has no model yet: resume it. None for any other run."""
    status, run_dir = run.info.status, run.data.tags.get("run_dir")
    if status == "FINISHED" or not run_dir:
        return None
    what = (f"has not finished (MLflow status {status}): wait for it or, if its process is gone, run the same "
            "`make train` command again") if status in ("RUNNING", "SCHEDULED") else \
        f"did not finish (MLflow status {status}): run the same `make train` command again"
    return UserError(f"MLflow run {run.info.run_id} has no trained model yet: its training {what} to resume it "
                     f"(run directory {run_dir}), then evaluate or compare it")


def tune_run_error(client, run) -> UserError | None:
    """The error for an MLflow run of `make tune` (its search's parent run, or a trial's), which keeps no model
    to evaluate or compare: what to do instead. None for any other run."""
    tags, rid = run.data.tags, run.info.run_id
    what = "a `make tune` search"
    if tags.get("job") != "tune":
        if "trial_id" not in tags or "mlflow.parentRunId" not in tags:
            return None
        what = f"a trial of a `make tune` search (parent run {tags['mlflow.parentRunId']})"
        run = client.get_run(tags["mlflow.parentRunId"])
    best = os.path.join(run.data.tags.get("tune.directory", "tuning/<name>"), "best.yaml")
    if run.info.status != "FINISHED" or not os.path.isfile(best):
        return UserError(f"MLflow run {rid} is {what}, which keeps no model, and the search has not finished "
                         f"(no {best}): run the same `make tune` command again to finish it, then train its best.yaml")
    from pipelines.cli import train_command

    command = train_command(best, run.data.tags.get("backend", "tensorflow").split(", then ")[-1])
    return UserError(f"MLflow run {rid} is {what}, which keeps no model: train its best config (`{command}`), then "
                     "evaluate or compare that run")


def new_report_dir(reports_dir: str, name: str) -> str:
    """reports_dir/name, or name-1, name-2, ... where an earlier evaluation's report is: never overwritten."""
    out, n = os.path.join(reports_dir, name), 0
    while os.path.exists(out):
        n += 1
        out = os.path.join(reports_dir, f"{name}-{n}")
    return out


def log_to_run(run_id: str, ev: Evaluation, files: list[str], description: str = "", data: str = "") -> int:
    """Log metrics and files to MLflow run `run_id` (of the current tracking URI) without changing its status.

    Each evaluation of a run is logged once, at its own step: the k-th
    evaluation (k = 0, 1, ...) logs its flat metrics at step k, its rotation
    curve as `rotation_accuracy` (k = 0) or `rotation_accuracy_<k>` with
    step = angle (MLflow's UI draws it as a curve), its files under
    `evaluation/` (k = 0) or `evaluation-<k>/`, the tag `evaluation.<k>`
    saying what was evaluated and `evaluation.<k>.data` its data source. Returns k.
    """
    import time

    import mlflow
    from mlflow.entities import Metric, RunTag

    client = mlflow.MlflowClient()
    k = len(client.get_metric_history(run_id, "eval_images"))
    now = int(time.time() * 1000)
    metrics = [Metric(name, float(v), now, k) for name, v in ev.metrics().items()]
    curve = "rotation_accuracy" if k == 0 else f"rotation_accuracy_{k}"
    metrics += [Metric(curve, float(v), now, int(a)) for a, v in ev.rotation.items()]
    tags = [RunTag("evaluations", str(k + 1)),
            RunTag(f"evaluation.{k}", description or f"{ev.n_images} test images")]
    tags += [RunTag(f"evaluation.{k}.data", data)] if data else []
    for i in range(0, len(metrics), 500):
        client.log_batch(run_id, metrics=metrics[i : i + 500], tags=tags if i == 0 else [])
    folder = ARTIFACT_DIR if k == 0 else f"{ARTIFACT_DIR}-{k}"
    for f in files:
        client.log_artifact(run_id, f, artifact_path=folder)
    return k


# ----------------------------------------------------------------------------- inside `make train`


def evaluate_in_training(model, cfg, splits, run_dir: str) -> Evaluation:
    """Called by `make train` inside its active MLflow run."""
    import mlflow

    ev = evaluate(keras_predictor(model, cfg.evaluate.batch_size), *test_subset(splits, cfg.evaluate), cfg.evaluate,
                  model=model, class_names=splits.class_names)
    title = f"{cfg.name}: invariance on the test split ({cfg.data.source})"
    print(ev.table(title))
    files = write_report(ev, os.path.join(run_dir, ARTIFACT_DIR), title, model=model)
    active = mlflow.active_run()
    if active is not None:
        log_to_run(active.info.run_id, ev, files, description=f"make train, {cfg.data.source}", data=cfg.data.source)
    return ev
