"""make evaluate: the figures, the report files, logging to MLflow, and clear errors."""

import json
import os

import keras
import mlflow
import numpy as np
import pytest
from PIL import Image

from pipelines import evaluate, evaluation, plots
from pipelines.cli import run_main
from pipelines.config import EvaluateConfig


@pytest.fixture
def store(tmp_path):
    """A temporary MLflow store, made the current one for the test."""
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    mlflow.MlflowClient(uri).search_experiments()  # creates it, as a first training would
    yield uri
    mlflow.set_tracking_uri(previous)


def data(n=30, size=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 1), dtype=np.uint8), rng.integers(0, 3, n)


SMALL = dict(max_images=24, rotation_step=90, shift_range=2, elastic_alphas=[0.0, 8.0], equivariance_angles=[45.0, 90.0])


def cnn():
    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 1))
    h = keras.layers.Conv2D(5, 3, name="conv1")(x)
    return keras.Model(x, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(h)))


def hnet():
    from layers.harmonic.harmonic_conv import HarmonicConv2D
    from layers.harmonic.harmonic_readout import HarmonicMagnitudeReadout

    keras.utils.set_random_seed(0)
    x = keras.Input((12, 12, 1))
    h = HarmonicConv2D(3, 3, orders=(0, 1), name="hc1")(x)
    h = HarmonicConv2D(3, 3, orders=(0, 1), phase=False, name="hc2")(h)
    return keras.Model(x, HarmonicMagnitudeReadout()(h))


def test_figures_of_a_model_that_ignores_its_input():
    x, y = data(40)
    ev = evaluation.evaluate(lambda im: np.zeros(len(im), int), x, y, EvaluateConfig(**SMALL))
    m = ev.metrics()
    assert m["eval_images"] == 24  # at most max_images
    assert [k for k in m if k.startswith("rot_acc_") and k[-1].isdigit()] == [
        "rot_acc_000", "rot_acc_090", "rot_acc_180", "rot_acc_270"]
    assert m["rot_acc_000"] == m["rot_acc_090"] == m["rot_acc_mean"] == m["rot_acc_min"]
    assert m["shift_consistency"] == m["circular_consistency"] == 1.0
    assert m["elastic_acc_0"] == m["elastic_acc_8"] == m["rot_acc_000"]
    assert not any(k.startswith("equiv_err") for k in m)
    table = ev.table("t")
    assert "shift consistency (+-2 px, pad-and-crop)  100.0%" in table
    assert "elastic alpha=8 px (sigma 4)" in table


def test_per_class_accuracy_and_confusion_matrix_use_the_class_names(tmp_path):
    """A model that answers `cat` for everything: cats 100%, the others 0% and taken for `cat`."""
    x, y = data(40)
    names = ["cat", "dog", "fox"]
    ev = evaluation.evaluate(lambda im: np.zeros(len(im), int), x, y, EvaluateConfig(**SMALL), class_names=names)
    sub_y = evaluation.eval_subset(x, y, 24, SMALL.get("seed", 0))[1]
    assert ev.confusion.sum() == 24 and ev.confusion[:, 0].sum() == 24
    rows = {name: (n, acc, other) for name, n, acc, other in ev.per_class()}
    assert rows["cat"] == (int((sub_y == 0).sum()), 1.0, "")
    assert rows["dog"][1:] == (0.0, "cat") and rows["fox"][1:] == (0.0, "cat")
    assert "dog 0.0% (taken for cat)" in ev.table("t")
    files = evaluation.write_report(ev, str(tmp_path), "t")
    assert os.path.join(str(tmp_path), "confusion_matrix.png") in files
    assert "| fox |" in open(os.path.join(str(tmp_path), "invariance.md")).read()


def test_an_answer_past_the_known_classes_is_counted_as_itself():
    """A model of 4 outputs evaluated on 3 named classes (an export without labels.txt): its answer 3 was clipped to
    `fox` and counted right for foxes."""
    x, y = data(40)
    ev = evaluation.evaluate(lambda im: np.full(len(im), 3), x, y, EvaluateConfig(**SMALL),
                             class_names=["cat", "dog", "fox"])
    assert ev.confusion.shape == (4, 4) and ev.confusion[:, 3].sum() == 24
    assert [(name, acc, other) for name, _, acc, other in ev.per_class()] == [
        (name, 0.0, "3") for name in ("cat", "dog", "fox")]


