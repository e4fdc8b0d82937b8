"""`make compare RUNS=<id>,<id>,...`: the invariance figures of several runs side by side.

    python -m pipelines.compare --runs <id>,<id>,... [--tracking-uri URI] [--reports-dir reports]

Reads each MLflow run's logged metrics (those of its latest `make evaluate`,
which `make train` runs at its end), prints a table with one column per run and one row
per figure, and writes it as markdown and CSV together with the runs'
rotation curves overlaid in one PNG to reports/compare-<short ids>/ (-1, -2 beside an earlier one). The
equivariance errors of the equivariant families (models/equivariance.py) sit
in adjacent rows element by element: `equiv_err_<family>_mean_<element>`, e.g.
harmonic (hnet) and group (gcnn, only at multiples of 360/N; `flip`,
`flip_rot90`... for D_N's mirrors) at `rot45`, then scale (`s0_s1`); older
runs' names are read too. Accuracy on mirrored test images (`mirror_acc_lr`,
`_ud`, `_transpose`) has its rows; a run without a family's layers shows "-".
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
from dataclasses import dataclass

from pipelines.cli import run_main
from pipelines.errors import UserError

_ROT = re.compile(r"^rot_acc_(\d{3})$")
_ELASTIC = re.compile(r"^elastic_acc_(.+)$")
_EQUIV_MEAN = re.compile(r"^equiv_err_([a-z]+)_mean_(.+)$")  # models/equivariance.py: family, element
# metric names of runs evaluated before the one protocol: harmonic `equiv_err_mean_<angle>`, group
# `group_equiv_err_mean_<angle | flip...>`, scale `scale_equiv_err_<layer>_s0_s1`
_LEGACY = ((re.compile(r"^equiv_err_mean_(\d.*)$"), "equiv_err_harmonic_mean_rot{}"),
           (re.compile(r"^group_equiv_err_mean_(\d.*)$"), "equiv_err_group_mean_rot{}"),
           (re.compile(r"^group_equiv_err_mean_(flip.*)$"), "equiv_err_group_mean_{}"))
_SCALE = re.compile(r"^scale_acc_(.+)$")


@dataclass
class RunFigures:
    run_id: str
    name: str
    model: str
    metrics: dict[str, float]
    data: str = ""  # the run's data.source (and class count): runs on different data do not compare
    backend: str = "?"  # the Keras backend that trained it (its tag; "?" for a run from before the tag)

    @property
    def label(self) -> str:
        return f"{self.run_id[:8]} {self.name}"

    @property
    def scale(self) -> dict[float, float]:
        return {float(m.group(1)): v for k, v in self.metrics.items() if (m := _SCALE.match(k))}

    @property
    def rotation(self) -> dict[int, float]:
        return {int(m.group(1)): v for k, v in self.metrics.items() if (m := _ROT.match(k))}


def load_runs(run_ids: list[str], tracking_uri: str | None = None) -> list[RunFigures]:
    import mlflow
    from mlflow.exceptions import MlflowException

    from pipelines import tracking
    from pipelines.evaluation import full_run_id, tune_run_error, unfinished_run_error

    tracking.quiet_mlflow()
    uri = tracking.tracking_uri(tracking_uri)
    tracking.check_reachable(uri)  # an unreachable server: one error in seconds, not minutes of MLflow's retries
    tracking.check_store_exists(uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    out = []
    for rid in run_ids:
        rid = full_run_id(client, _run_of_export(rid), uri)
        if any(f.run_id == rid for f in out):  # given twice, by its id and by the start of it
            continue
        try:
            run = client.get_run(rid)
        except MlflowException:
            raise UserError(f"no MLflow run {rid!r} in the tracking store {uri}") from None
        if run.info.lifecycle_stage == "deleted":
            raise UserError(f"MLflow run {rid} is deleted")
        if (tune_run := tune_run_error(client, run)) is not None:
            raise tune_run
        # the latest evaluation's step (runs evaluated before each evaluation had its own step logged all at 0)
        params, k = run.data.params, max((m.step for m in client.get_metric_history(rid, "eval_images")), default=0)
        source = run.data.tags.get(f"evaluation.{k}.data", params.get("data.source", "?"))  # what it was evaluated on
        data = f"{source} ({params.get('data.num_classes', '?')} classes)"
        figures = RunFigures(rid, run.info.run_name or "", _model_label(params),
                             _current_names(_latest_evaluation(client, rid, run.data.metrics, k)), data,
                             run.data.tags.get("backend", "?"))
        if not figures.rotation and (unfinished := unfinished_run_error(run)) is not None:
            raise unfinished
        if not figures.rotation:
            raise UserError(f"MLflow run {rid} has no invariance metrics; run `make evaluate RUN={rid}` first")
        out.append(figures)
    return out


def _run_of_export(name: str) -> str:
    """`name`, or, for an export path (`exports/default`, `exports/default/3`), the id of the run that published it."""
    from pipelines.export_paths import export_run_id, is_export_path

    return export_run_id(name) if is_export_path(name) else name


def _latest_evaluation(client, run_id: str, metrics: dict, k: int) -> dict:
    """`metrics` (MLflow's latest value of each name) with the evaluation figures of the run's latest evaluation,
    step k, only: an earlier one's figures of names it did not log (other angles, alphas, scales) are left out."""
    if k <= 0:
        return metrics
    from pipelines.evaluation import METRIC_NAME

    out = {}
    for name, value in metrics.items():
        if METRIC_NAME.match(name):
            at_k = [m.value for m in client.get_metric_history(run_id, name) if m.step == k]
            if not at_k:
                continue
            value = at_k[-1]
        out[name] = value
    return out


def _model_label(params: dict) -> str:
    """The builder's name, and the invariance wrapper around it (`model.params.invariant`): `resnet + canonicalize
    D4`; a bare resnet and a wrapped one must not read the same in the table."""
    label = params.get("model.name", "?")
    group = params.get("model.params.invariant.group", params.get("model.params.invariant"))
    if group and group not in ("None", "null", "{}"):
        label += f" + {params.get('model.params.invariant.method', 'orbit')} {group}"
    return label


def _current_names(metrics: dict) -> dict:
    """A run's metrics with the names of older evaluations' equivariance means brought to today's."""
    out = dict(metrics)
    for k, v in metrics.items():
        for pattern, name in _LEGACY:
            if m := pattern.match(k):
                out.setdefault(name.format(m.group(1)), v)
    return out


def _element_key(label: str):
    """rot<angle> in angle order, then the others (flip, flip_rot90, s0_s1) by name."""
    return (0, float(label[3:]), label) if label.startswith("rot") and _num_key(label[3:])[0] == 0 else (1, 0.0, label)


def _num_key(s: str):
    try:
        return (0, float(s), s)
    except ValueError:
        return (1, 0.0, s)


def figure_rows(runs: list[RunFigures]) -> list[tuple[str, str, list]]:
    """(metric key, description, [value or None per run]) for every figure any run has."""
    keys = set().union(*(r.metrics for r in runs))
    rows = [("test_accuracy", "test accuracy"), ("rot_acc_mean", "rotation: mean accuracy over angles"),
            ("rot_acc_min", "rotation: worst-angle accuracy")]
    rows += [(f"rot_acc_{a:03d}", f"rotation {a} deg") for a in (0, 90, 180, 270) if f"rot_acc_{a:03d}" in keys]
    rows += [(f"mirror_acc_{k}", f"mirror {k.replace('lr', 'left-right').replace('ud', 'up-down')}")
             for k in ("lr", "ud", "transpose") if f"mirror_acc_{k}" in keys]
    if "canonical_orientation_acc" in keys:
        rows.append(("canonical_orientation_acc", "canonicalizer: turns (and mirrors) of test images it names"))
    rows += [("shift_consistency", "shift consistency (pad-and-crop)"),
             ("circular_consistency", "circular shift consistency")]
    for a in sorted({m.group(1) for k in keys if (m := _ELASTIC.match(k))}, key=_num_key):
        rows.append((f"elastic_acc_{a}", f"elastic alpha={a}"))
    for f in sorted({m.group(1) for k in keys if (m := _SCALE.match(k))}, key=_num_key):
        rows.append((f"scale_acc_{f}", f"scale {f}x"))
    # the equivariant families side by side, element by element (rot45: harmonic, then group): a run without a
    # family's layers shows "-"
    means = {(m.group(2), m.group(1)) for k in keys if (m := _EQUIV_MEAN.match(k))}
    for label, family in sorted(means, key=lambda lf: (_element_key(lf[0]), lf[1])):
        rows.append((f"equiv_err_{family}_mean_{label}", f"{family} equivariance error {label} (mean over layers)"))
    rows.append(("eval_images", "test images evaluated"))
    return [(k, d, [r.metrics.get(k) for r in runs]) for k, d in rows]


def _fmt(key: str, value) -> str:
    if value is None:
        return "-"
    if key == "eval_images":
        return str(int(value))
    if key.startswith("equiv_err"):
        return f"{value:.2e}"
    return f"{100 * value:.1f}%"


def markdown_table(runs: list[RunFigures]) -> str:
    head = "| figure | " + " | ".join(f"{r.label} ({r.model})" for r in runs) + " |"
    backends = "| trained on (Keras backend) | " + " | ".join(r.backend for r in runs) + " |"
    lines = [head, "|---|" + "---:|" * len(runs), backends]
    for key, desc, values in figure_rows(runs):
        lines.append(f"| {desc} | " + " | ".join(_fmt(key, v) for v in values) + " |")
    return "\n".join(lines) + "\n"


def text_table(runs: list[RunFigures]) -> str:
    rows = [("", *[r.label for r in runs]), ("model", *[r.model for r in runs]),
            ("trained on (Keras backend)", *[r.backend for r in runs])]
    rows += [(desc, *[_fmt(key, v) for v in values]) for key, desc, values in figure_rows(runs)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows
    )


def write_csv(runs: list[RunFigures], path: str) -> str:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["metric", *[r.run_id for r in runs]])
        w.writerow(["run_name", *[r.name for r in runs]])
        w.writerow(["model", *[r.model for r in runs]])
        w.writerow(["backend", *[r.backend for r in runs]])
        rows = figure_rows(runs)
        for key, _, values in rows:
            w.writerow([key, *["" if v is None else repr(float(v)) for v in values]])
        done = {key for key, _, _ in rows}
        for a in sorted(set().union(*(r.rotation for r in runs))):  # the rest of the rotation curves
            if f"rot_acc_{a:03d}" not in done:
                w.writerow([f"rot_acc_{a:03d}", *["" if a not in r.rotation else repr(r.rotation[a]) for r in runs]])
    return path


