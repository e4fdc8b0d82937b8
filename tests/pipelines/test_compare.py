"""make compare: side-by-side table and overlaid rotation curves of logged runs."""

import csv
import os

import mlflow
import pytest
from PIL import Image

from pipelines import compare
from pipelines.cli import run_main


@pytest.fixture
def runs(tmp_path):
    """Two runs with invariance metrics (one with harmonic errors) and one without, in a temp store."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    ids = []
    for name, model, rot, extra in (
        ("cnn-run", "baseline_cnn", {0: 0.9, 90: 0.2, 180: 0.1, 270: 0.3}, {}),
        ("hnet-run", "hnet", {0: 0.8, 90: 0.8, 180: 0.8, 270: 0.8}, {"equiv_err_mean_45": 0.03}),
    ):
        run = client.create_run(exp, run_name=name)
        rid = run.info.run_id
        client.log_param(rid, "model.name", model)
        client.log_param(rid, "data.source", "synthetic")
        client.log_param(rid, "data.num_classes", "10")
        if model == "hnet":
            client.set_tag(rid, "backend", "jax")  # the CNN's run is from before the tag
        metrics = {f"rot_acc_{a:03d}": v for a, v in rot.items()}
        metrics.update(rot_acc_mean=sum(rot.values()) / 4, rot_acc_min=min(rot.values()), test_accuracy=rot[0],
                       shift_consistency=0.95, circular_consistency=0.97, elastic_acc_0=rot[0],
                       elastic_acc_34=0.5, elastic_acc_8=0.7, eval_images=100, **extra)
        for k, v in metrics.items():
            client.log_metric(rid, k, v)
        client.set_terminated(rid)
        ids.append(rid)
    bare = client.create_run(exp, run_name="bare").info.run_id
    return uri, ids, bare


def test_table_csv_and_overlaid_curves(runs, tmp_path):
    uri, ids, _ = runs
    got, table, files = compare.compare(ids, uri, str(tmp_path / "reports"))
    assert [r.name for r in got] == ["cnn-run", "hnet-run"]
    out = tmp_path / "reports" / f"compare-{ids[0][:8]}-{ids[1][:8]}"
    assert sorted(p.name for p in out.iterdir()) == ["compare.csv", "compare.md", "rotation_curves.png"]
    lines = table.splitlines()
    assert ids[0][:8] in lines[0] and ids[1][:8] in lines[0]
    row = next(line for line in lines if line.startswith("rotation: mean accuracy"))
    assert row.split()[-2:] == ["37.5%", "80.0%"]
    # the run logged `equiv_err_mean_45`, an older evaluation's name: read as today's harmonic rot45
    row = next(line for line in lines if line.startswith("harmonic equivariance error rot45"))
    assert row.split()[-2:] == ["-", "3.00e-02"]  # the CNN has no harmonic layers
    elastic = [line.split()[1] for line in lines if line.startswith("elastic alpha=")]
    assert elastic == ["alpha=0", "alpha=8", "alpha=34"]  # numeric order, not text order
    md = (out / "compare.md").read_text()
    assert "different data" not in table and md.startswith("| figure | ")  # the same data: no warning and "| rotation 90 deg | 20.0% | 80.0% |" in md
    with open(out / "compare.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["metric", *ids]
    assert ["model", "baseline_cnn", "hnet"] in rows
    assert ["backend", "?", "jax"] in rows
    assert next(line for line in lines if line.startswith("trained on (Keras backend)")).split()[-2:] == ["?", "jax"]
    assert "| trained on (Keras backend) | ? | jax |" in md
    assert ["rot_acc_min", "0.1", "0.8"] in rows
    with Image.open(out / "rotation_curves.png") as im:
        assert im.size[0] > 300


def test_main_prints_the_table_and_paths(runs, tmp_path, capsys):
    uri, ids, _ = runs
    code = run_main(compare.main, ["--runs", f"{ids[0]}, {ids[1][:8]},{ids[0]},{ids[1]}", "--tracking-uri", uri,
                                   "--reports-dir", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert code == 0 and "hnet-run" in out  # the run of the 8 digits given
    assert os.listdir(tmp_path / "r") == [f"compare-{ids[0][:8]}-{ids[1][:8]}"]  # each run once, however named
    assert "shift consistency (pad-and-crop)" in out
    assert out.count("Wrote ") == 3 and "rotation_curves.png" in out


def test_bad_run_ids_give_one_clear_error(runs, tmp_path, capsys):
    uri, ids, bare = runs
    base = ["--tracking-uri", uri, "--reports-dir", str(tmp_path / "r")]
    assert run_main(compare.main, ["--runs", f"{ids[0]},nope", *base]) == 2
    assert capsys.readouterr().err.strip() == f"error: no MLflow run 'nope' in the tracking store {uri}"
    assert run_main(compare.main, ["--runs", f"{ids[0]},{bare}", *base]) == 2
    assert f"run {bare} has no invariance metrics; run `make evaluate RUN={bare}` first" in capsys.readouterr().err
    client = mlflow.MlflowClient(tracking_uri=uri)
    search = client.create_run(client.get_experiment_by_name("e").experiment_id,
                               tags={"job": "tune", "tune.directory": "tuning/t"}).info.run_id
    assert run_main(compare.main, ["--runs", f"{ids[0]},{search}", *base]) == 2
    assert f"run {search} is a `make tune` search, which keeps no model, and the search has not finished (no " \
           "tuning/t/best.yaml)" in capsys.readouterr().err
    assert run_main(compare.main, ["--runs", " , ", *base]) == 2
    assert "give RUNS=" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_a_gcnn_and_an_hnet_run_side_by_side(tmp_path):
    """Each family's equivariance errors, as the evaluation logs them, in adjacent rows; '-' where a run has none."""
    from pipelines.evaluation import Evaluation, log_to_run

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        client = mlflow.MlflowClient()
        exp = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
        ids = []
        for name, model, equivariance in (
            ("gcnn-run", "gcnn", {"group": {"stage0_gconv0": {"rot45": 0.02, "rot90": 1e-7, "flip": 2e-7},
                                            "stage0_gconv1": {"rot45": 0.04, "rot90": 3e-7, "flip": 4e-7}}}),
            ("hnet-run", "hnet", {"harmonic": {"hc1": {"rot15": 0.01, "rot45": 0.03, "rot90": 2e-7}}}),
        ):
            ev = Evaluation(100, {0: 0.9, 90: 0.9, 180: 0.9, 270: 0.9}, 0.95, 0.97, 2, {0.0: 0.9}, 4.0,
                            equivariance=equivariance)
            rid = client.create_run(exp, run_name=name).info.run_id
            client.log_param(rid, "model.name", model)
            log_to_run(rid, ev, [])
            ids.append(rid)
    finally:
        mlflow.set_tracking_uri(previous)
    _, table, _ = compare.compare(ids, uri, str(tmp_path / "reports"))
    lines = table.splitlines()
    assert lines[1].split()[-2:] == ["gcnn", "hnet"]
    rows = [line for line in lines if "equivariance error" in line]
    assert [r.split(" (mean")[0] for r in rows] == [
        "harmonic equivariance error rot15", "group equivariance error rot45", "harmonic equivariance error rot45",
        "group equivariance error rot90", "harmonic equivariance error rot90", "group equivariance error flip"]
    values = {r.split(" (mean over layers)")[0]: r.split()[-2:] for r in rows}
    assert values["harmonic equivariance error rot15"] == ["-", "1.00e-02"]
    assert values["harmonic equivariance error rot45"] == ["-", "3.00e-02"]
    assert values["group equivariance error rot45"] == ["3.00e-02", "-"]  # mean over the two layers
    assert values["group equivariance error rot90"] == ["2.00e-07", "-"]
    assert values["group equivariance error flip"] == ["3.00e-07", "-"]
    out = tmp_path / "reports" / f"compare-{ids[0][:8]}-{ids[1][:8]}"
    md = (out / "compare.md").read_text()
    assert "| group equivariance error rot90 (mean over layers) | 2.00e-07 | - |" in md
    with open(out / "compare.csv") as fh:
        rows = list(csv.reader(fh))
    assert ["equiv_err_group_mean_rot45", "0.03", ""] in rows and ["equiv_err_harmonic_mean_rot45", "", "0.03"] in rows