def test_subset_is_seeded_and_scaled():
    x, y = data(50)
    a, la = evaluation.eval_subset(x, y, 20, seed=1)
    b, lb = evaluation.eval_subset(x, y, 20, seed=1)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.float32 and a.max() <= 1.0 and len(a) == 20
    full, _ = evaluation.eval_subset(x, y, 100, seed=1)
    np.testing.assert_array_equal(full, x / np.float32(255))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the traced path is TensorFlow's")
def test_the_evaluation_computes_each_image_once_and_traces_once():
    """`keras_logits` / `keras_predictor` on TensorFlow: 300 images in batches of 256 are 300 images computed (the
    last batch neither padded to 256 nor retraced), by one traced function, and give the model's own answers."""

    class Count(keras.layers.Layer):  # counts the images it computes (a variable) and its traces (Python)
        traces = 0

        def build(self, shape):
            self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

        def call(self, x):
            Count.traces += 1
            self.seen.assign_add(keras.ops.cast(keras.ops.shape(x)[0], "float32"))
            return x

    count = Count()
    x = keras.Input((12, 12, 1))
    model = keras.Model(x, cnn()(count(x)))
    images = data(n=300)[0].astype(np.float32) / 255.0
    count.seen.assign(0.0)
    traces = Count.traces
    logits = evaluation.keras_logits(model, 256)(images)
    assert float(count.seen.numpy()) == 300 and Count.traces - traces == 1
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(evaluation.keras_predictor(model, 256)(images), expected.argmax(-1))


def test_filter_pictures():
    title, rows = plots.first_filters(hnet())
    assert "hc1" in title
    assert [label for label, _ in rows] == ["m=0 re", "m=0 im", "m=1 re", "m=1 im"]
    assert all(k.shape == (3, 3, 3) for _, k in rows)
    # order-1 filters vanish at the centre (ring radii start at 1 px); order 0 ones need not
    assert np.abs(rows[2][1][1, 1]).max() < np.abs(rows[2][1]).max()
    title, rows = plots.first_filters(cnn())
    assert "conv1" in title and rows[0][1].shape == (3, 3, 5)
    np.testing.assert_allclose(rows[0][1], cnn().get_layer("conv1").kernel.numpy()[:, :, 0])


@pytest.mark.parametrize("builder", [cnn, hnet])
def test_report_is_written_and_logged_without_changing_the_run_status(store, tmp_path, builder):
    model = builder()
    x, y = data()
    ev = evaluation.evaluate(evaluation.keras_predictor(model, 16), x, y, EvaluateConfig(**SMALL), model=model)
    harmonic = builder is hnet
    assert bool(ev.equivariance) == harmonic
    if harmonic:
        assert list(ev.equivariance) == ["harmonic"] and set(ev.equivariance["harmonic"]) == {"hc1", "hc2"}
        assert all(e["rot90"] < 1e-5 for e in ev.equivariance["harmonic"].values())
    files = evaluation.write_report(ev, str(tmp_path / "report"), "title", model=model)
    client = mlflow.MlflowClient()
    run_id = client.create_run(client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())).info.run_id
    client.set_terminated(run_id, "FINISHED")
    evaluation.log_to_run(run_id, ev, files)

    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    for k, v in ev.metrics().items():
        assert run.data.metrics[k] == pytest.approx(v)
    steps = [m.step for m in client.get_metric_history(run_id, "rotation_accuracy")]
    assert sorted(steps) == [0, 90, 180, 270]
    logged = {os.path.basename(a.path) for a in client.list_artifacts(run_id, "evaluation")}
    want = {"invariance.md", "invariance.json", "rotation_curve.png", "elastic_curve.png", "scale_curve.png", "filters.png",
            "confusion_matrix.png"}
    assert logged == want | ({"harmonic_equivariance.png"} if harmonic else set())
    for f in files:
        if f.endswith(".png"):
            with Image.open(f) as im:
                assert im.size[0] > 100 and im.size[1] > 100
    with open(tmp_path / "report" / "invariance.json") as fh:
        assert json.load(fh) == pytest.approx(ev.metrics())


def _cli(args, capsys):
    code = run_main(evaluate.main, args)
    return code, capsys.readouterr().err