def data_warning(runs: list[RunFigures]) -> str | None:
    """A warning when the runs were evaluated on different data, or on different angles or numbers of test images
    (`make evaluate ARGS="evaluate.rotation_step=90 evaluate.max_images=100"`): their figures then do not compare
    (a mean over 4 angles beside one over 24). None when they do."""
    parts = []
    if len({r.data for r in runs}) > 1:
        parts.append("these runs used different data, so their figures do not compare: " + "; ".join(
            f"{r.label}: {r.data}" for r in runs))
    if len({tuple(sorted(r.rotation)) for r in runs}) > 1:
        parts.append("their rotation figures are over different angles, so the means and worst angles do not "
                     "compare: " + "; ".join(f"{r.label}: {_angles(r.rotation)}" for r in runs))
    if len({r.metrics.get("eval_images") for r in runs}) > 1:
        parts.append("their evaluations scored different numbers of test images: " + "; ".join(
            f"{r.label}: {_fmt('eval_images', r.metrics.get('eval_images'))}" for r in runs))
    return "Warning: " + "\nWarning: ".join(parts) if parts else None


def _angles(rotation: dict) -> str:
    angles = sorted(rotation)
    steps = {b - a for a, b in zip(angles, angles[1:])}
    every = f", every {steps.pop()} deg" if len(steps) == 1 else ""
    return f"{len(angles)} angle{'s' if len(angles) != 1 else ''}{every}"