def test_runs_on_different_data_are_compared_with_a_warning_naming_each_runs_data(runs, tmp_path, capsys):
    uri, ids, _ = runs
    client = mlflow.MlflowClient(tracking_uri=uri)
    pets = client.create_run(client.get_experiment_by_name("e").experiment_id, run_name="pets-run").info.run_id
    for k, v in (("model.name", "baseline_cnn"), ("data.source", "folder:/data/pets"), ("data.num_classes", "3")):
        client.log_param(pets, k, v)
    for k, v in (("rot_acc_000", 0.9), ("rot_acc_090", 0.5), ("rot_acc_mean", 0.7), ("test_accuracy", 0.9)):
        client.log_metric(pets, k, v)
    assert run_main(compare.main, ["--runs", f"{ids[0]},{pets}", "--tracking-uri", uri,
                                   "--reports-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    warning = out.splitlines()[0]
    assert warning.startswith("Warning: these runs used different data")
    assert f"{ids[0][:8]} cnn-run: synthetic (10 classes)" in warning
    assert f"{pets[:8]} pets-run: folder:/data/pets (3 classes)" in warning
    md = next((tmp_path / "r").iterdir()) / "compare.md"
    assert md.read_text().startswith("> Warning: these runs used different data")


def test_evaluations_over_other_angles_or_image_counts_are_warned_about(runs, tmp_path, capsys):
    """A run re-evaluated with `evaluate.rotation_step=90 evaluate.max_images=20` beside one over 24 angles of 100
    images: its rotation mean was shown beside the other's without a word."""
    uri, ids, _ = runs
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("e").experiment_id
    made = []
    for name, step, count in (("every15", 15, 100), ("every90", 90, 20)):
        made.append(client.create_run(exp, run_name=name).info.run_id)
        for k, v in (("model.name", "baseline_cnn"), ("data.source", "synthetic"), ("data.num_classes", "10")):
            client.log_param(made[-1], k, v)
        for a in range(0, 360, step):
            client.log_metric(made[-1], f"rot_acc_{a:03d}", 0.5)
        for k, v in (("rot_acc_mean", 0.5), ("test_accuracy", 0.9), ("eval_images", count)):
            client.log_metric(made[-1], k, v)
    assert run_main(compare.main, ["--runs", ",".join(made), "--tracking-uri", uri,
                                   "--reports-dir", str(tmp_path / "r")]) == 0
    first, second, blank = capsys.readouterr().out.splitlines()[:3]
    assert first == (f"Warning: their rotation figures are over different angles, so the means and worst angles do "
                     f"not compare: {made[0][:8]} every15: 24 angles, every 15 deg; {made[1][:8]} every90: 4 angles, "
                     "every 90 deg")
    assert second == (f"Warning: their evaluations scored different numbers of test images: {made[0][:8]} every15: "
                      f"100; {made[1][:8]} every90: 20") and blank == ""
    md = (next((tmp_path / "r").iterdir()) / "compare.md").read_text().splitlines()
    assert md[0] == f"> {first}" and md[1] == ">" and md[2] == f"> {second}" and md[3] == ""
    assert md[4].startswith("| figure | ")
    same = compare.load_runs([made[0], made[0][:10]], uri)
    assert compare.data_warning(same) is None


@pytest.mark.parametrize("status, advice", [
    ("KILLED", "did not finish (MLflow status KILLED): run the same `make train` command again to resume it"),
    ("RUNNING", "has not finished (MLflow status RUNNING): wait for it or, if its process is gone, run the same")])
def test_a_training_that_did_not_finish_is_told_to_resume_by_compare_and_by_evaluate(runs, capsys, status, advice):
    """An interrupted `make train` run: compare sent it to `make evaluate`, which then said it had no model."""
    from pipelines import evaluate

    uri, ids, _ = runs
    client = mlflow.MlflowClient(tracking_uri=uri)
    rid = client.create_run(client.get_experiment_by_name("e").experiment_id, run_name="cut").info.run_id
    client.log_param(rid, "model.name", "baseline_cnn")
    client.set_tag(rid, "run_dir", "/work/runs/cut-1")
    if status != "RUNNING":
        client.set_terminated(rid, status)
    for job, args in ((compare, ["--runs", f"{ids[0]},{rid}"]), (evaluate, ["--run", rid[:8]])):
        assert run_main(job.main, [*args, "--tracking-uri", uri]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert line.startswith(f"error: MLflow run {rid} has no trained model yet: its training {advice}")
        assert line.endswith("`make train` command again to resume it (run directory /work/runs/cut-1), then "
                             "evaluate or compare it")


def test_an_export_path_stands_for_the_run_that_published_it(runs, tmp_path, monkeypatch, capsys):
    """`make evaluate` took an export path and `make compare` said there was no MLflow run 'exports/default'."""
    import json

    uri, ids, _ = runs
    monkeypatch.chdir(tmp_path)
    version = tmp_path / "exports" / "m" / "3"
    (version / "assets.extra").mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    (version / "assets.extra" / "metrics.json").write_text(json.dumps({"mlflow_run_id": ids[0]}))
    for given in ("exports/m/3", "exports/m", "./exports/m/"):
        assert [r.run_id for r in compare.load_runs([given, ids[1]], uri)] == ids[:2]
    assert [r.run_id for r in compare.load_runs(["exports/m", ids[0]], uri)] == ids[:1]  # the same run, once
    (version / "assets.extra" / "metrics.json").write_text("{}")  # an export from before the id was kept
    assert run_main(compare.main, ["--runs", f"exports/m,{ids[1]}", "--tracking-uri", uri]) == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {os.path.join('exports', 'm', '3')} does not name the MLflow run that trained it (no mlflow_run_id "
        "in assets.extra/metrics.json): give that run's id, or `make evaluate RUN=<the export>`")
    assert run_main(compare.main, ["--runs", f"exports/nope,{ids[1]}", "--tracking-uri", uri]) == 2
    assert "export path exports/nope does not exist" in capsys.readouterr().err
    (tmp_path / ids[1][:8]).mkdir()  # a folder named like the start of a run id: which one is meant is asked
    assert run_main(compare.main, ["--runs", f"{ids[0]},{ids[1][:8]}", "--tracking-uri", uri]) == 2
    assert f"'{ids[1][:8]}' is both a folder here and the start of an MLflow run id" in capsys.readouterr().err


def test_a_wrapped_model_is_named_with_its_wrapper_and_its_canonicalizer_figure(runs):
    uri, ids, _ = runs
    client = mlflow.MlflowClient(tracking_uri=uri)
    wrapped = client.create_run(client.get_experiment_by_name("e").experiment_id, run_name="canon-run").info.run_id
    for k, v in (("model.name", "baseline_cnn"), ("data.source", "synthetic"), ("data.num_classes", "10"),
                 ("model.params.invariant.group", "D4"), ("model.params.invariant.method", "canonicalize")):
        client.log_param(wrapped, k, v)
    for k, v in (("rot_acc_000", 0.9), ("rot_acc_090", 0.9), ("rot_acc_mean", 0.9), ("test_accuracy", 0.9),
                 ("canonical_orientation_acc", 0.97)):
        client.log_metric(wrapped, k, v)
    table = compare.markdown_table(compare.load_runs([ids[0], wrapped], uri))
    assert table.splitlines()[0].endswith(" canon-run (baseline_cnn + canonicalize D4) |")
    assert "| canonicalizer: turns (and mirrors) of test images it names | - | 97.0% |" in table


def test_each_run_is_read_from_its_latest_evaluation_alone_and_a_comparison_never_overwrites_another(runs, tmp_path):
    """A second `make evaluate` with other angles (here 0 and 180 only, no elastic alphas, other data) replaces the
    run's figures: the first evaluation's 90 and 270 degrees and elastic accuracies were shown beside the second's
    0 degrees, and its curve zig-zagged between the two."""
    from pipelines.errors import UserError

    uri, ids, _ = runs
    client = mlflow.MlflowClient(tracking_uri=uri)
    rid = ids[0]  # evaluated once, at step 0, by the fixture
    for k, v in (("rot_acc_000", 0.5), ("rot_acc_180", 0.4), ("rot_acc_mean", 0.45), ("rot_acc_min", 0.4),
                 ("shift_consistency", 0.9), ("circular_consistency", 0.9), ("eval_images", 20)):
        client.log_metric(rid, k, v, step=1)
    client.set_tag(rid, "evaluation.1.data", "npz:/elsewhere.npz")
    run, other = compare.load_runs([rid, ids[1]], uri)
    assert run.rotation == {0: 0.5, 180: 0.4}
    assert not any(k.startswith("elastic_acc_") for k in run.metrics) and run.metrics["test_accuracy"] == 0.9
    assert other.rotation == {0: 0.8, 90: 0.8, 180: 0.8, 270: 0.8}  # evaluated once: as logged
    assert run.data == "npz:/elsewhere.npz (10 classes)" and compare.data_warning([run, other])
    table = compare.markdown_table([run, other])
    assert "| rotation 90 deg | - | 80.0% |" in table and "| test images evaluated | 20 | 100 |" in table

    first = compare.compare([rid, ids[1]], uri, str(tmp_path / "r"))[2][0]
    second = compare.compare([rid, ids[1]], uri, str(tmp_path / "r"))[2][0]
    assert os.path.dirname(second) == os.path.dirname(first) + "-1" and os.path.isfile(first)

    old = client.create_run(client.get_experiment_by_name("e").experiment_id, run_name="old").info.run_id
    for step_zero_twice in ({"rot_acc_000": 0.7, "rot_acc_090": 0.6}, {"rot_acc_000": 0.8, "rot_acc_090": 0.5}):
        for k, v in {**step_zero_twice, "eval_images": 10}.items():  # evaluated twice before evaluations had steps
            client.log_metric(old, k, v, step=0)
    assert compare.load_runs([old], uri)[0].rotation == {0: 0.8, 90: 0.5}

    client.delete_run(ids[1])
    with pytest.raises(UserError, match="is deleted"):
        compare.load_runs([ids[1]], uri)