def test_bad_run_ids_and_paths_give_one_clear_error(store, tmp_path, capsys):
    base = ["--tracking-uri", store, "--reports-dir", str(tmp_path / "reports")]
    code, err = _cli(["--run", "0123456789abcdef0123456789abcdef", *base], capsys)
    assert code == 2 and err.startswith("error: no MLflow run '0123456789abcdef0123456789abcdef'")
    assert "Traceback" not in err
    code, err = _cli(["--run", "not-a-run", *base], capsys)
    assert code == 2 and "neither an MLflow run id" in err
    (tmp_path / "abcdef12").mkdir()  # a folder named like the start of a run id: which one is meant is asked
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        code, err = _cli(["--run", "abcdef12", *base], capsys)
    finally:
        os.chdir(cwd)
    assert code == 2 and "'abcdef12' is both a folder here and the start of an MLflow run id: give ./abcdef12" in err
    code, err = _cli(["--run", "", *base], capsys)
    assert code == 2 and "RUN=" in err
    code, err = _cli(["--run", str(tmp_path / "exports" / "missing"), *base], capsys)
    assert code == 2 and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, err = _cli(["--run", str(tmp_path / "empty"), *base], capsys)
    assert code == 2 and "holds no SavedModel" in err
    version = tmp_path / "exports" / "m" / "3"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    code, err = _cli(["--run", str(tmp_path / "exports" / "m"), *base], capsys)
    assert code == 2 and "m/3 has no assets.extra/experiment.yaml" in err
    (tmp_path / "exports" / "m" / "4").mkdir()  # a failed copy, no SavedModel: 3 is the version served
    code, err = _cli(["--run", str(tmp_path / "exports" / "m"), *base], capsys)
    assert code == 2 and "m/3 has no assets.extra/experiment.yaml" in err
    os.rename(version, tmp_path / "exports" / "m" / "05")  # served as version 5
    code, err = _cli(["--run", str(tmp_path / "exports" / "m"), *base], capsys)
    assert code == 2 and "m/05 has no assets.extra/experiment.yaml" in err
    assert not (tmp_path / "reports").exists()


def test_runs_without_a_model_give_one_clear_error(store, tmp_path, capsys):
    client = mlflow.MlflowClient()
    exp = client.create_experiment("e", artifact_location=(tmp_path / "mlruns").as_uri())
    bare = client.create_run(exp).info.run_id
    code, err = _cli(["--run", bare, "--tracking-uri", store], capsys)
    assert code == 2 and f"MLflow run {bare} has no config.yaml artifact" in err
    code, err = _cli(["--run", bare[:8], "--tracking-uri", store], capsys)  # the 8 digits reports show: that run
    assert code == 2 and f"MLflow run {bare} has no config.yaml artifact" in err
    nowhere = next(p for p in ("0000000", "1111111") if not bare.startswith(p))
    code, err = _cli(["--run", nowhere, "--tracking-uri", store], capsys)
    assert code == 2 and err.strip() == \
        f"error: no MLflow run whose id starts with {nowhere!r} in the tracking store {store}"
    with_config = client.create_run(exp).info.run_id
    cfg = tmp_path / "config.yaml"
    cfg.write_text("name: x\n")
    client.log_artifact(with_config, str(cfg))
    code, err = _cli(["--run", with_config, "--tracking-uri", store], capsys)
    assert code == 2 and "has no trained model (its MLflow model `model`)" in err
    # a `make tune` search and one of its trials: what to train instead (the advice to evaluate led nowhere)
    directory = tmp_path / "tuning" / "t"
    search = client.create_run(exp, tags={"job": "tune", "tune.directory": str(directory)}).info.run_id
    code, err = _cli(["--run", search, "--tracking-uri", store], capsys)  # under way (or killed): no best.yaml yet
    assert code == 2 and err.strip() == (
        f"error: MLflow run {search} is a `make tune` search, which keeps no model, and the search has not finished "
        f"(no {directory}/best.yaml): run the same `make tune` command again to finish it, then train its best.yaml")
    directory.mkdir(parents=True)
    (directory / "best.yaml").write_text("name: t_tuned\n")
    client.set_tag(search, "backend", "tensorflow, then jax")
    client.set_terminated(search)
    code, err = _cli(["--run", search, "--tracking-uri", store], capsys)
    assert code == 2 and err.strip() == (
        f"error: MLflow run {search} is a `make tune` search, which keeps no model: train its best config "
        f"(`KERAS_BACKEND=jax make train CONFIG={directory}/best.yaml`), then evaluate or compare that run")
    trial = client.create_run(exp, tags={"mlflow.parentRunId": search, "trial_id": "0"}).info.run_id
    code, err = _cli(["--run", trial, "--tracking-uri", store], capsys)
    assert code == 2 and f"MLflow run {trial} is a trial of a `make tune` search (parent run {search}), which " \
        f"keeps no model: train its best config (`KERAS_BACKEND=jax make train CONFIG={directory}/best.yaml`)" in err