def compare(run_ids: list[str], tracking_uri: str | None = None, reports_dir: str = "reports"):
    """Write the comparison of `run_ids`; return (runs, printed table, files)."""
    from pipelines.evaluation import new_report_dir
    from pipelines.plots import plot_rotation_curve, plot_scale_curve

    runs = load_runs(run_ids, tracking_uri)
    out_dir = new_report_dir(reports_dir, "compare-" + "-".join(r.run_id[:8] for r in runs))  # never overwritten
    os.makedirs(out_dir)
    md = os.path.join(out_dir, "compare.md")
    warning = data_warning(runs)
    with open(md, "w") as fh:
        fh.write("".join(f"> {line}\n>\n" for line in (warning or "").splitlines())[:-2] + "\n" * bool(warning)
                 + markdown_table(runs))
    files = [md, write_csv(runs, os.path.join(out_dir, "compare.csv"))]
    curves = {f"{r.label} ({r.model})": r.rotation for r in runs}
    files.append(plot_rotation_curve(curves, os.path.join(out_dir, "rotation_curves.png"),
                                     title="accuracy under input rotation"))
    scales = {f"{r.label} ({r.model})": r.scale for r in runs if r.scale}
    if scales:
        files.append(plot_scale_curve(scales, os.path.join(out_dir, "scale_curves.png")))
    return runs, (f"{warning}\n\n" if warning else "") + text_table(runs), files


def parse_run_ids(text: str) -> list[str]:
    ids = []
    for part in (text or "").replace(" ", ",").split(","):
        if part and part not in ids:
            ids.append(part)
    if not ids:
        raise UserError("give RUNS=<run id>,<run id>,... (MLflow run ids of evaluated training runs)")
    return ids


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="make compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="comma-separated MLflow run ids (or their first 6 or more digits) "
                                                 "or export paths (the run that published the export)")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else <project>/mlflow.db)")
    p.add_argument("--reports-dir", default="reports", help="where the comparison directory is written")
    args = p.parse_args(argv)
    _, table, files = compare(parse_run_ids(args.runs), args.tracking_uri, args.reports_dir)
    print(table)
    print()
    for f in files:
        print(f"Wrote {os.path.abspath(f)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