def test_an_unreachable_tracking_server_is_one_error_within_seconds_for_evaluate_and_compare(capsys):
    """MLflow's client retries an unreachable server for minutes; `make train` probes it first, and so do these."""
    import socket
    import time

    from pipelines import compare

    with socket.socket() as s:  # a port with nothing listening
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    run_id = "0123456789abcdef0123456789abcdef"
    for main, args in ((evaluate.main, ["--run", run_id]), (compare.main, ["--runs", run_id])):
        started = time.monotonic()
        assert run_main(main, [*args, "--tracking-uri", dead]) == 2
        assert time.monotonic() - started < 30
        err = capsys.readouterr().err
        assert f"tracking store {dead}" in err and "is unreachable" in err, err


def test_the_start_of_several_run_ids_is_one_error_naming_them():
    import types

    from pipelines.errors import UserError
    from pipelines.evaluation import full_run_id

    ids = ["abcdef01" + "0" * 24, "abcdef02" + "0" * 24]

    class Store:
        deleted = set()

        def search_experiments(self, view_type, max_results):
            return [types.SimpleNamespace(experiment_id="1")]

        def search_runs(self, experiments, query, view, limit):
            return [types.SimpleNamespace(info=types.SimpleNamespace(
                run_id=i, lifecycle_stage="deleted" if i in self.deleted else "active")) for i in ids]

    store = Store()
    listed = f"'abcdef0' is the start of 2 MLflow run ids \\({ids[0]}, {ids[1]}\\): give more"
    with pytest.raises(UserError, match=listed):
        full_run_id(store, "abcdef0", "sqlite:///x.db")
    assert full_run_id(store, ids[0], "sqlite:///x.db") == ids[0]  # a whole id is not looked up
    store.deleted.add(ids[0])
    assert full_run_id(store, "abcdef0", "sqlite:///x.db") == ids[1]  # the one of the two that is not deleted


def test_a_store_whose_search_has_no_like_on_run_ids_is_scanned_for_the_prefix():
    """A store that refuses `attributes.run_id LIKE` (MLflow raises) is listed whole and the prefix matched there."""
    import types

    from mlflow.exceptions import MlflowException

    from pipelines.errors import UserError
    from pipelines.evaluation import full_run_id

    ids = ["abcdef01" + "0" * 24, "abcdef02" + "0" * 24, "99cdef01" + "0" * 24]
    queries = []

    class Store:
        def search_experiments(self, view_type, max_results):
            return [types.SimpleNamespace(experiment_id="1")]

        def search_runs(self, experiments, query, view, limit):
            queries.append(query)
            if "LIKE" in query:
                raise MlflowException("Invalid attribute key 'run_id' specified for LIKE")
            return [types.SimpleNamespace(info=types.SimpleNamespace(run_id=i, lifecycle_stage="active"))
                    for i in ids]

    assert full_run_id(Store(), "abcdef02", "file:///runs") == ids[1]
    assert queries == ["attributes.run_id LIKE 'abcdef02%'", ""]
    with pytest.raises(UserError, match="'abcdef0' is the start of 2 MLflow run ids"):
        full_run_id(Store(), "abcdef0", "file:///runs")
    with pytest.raises(UserError, match="no MLflow run whose id starts with '123456'"):
        full_run_id(Store(), "123456", "file:///runs")


def test_a_sqlite_store_that_is_not_there_is_one_error_and_is_not_created(tmp_path, capsys):
    """A mistyped store path: MLflow created an empty store there, and the job said it held no such run."""
    from pipelines import compare

    missing = tmp_path / "mlfow.db"
    uri = f"sqlite:///{missing}"
    run_id = "0123456789abcdef0123456789abcdef"
    for main, args in ((evaluate.main, ["--run", run_id]), (compare.main, ["--runs", run_id])):
        assert run_main(main, [*args, "--tracking-uri", uri]) == 2
        assert capsys.readouterr().err.strip() == \
            f"error: the tracking store {uri} (--tracking-uri or MLFLOW_TRACKING_URI) does not exist: no {missing}"
    assert not missing.exists()
    from pipelines import tracking
    from pipelines.errors import UserError

    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'there.db'}").search_experiments()
    tracking.check_store_exists(f"sqlite:///{tmp_path / 'there.db'}?timeout=30")  # a store there, with options
    with pytest.raises(UserError, match="does not exist: no .*mlruns"):  # a file store's folder, mistyped
        tracking.check_store_exists(f"file://{tmp_path / 'mlruns'}")
    tracking.check_store_exists("databricks")  # a remote store's name, not a path: not checked here
    if not os.path.exists(tracking.DEFAULT_TRACKING_URI[len("sqlite:///"):]):
        with pytest.raises(UserError, match=r"\(the default store: no run was tracked here yet\)"):
            tracking.check_store_exists(tracking.DEFAULT_TRACKING_URI)

